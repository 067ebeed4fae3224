package logging

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const nobody = 65534

// stickyDir makes a world-writable sticky directory, like /tmp.
func stickyDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "shared")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	return dir
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root (it makes files owned by another user); run the suite as root, as ./scripts/test does")
	}
}

// plant makes a file owned by uid, as another user would.
func plant(t *testing.T, path string, uid int) {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, uid, uid); err != nil {
		t.Fatal(err)
	}
}

func newLog(path string) (*Output, error) {
	_, out, err := New(Options{Level: "info", Format: "text", File: path})
	return out, err
}

func wantRefusal(t *testing.T, err error, phrases ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; want a refusal mentioning %q", phrases)
	}
	for _, p := range phrases {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not mention %q", err, p)
		}
	}
}

func TestSymlinkedLogFileIsRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("precious\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "x.log")
	if err := os.Symlink(victim, link); err != nil {
		t.Fatal(err)
	}
	_, err := newLog(link)
	wantRefusal(t, err, "log file "+link+": refused: it is a symbolic link (to "+victim+"), which baton does not follow")
	if data, _ := os.ReadFile(victim); string(data) != "precious\n" {
		t.Errorf("the victim file now holds %q", data)
	}
	// The open itself does not follow one either: a symlink swapped in
	// after CheckFile looked.
	_, err = openChecked(link)
	wantRefusal(t, err, "log file "+link+": refused: it is a symbolic link, which baton does not follow")
	if data, _ := os.ReadFile(victim); string(data) != "precious\n" {
		t.Errorf("the victim file now holds %q", data)
	}
}

func TestLogFilePlantedInAStickyDirectoryIsRefused(t *testing.T) {
	t.Parallel()
	needRoot(t)
	dir := stickyDir(t)

	planted := filepath.Join(dir, "planted.log")
	plant(t, planted, nobody)
	_, err := newLog(planted)
	wantRefusal(t, err, "log file "+planted+": refused: it belongs to uid 65534 (nobody), not to baton's uid 0",
		"its directory "+dir+" is world-writable and sticky")
	// What was opened is checked too: a file planted after CheckFile.
	_, err = openChecked(planted)
	wantRefusal(t, err, "belongs to uid 65534 (nobody)")

	// A hard link to a file of baton's user, planted there.
	own := filepath.Join(t.TempDir(), "own")
	if err := os.WriteFile(own, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	linked := filepath.Join(dir, "linked.log")
	if err := os.Link(own, linked); err != nil {
		t.Fatal(err)
	}
	_, err = newLog(linked)
	wantRefusal(t, err, "log file "+linked+": refused: it has 2 hard links")

	// A file baton creates there itself is fine, and so is its own file
	// on the next start.
	fresh := filepath.Join(dir, "fresh.log")
	for range 2 {
		out, err := newLog(fresh)
		if err != nil {
			t.Fatalf("a new log file in a sticky directory: %v", err)
		}
		out.Close()
	}
}

// TestLogFileOfAnotherUserElsewhereIsFine: outside sticky world-writable
// directories, a log file may belong to anyone (say, /var/log/app owned by
// the app's user).
func TestLogFileOfAnotherUserElsewhereIsFine(t *testing.T) {
	t.Parallel()
	needRoot(t)
	path := filepath.Join(t.TempDir(), "app.log")
	plant(t, path, nobody)
	out, err := newLog(path)
	if err != nil {
		t.Fatal(err)
	}
	out.Close()
}

func TestReopenFollowsTheSameRules(t *testing.T) {
	t.Parallel()
	needRoot(t)
	dir := stickyDir(t)
	path := filepath.Join(dir, "baton.log")
	log, out, err := New(Options{Level: "info", Format: "text", File: path})
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	log.Info("first")

	// logrotate moved the file; another user put a symlink in its place.
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, path); err != nil {
		t.Fatal(err)
	}
	wantRefusal(t, out.Reopen(), "symbolic link")
	// Then a file of its own.
	os.Remove(path)
	plant(t, path, nobody)
	wantRefusal(t, out.Reopen(), "belongs to uid 65534 (nobody)")
	log.Info("second")

	if data, _ := os.ReadFile(victim); len(data) != 0 {
		t.Errorf("the victim got %q", data)
	}
	if data, _ := os.ReadFile(path); len(data) != 0 {
		t.Errorf("the planted file got %q", data)
	}
	// Every line went on to the old file.
	data, _ := os.ReadFile(path + ".1")
	if !strings.Contains(string(data), "first") || !strings.Contains(string(data), "second") {
		t.Errorf("the old file holds %q, want both lines", data)
	}

	// Once the path is baton's own again, Reopen takes it.
	os.Remove(path)
	if err := out.Reopen(); err != nil {
		t.Fatal(err)
	}
	log.Info("third")
	if data, _ := os.ReadFile(path); !strings.Contains(string(data), "third") {
		t.Errorf("the new file holds %q", data)
	}
}
