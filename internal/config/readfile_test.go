package config

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// loadsWithin loads -c path and returns its problems as text; it fails the
// test if Load takes longer than 5 s (a FIFO would block it, /dev/zero
// would make it read without end).
func loadsWithin(t *testing.T, d *testDir, path string) string {
	t.Helper()
	done := make(chan string, 1)
	go func() {
		_, err := d.load([]string{"-c", path}, d.app())
		if err == nil {
			done <- ""
			return
		}
		done <- err.Error()
	}()
	select {
	case got := <-done:
		return got
	case <-time.After(5 * time.Second):
		t.Fatalf("loading %s did not return within 5 s", path)
		return ""
	}
}

func TestConfigFileMustBeARegularFileOfAtMost1MiB(t *testing.T) {
	t.Parallel()
	d := newTestDir(t)
	fifo := filepath.Join(d.path, "fifo.toml")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	big := d.write("big.toml", "# "+strings.Repeat("x", 2<<20)+"\nworkers = 2\n", 0o644)
	bigSize := 2<<20 + len("# \nworkers = 2\n")
	// Exactly 1 MiB: still read.
	pad := MaxFileSize - len("workers = 2\n# \n")
	limit := d.write("limit.toml", "workers = 2\n# "+strings.Repeat("x", pad)+"\n", 0o644)
	dir := filepath.Join(d.path, "dir.toml")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// A unix socket path must be short: t.TempDir's may not be.
	sockDir, err := os.MkdirTemp("", "cfg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "s.toml")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	zeroLink := filepath.Join(d.path, "zero.toml")
	if err := os.Symlink("/dev/zero", zeroLink); err != nil {
		t.Fatal(err)
	}
	regular := d.config("workers = 3\n")
	link := filepath.Join(d.path, "link.toml")
	if err := os.Symlink(regular, link); err != nil {
		t.Fatal(err)
	}

	const notRegular = ": cannot read the config file: a config file must be a regular file (or a symlink to one); this is "
	for _, tc := range []struct{ path, want string }{
		{"/dev/zero", "/dev/zero" + notRegular + "a character device"},
		{zeroLink, zeroLink + notRegular + "a character device"},
		{fifo, fifo + notRegular + "a named pipe (FIFO)"},
		{dir, dir + notRegular + "a directory"},
		{sock, sock + notRegular + "a unix socket"},
		{big, fmt.Sprintf("%s: cannot read the config file: a config file may be at most 1 MiB (1048576 bytes); this one is %d bytes", big, bigSize)},
		{filepath.Join(d.path, "missing.toml"), "missing.toml: cannot read the config file: no such file or directory"},
	} {
		t.Run(filepath.Base(tc.path), func(t *testing.T) {
			if got := loadsWithin(t, d, tc.path); !strings.Contains(got, tc.want) || strings.Contains(got, "\n") {
				t.Errorf("problems:\n got %s\nwant %s", got, tc.want)
			}
		})
	}
	for _, path := range []string{link, limit} {
		if got := loadsWithin(t, d, path); got != "" {
			t.Errorf("%s: %s", path, got)
		}
	}
	if c := d.mustLoad([]string{"-c", link}, d.app()); c.Workers != 3 || c.Source() != link {
		t.Errorf("through a symlink: workers %d, source %q", c.Workers, c.Source())
	}
}

// TestOpenedConfigFileIsCheckedAgain: the path may be swapped between the
// Stat and the open; what was opened is checked before it is read, so a
// FIFO is refused without waiting for a writer.
func TestOpenedConfigFileIsCheckedAgain(t *testing.T) {
	t.Parallel()
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := readOpened(f); err == nil || !strings.Contains(err.Error(), "this is a named pipe (FIFO)") {
		t.Errorf("readOpened(FIFO) = %v, want a refusal", err)
	}
	zero, err := os.Open("/dev/zero")
	if err != nil {
		t.Fatal(err)
	}
	defer zero.Close()
	if _, err := readOpened(zero); err == nil || !strings.Contains(err.Error(), "this is a character device") {
		t.Errorf("readOpened(/dev/zero) = %v, want a refusal", err)
	}
}

// TestRegularFileThatLiesAboutItsSizeIsReadWithinTheLimit: files in /proc
// are regular and say they are empty; the limit holds on what is read.
func TestRegularFileThatLiesAboutItsSizeIsReadWithinTheLimit(t *testing.T) {
	t.Parallel()
	text, err := readConfigText("/proc/self/status")
	if err != nil || len(text) == 0 || len(text) > MaxFileSize {
		t.Errorf("/proc/self/status: %d bytes, %v", len(text), err)
	}
}
