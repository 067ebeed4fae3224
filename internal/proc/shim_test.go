package proc_test

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-pm/baton/internal/listener"
	"github.com/baton-pm/baton/internal/proc"
)

// listFDsArg makes the test binary print the fds it inherited, one
// "FD TARGET" line each (TARGET as readlink of /proc/self/fd/FD shows it),
// then "LISTEN_PID=..." and exit. Inherited are those without close-on-exec:
// exec closes every fd that has it, and the Go runtime opens its own fds
// (cgroup files, for one) with it.
const listFDsArg = "_list-fds"

func listFDs() int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for _, e := range entries {
		fd, _ := strconv.Atoi(e.Name())
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC != 0 {
			continue // gone (the directory ReadDir had open), or our own
		}
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Printf("%d %s\n", fd, target)
	}
	fmt.Printf("LISTEN_PID=%s\n", os.Getenv("LISTEN_PID"))
	return 0
}

// TestShimPassesOnlyListeners: a descriptor the master holds without
// close-on-exec, beyond the ones it hands over on purpose, does not reach
// the command the shim execs; the listeners and the standard streams do,
// and LISTEN_PID is still the worker's own pid.
func TestShimPassesOnlyListeners(t *testing.T) {
	for _, n := range []int{0, 2} {
		t.Run(fmt.Sprintf("listeners=%d", n), func(t *testing.T) {
			fds := shimFDs(t, n)
			for fd, target := range fds {
				if fd >= 3+n {
					t.Errorf("the worker has fd %d (%s); want none from %d up", fd, target, 3+n)
				}
			}
		})
	}
}

// shimFDs starts the test binary through proc.Start with n listeners while
// this process holds a secret file open without close-on-exec, checks what
// every process must see (standard streams, listeners, LISTEN_PID, no
// secret) and returns the fds the worker inherited.
func shimFDs(t *testing.T, n int) map[int]string {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Without O_CLOEXEC, as a shell's redirection leaves it, once at the
	// lowest free number and once far above it.
	low, err := unix.Open(secret, unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(low)
	high, err := unix.FcntlInt(uintptr(low), unix.F_DUPFD, 100)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(high)

	var specs []listener.Spec
	for i := range n {
		specs = append(specs, listener.Spec{Name: fmt.Sprintf("l%d", i), Network: "tcp", Address: "127.0.0.1:0", Backlog: 16})
	}
	ls, err := listener.Open(specs)
	if err != nil {
		t.Fatal(err)
	}
	defer listener.CloseAll(ls)
	var lfds []int
	wantSockets := map[int]string{}
	for i, l := range ls {
		lfds = append(lfds, l.FD())
		var st unix.Stat_t
		if err := unix.Fstat(l.FD(), &st); err != nil {
			t.Fatal(err)
		}
		wantSockets[3+i] = fmt.Sprintf("socket:[%d]", st.Ino)
	}

	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer outR.Close()
	// GORACE: a -race helper would otherwise sleep a second at exit.
	env := append(os.Environ(), proc.MasterPidEnv+"="+strconv.Itoa(os.Getpid()), "GORACE=atexit_sleep_ms=0")
	if n > 0 {
		env = append(env, "LISTEN_FDS="+strconv.Itoa(n))
	}
	// Pdeathsig is tied to the forking thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var stderr strings.Builder
	p, err := proc.Start(proc.Spec{
		Shim:      self,
		Path:      self,
		Args:      []string{"worker", listFDsArg},
		Env:       env,
		Listeners: lfds,
		Stdout:    int(outW.Fd()),
		Stderr:    &stderr,
	})
	outW.Close()
	if err != nil {
		t.Fatal(err)
	}
	var ws unix.WaitStatus
	if _, err := unix.Wait4(p.Pid, &ws, 0, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.StderrClosed():
	case <-time.After(10 * time.Second):
	}
	if !ws.Exited() || ws.ExitStatus() != 0 {
		t.Fatalf("worker: %s; stderr: %q", proc.Describe(ws), p.StderrLines(10, 10))
	}

	fds := map[int]string{}
	sc := bufio.NewScanner(outR)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "LISTEN_PID="); ok {
			if n > 0 && v != strconv.Itoa(p.Pid) {
				t.Errorf("LISTEN_PID=%q, want the worker's pid %d", v, p.Pid)
			}
			continue
		}
		fdText, target, _ := strings.Cut(line, " ")
		fd, err := strconv.Atoi(fdText)
		if err != nil {
			t.Fatalf("bad line %q from the worker", line)
		}
		fds[fd] = target
	}
	t.Logf("the worker inherited: %v", fds)
	for fd, target := range fds {
		if target == secret {
			t.Errorf("the worker has the secret file as fd %d", fd)
		}
	}
	for fd := range 3 {
		if _, ok := fds[fd]; !ok {
			t.Errorf("the worker lacks fd %d", fd)
		}
	}
	for fd, want := range wantSockets {
		if fds[fd] != want {
			t.Errorf("the worker's fd %d is %q, want the listener %s", fd, fds[fd], want)
		}
	}
	return fds
}

