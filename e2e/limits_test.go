package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-pm/baton/internal/control"
	"golang.org/x/sys/unix"
)

// quickExit bounds how long baton may take to refuse bad input: the old
// baton read /dev/zero for ever and blocked on a FIFO. Generous for a
// -race binary on a busy machine; it normally takes tens of milliseconds.
const quickExit = 5 * time.Second

// The cases that run baton with a config that is not a regular file give it
// --control and --pid: otherwise the harness reads the config to learn
// where baton's control socket goes (chosenControl), and would block on
// the FIFO or read /dev/zero itself.

// TestLimitsAreBadInput: a config file that is not a regular file or is
// over 1 MiB, a worker count over the ceiling, a zero timeout, a command
// the workers' user cannot execute and a symlinked log file each make
// baton say so and exit 2 at once, with nothing started.
func TestLimitsAreBadInput(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		// args returns baton's arguments (dir is a temp dir) and the
		// phrases stderr must contain.
		args  func(t *testing.T, dir string) (args, want []string)
		after func(t *testing.T, dir string)
	}{
		{
			name: "check -c /dev/zero",
			args: func(t *testing.T, dir string) ([]string, []string) {
				return []string{"check", "-c", "/dev/zero", "--", testworkerBin},
					[]string{"/dev/zero: cannot read the config file: a config file must be a regular file (or a symlink to one); this is a character device"}
			},
		},
		{
			name: "run -c a symlink to /dev/zero",
			args: func(t *testing.T, dir string) ([]string, []string) {
				link := filepath.Join(dir, "baton.toml")
				if err := os.Symlink("/dev/zero", link); err != nil {
					t.Fatal(err)
				}
				return []string{"run", "-c", link, "--control", filepath.Join(dir, "baton.sock"), "--pid", filepath.Join(dir, "baton.pid"), "--", testworkerBin},
					[]string{link + ": cannot read the config file", "a character device"}
			},
		},
		{
			name: "a FIFO config",
			args: func(t *testing.T, dir string) ([]string, []string) {
				fifo := filepath.Join(dir, "baton.toml")
				if err := unix.Mkfifo(fifo, 0o644); err != nil {
					t.Fatal(err)
				}
				return []string{"run", "-c", fifo, "--control", filepath.Join(dir, "baton.sock"), "--pid", filepath.Join(dir, "baton.pid"), "--", testworkerBin},
					[]string{fifo + ": cannot read the config file", "this is a named pipe (FIFO)"}
			},
		},
		{
			name: "a 2 MiB config",
			args: func(t *testing.T, dir string) ([]string, []string) {
				cfg := writeFile(t, dir, "baton.toml", workerConfig(1, "# "+strings.Repeat("x", 2<<20)), 0o644)
				return []string{"check", "-c", cfg}, []string{cfg + ": cannot read the config file: a config file may be at most 1 MiB (1048576 bytes); this one is"}
			},
		},
		{
			name: "workers = 100000",
			args: func(t *testing.T, dir string) ([]string, []string) {
				cfg := writeFile(t, dir, "baton.toml", workerConfig(100000, ""), 0o644)
				return []string{"run", "-c", cfg}, []string{cfg + ":1: workers: expected an integer ≤ 1024 (baton's ceiling on worker processes), got 100000"}
			},
		},
		{
			name: "workers = int64's maximum in check",
			args: func(t *testing.T, dir string) ([]string, []string) {
				cfg := writeFile(t, dir, "baton.toml", strings.Replace(workerConfig(1, ""), "workers = 1", "workers = 9223372036854775807", 1), 0o644)
				return []string{"check", "-c", cfg}, []string{"workers: expected an integer ≤ 1024", "got 9223372036854775807"}
			},
		},
		{
			name: "max_surge = 5000",
			args: func(t *testing.T, dir string) ([]string, []string) {
				return []string{"run", "--max-surge", "5000", "--", testworkerBin}, []string{"--max-surge: expected an integer ≤ 1024", "got 5000"}
			},
		},
		{
			name: `boot_timeout = "0s"`,
			args: func(t *testing.T, dir string) ([]string, []string) {
				cfg := writeFile(t, dir, "baton.toml", workerConfig(1, `boot_timeout = "0s"`), 0o644)
				return []string{"run", "-c", cfg}, []string{`boot_timeout: expected a duration > 0, got "0s"`}
			},
		},
		{
			name: "graceful_timeout 0",
			args: func(t *testing.T, dir string) ([]string, []string) {
				return []string{"run", "--graceful-timeout", "0", "--", testworkerBin}, []string{`--graceful-timeout: expected a duration > 0, got "0"`}
			},
		},
		{
			name: "--user nobody with the command in a 0700 directory",
			args: func(t *testing.T, dir string) ([]string, []string) {
				if os.Geteuid() != 0 {
					t.Fatal("this case needs root to run workers as nobody")
				}
				// dir (t.TempDir) is 0700 and root's; make only the last
				// directory private, so that it is the one named.
				open := filepath.Join(dir, "open")
				private := filepath.Join(open, "private")
				if err := os.MkdirAll(private, 0o700); err != nil {
					t.Fatal(err)
				}
				for _, d := range []string{filepath.Dir(dir), dir, open} {
					if err := os.Chmod(d, 0o755); err != nil {
						t.Fatal(err)
					}
				}
				app := filepath.Join(private, "testworker")
				if err := copyFile(testworkerBin, app); err != nil {
					t.Fatal(err)
				}
				return []string{"run", "--user", "nobody", "--", app},
					[]string{`command: "` + app + `" cannot be executed by user nobody (uid 65534) with group nogroup (gid 65534), as workers run: no search permission on the directory ` + private + ` (drwx------, owner root, group root)`}
			},
		},
		{
			name: "a symlinked log file",
			args: func(t *testing.T, dir string) ([]string, []string) {
				victim := writeFile(t, dir, "victim", "precious\n", 0o600)
				link := filepath.Join(dir, "x.log")
				if err := os.Symlink(victim, link); err != nil {
					t.Fatal(err)
				}
				return []string{"run", "--log-file", link, "--", testworkerBin},
					[]string{"log file " + link + ": refused: it is a symbolic link (to " + victim + "), which baton does not follow"}
			},
			after: func(t *testing.T, dir string) {
				if data, err := os.ReadFile(filepath.Join(dir, "victim")); err != nil || string(data) != "precious\n" {
					t.Errorf("the symlink's target now holds %q (%v)", data, err)
				}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			args, want := tc.args(t, dir)
			started := time.Now()
			b := launch(t, batonSpec{args: args})
			code := b.waitExit(t, exitTimeout)
			took := time.Since(started)
			b.waitOutputClosed(2 * time.Second)
			stderr := b.Stderr()
			if code != 2 {
				t.Errorf("exit code %d, want 2", code)
			}
			if took > quickExit {
				t.Errorf("baton took %v to refuse it, want under %v", took, quickExit)
			}
			for _, phrase := range want {
				if !strings.Contains(stderr, phrase) {
					t.Errorf("stderr does not mention %q:\n%s", phrase, stderr)
				}
			}
			for _, msg := range []string{"master started", "worker started"} {
				if rs := b.logs(msg, nil); len(rs) > 0 {
					t.Errorf("a refused start logged %s", rs[0])
				}
			}
			b.assertNothingLeft(t)
			if tc.after != nil {
				tc.after(t, dir)
			}
			t.Logf("exit %d after %v; stderr: %s", code, took.Round(time.Millisecond), strings.TrimSpace(stderr))
		})
	}
}

