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
	w, err := Start([]string{dir}, DefaultIgnore, 150*time.Millisecond, func(p string) { changes <- p })
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