// The shim refuses a command line without the number of listeners before
// anything else.
func TestShimUsage(t *testing.T) {
	for _, args := range [][]string{
		{"/bin/true", "true"},
		{"-1", "/bin/true", "true"},
		{"x", "/bin/true", "true"},
		{"0", "/bin/true"},
	} {
		if code := proc.Shim(args); code != 2 {
			t.Errorf("Shim(%q) = %d, want 2 (usage)", args, code)
		}
	}
}

// startShellArg makes the test binary a stand-in master: it prints its own
// soft RLIMIT_NOFILE, starts `sh -c SCRIPT` as a worker through the shim
// (the test binary again) and waits for it.
const startShellArg = "_start-shell"

func startShell(script string) int {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("master soft=%d hard=%d\n", lim.Cur, lim.Max)
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	runtime.LockOSThread()
	p, err := proc.Start(proc.Spec{
		Shim:   self,
		Path:   "/bin/sh",
		Args:   []string{"sh", "-c", script},
		Env:    append(os.Environ(), proc.MasterPidEnv+"="+strconv.Itoa(os.Getpid())),
		Stdout: 1,
		Stderr: os.Stderr,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var ws unix.WaitStatus
	if _, err := unix.Wait4(p.Pid, &ws, 0, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	<-p.StderrClosed()
	if !ws.Exited() || ws.ExitStatus() != 0 {
		fmt.Fprintf(os.Stderr, "worker: %s\n", proc.Describe(ws))
		return 1
	}
	return 0
}

// TestWorkerGetsTheOriginalFileLimit: the Go runtime raises a master's soft
// RLIMIT_NOFILE to its hard limit (less one) at start; a worker started
// through the shim gets the soft limit the master was started with, not the
// raised one (a program that uses select(2) relies on 1024). The shim is a
// Go program too, and restores it before its exec (golang/go#46279); a
// setrlimit of RLIMIT_NOFILE in the master or the shim would break this.
func TestWorkerGetsTheOriginalFileLimit(t *testing.T) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	const soft = 512
	if lim.Max < soft+2 {
		t.Fatalf("the hard RLIMIT_NOFILE %d leaves no room below it for this test (it needs at least %d)", lim.Max, soft+2)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// GORACE: a -race helper would otherwise sleep a second at exit.
	cmd := exec.Command("/bin/sh", "-c", `ulimit -Sn `+strconv.Itoa(soft)+` && exec "$0" "$1" "$2"`,
		self, startShellArg, `echo "worker soft=$(ulimit -Sn) hard=$(ulimit -Hn)"`)
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	out, err := cmd.CombinedOutput()
	t.Logf("%s", out)
	if err != nil {
		t.Fatalf("the stand-in master: %v", err)
	}
	hard := strconv.FormatUint(lim.Max, 10)
	if want := "master soft=" + strconv.FormatUint(lim.Max-1, 10) + " hard=" + hard + "\n"; !strings.Contains(string(out), want) {
		t.Errorf("the master was not raised by the Go runtime as expected: want %q", want)
	}
	if want := "worker soft=" + strconv.Itoa(soft) + " hard=" + hard + "\n"; !strings.Contains(string(out), want) {
		t.Errorf("the worker's limit: want %q", want)
	}
}