// TestScaleAboveTheCeilingIsRefused: baton scale 100000 is bad input
// (exit 2) for the CLI, and the master refuses a raw request for it on its
// control socket, so no client can get past the ceiling; the workers are
// untouched either way.
func TestScaleAboveTheCeilingIsRefused(t *testing.T) {
	t.Parallel()
	d := newDeployment(t, workerConfig(2, ""))
	b := controlled(t, d)
	b.waitReady(t, 2)

	r := b.cli(t, "scale", "100000")
	if r.code != 2 || !strings.Contains(r.stderr, `scale: "100000": expected a number of workers from 1 to 1024 (baton's ceiling)`) {
		t.Errorf("scale 100000: exit %d, stderr %q; want 2 and the ceiling", r.code, r.stderr)
	}

	conn, err := net.Dial("unix", b.Control)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, `{"v":1,"cmd":"scale","workers":%d}`+"\n", 100000)
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	var resp control.Response
	if err := json.Unmarshal([]byte(line), &resp); err != nil {
		t.Fatalf("answer %q: %v", line, err)
	}
	if resp.Type != control.TypeError || resp.Error != "scale needs workers >= 1 and <= 1024 (baton's ceiling), got 100000" {
		t.Errorf("raw scale 100000: %s, want an error naming the ceiling", line)
	}

	if st := b.mustStatus(t); st.Workers != 2 || len(workersOf(b.Pid)) != 2 {
		t.Errorf("after refused scales: target %d, %d worker processes; want 2", st.Workers, len(workersOf(b.Pid)))
	}
	if r := b.cli(t, "scale", "3"); r.code != 0 {
		t.Errorf("scale 3 after the refusals: exit %d", r.code)
	}
	b.waitWorkers(t, 3)
}

