package watch

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestABurstOfChangesIsOneReportAndIgnoredNamesAreNone(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "pkg"), 0o755)
	changes := make(chan string, 16)
	w, err := Start([]string{dir}, DefaultIgnore, nil, 150*time.Millisecond, func(p string) { changes <- p })
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	// An editor's save: several writes and a rename, in a subdirectory.
	for i := 0; i < 5; i++ {
		os.WriteFile(filepath.Join(dir, "pkg", "app.py.tmp"), []byte("x"), 0o644)
	}
	os.Rename(filepath.Join(dir, "pkg", "app.py.tmp"), filepath.Join(dir, "pkg", "app.py"))
	select {
	case p := <-changes:
		if filepath.Dir(p) != filepath.Join(dir, "pkg") {
			t.Errorf("reported %q", p)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no report for a change in a subdirectory")
	}
	select {
	case p := <-changes:
		t.Fatalf("a second report (%q) for one burst", p)
	case <-time.After(400 * time.Millisecond):
	}

	// Ignored names: no report.
	os.WriteFile(filepath.Join(dir, "pkg", "app.pyc"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(dir, ".app.py.swp"), []byte("x"), 0o644)
	select {
	case p := <-changes:
		t.Fatalf("reported an ignored file %q", p)
	case <-time.After(500 * time.Millisecond):
	}
}

// Files named exactly are ignored however the event names them (the
// watched path is relative, or reaches the directory through a symbolic
// link), and "*.log" is ignored by default; anything else still reports.
func TestNamedFilesAndLogsAreIgnored(t *testing.T) {
	real := t.TempDir()
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(real, "out.txt")
	changes := make(chan string, 16)
	w, err := Start([]string{link}, DefaultIgnore, []string{out}, 100*time.Millisecond, func(p string) { changes <- p })
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for i := range 5 {
		appendLine(t, out, i)
		appendLine(t, filepath.Join(real, "app.log"), i)
		time.Sleep(50 * time.Millisecond)
	}
	select {
	case p := <-changes:
		t.Fatalf("reported %q: writes to the ignored output file and a *.log", p)
	case <-time.After(500 * time.Millisecond):
	}
	appendLine(t, filepath.Join(real, "app.py"), 0)
	select {
	case p := <-changes:
		if filepath.Base(p) != "app.py" {
			t.Errorf("reported %q, want app.py", p)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no report for an edit of app.py")
	}
}

func appendLine(t *testing.T, path string, i int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString("line " + string(rune('0'+i%10)) + "\n"); err != nil {
		t.Fatal(err)
	}
}