// TestReloadOfAnUnreadableConfigFailsAndTheMasterCarriesOn: a HUP after
// the config was replaced by a FIFO (which used to block the master's
// loop) or by a symlink to /dev/zero (which used to grow it to gigabytes)
// is a failed reload naming the problem; the old workers keep serving and
// the master keeps answering.
func TestReloadOfAnUnreadableConfigFailsAndTheMasterCarriesOn(t *testing.T) {
	t.Parallel()
	d := newDeployment(t, workerConfig(2, ""))
	b := controlled(t, d)
	b.waitReady(t, 2)
	old := servingGenerations(t, b.Addr(), 2)

	for _, tc := range []struct {
		name    string
		replace func() error
		want    string
	}{
		{"FIFO", func() error { return unix.Mkfifo(d.path, 0o644) }, "this is a named pipe (FIFO)"},
		{"symlink to /dev/zero", func() error { return os.Symlink("/dev/zero", d.path) }, "this is a character device"},
	} {
		if err := os.Remove(d.path); err != nil {
			t.Fatal(err)
		}
		if err := tc.replace(); err != nil {
			t.Fatal(err)
		}
		r := b.reload(t, 2) // a refused config leaves generation 2 free
		if r.OK || !strings.Contains(r.Reason, "the configuration is invalid") {
			t.Errorf("%s: reload %s, want a failure", tc.name, describeReload(&r))
		}
		rec := b.waitLog(t, "reload failed", func(r record) bool { return strings.Contains(r.line, tc.want) }, waitTimeout)
		if !strings.Contains(rec.line, d.path+": cannot read the config file") {
			t.Errorf("%s: the failure does not name the file: %s", tc.name, rec)
		}

		started := time.Now()
		st := b.cli(t, "status")
		if took := time.Since(started); st.code != 0 || took > time.Second {
			t.Errorf("%s: baton status: exit %d after %v; want an answer within a second", tc.name, st.code, took)
		}
		now := servingGenerations(t, b.Addr(), 2)
		for pid := range old {
			if _, ok := now[pid]; !ok {
				t.Errorf("%s: old worker %d no longer serves", tc.name, pid)
			}
		}
		if rss := rssKiB(t, b.Pid); rss > 200<<10 {
			t.Errorf("%s: the master's RSS is %d KiB", tc.name, rss)
		}
	}
	// The master still acts on signals: a killed worker is replaced.
	victim := b.workerPid(t, 1)
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	b.waitSlot(t, 1, "a replacement for the killed worker", func(w control.Worker) bool { return w.Pid != victim && w.State == "ready" })

	// A good config again: the next reload works.
	os.Remove(d.path)
	d.write(workerConfig(2, ""))
	if r := b.reload(t, 2); !r.OK {
		t.Errorf("reload with a good config: %s", describeReload(&r))
	}
}

// rssKiB is pid's resident memory in KiB.
func rssKiB(t *testing.T, pid int) int {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			return n
		}
	}
	return 0
}
