//go:build systemdtier

package systemdtier

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/baton-pm/baton/e2e/internal/tiertest"
	"golang.org/x/sys/unix"
)

// nspawnOptions are the options every container of the tier boots with.
//   - --register=no --keep-unit: the host has no systemd (no bus, no
//     machined) to register the container with or to ask for a scope.
//   - --system-call-filter=pidfd_getfd: nspawn's default seccomp filter
//     refuses pidfd_getfd even to root, and baton's drain_unlisten needs it.
//   - --private-network: the container has a loopback of its own, so the
//     units' fixed 127.0.0.1:8000 never meets the host's; the tests reach it
//     from inside the container's network namespace (container.dial).
var nspawnOptions = []string{
	"--register=no", "--keep-unit",
	"--system-call-filter=pidfd_getfd",
	"--private-network",
	"--console=pipe",
	"--quiet",
	"-b",
}

// cgroupPrefix names the cgroups a run makes for its container, one per
// hierarchy: <prefix><pid of the test binary>.<n>.
const cgroupPrefix = "baton-systemd-tier."

// container is one booted systemd-nspawn container.
type container struct {
	name    string
	boot    *exec.Cmd // scripts/systemd-tier/boot: unshare, the parent of nspawn
	exited  chan struct{}
	console *tiertest.SyncBuffer
	cgroups []string // the run's cgroup directories on the host

	nspawn int // host pid of systemd-nspawn
	leader int // host pid of the container's PID 1 (systemd)
	pidns  uint64
	netns  *tiertest.Netns

	stopOnce sync.Once
}

var containerSeq int

// bootContainer boots a container from the tier's root filesystem and waits
// until its systemd has finished booting. Any failure fails the test with
// the reason (nspawn's own output included): the tier never skips. The
// container is stopped and everything it left removed when the test ends.
func bootContainer(t *testing.T) *container {
	t.Helper()
	env := setup(t)
	containerSeq++
	c := &container{
		name:    fmt.Sprintf("baton-tier-%d-%d", os.Getpid(), containerSeq),
		exited:  make(chan struct{}),
		console: &tiertest.SyncBuffer{},
	}
	var err error
	c.cgroups, err = makeRunCgroups(fmt.Sprintf("%s%d.%d", cgroupPrefix, os.Getpid(), containerSeq))
	if err != nil {
		t.Fatalf("cannot boot the container: %v", err)
	}
	t.Cleanup(func() { c.stop(t) })

	args := append([]string{env.rootfs, "--machine=" + c.name}, nspawnOptions...)
	c.boot = exec.Command(filepath.Join(env.repo, "scripts/systemd-tier/boot"), args...)
	c.boot.Env = append(os.Environ(), "BATON_TIER_CGROUPS="+strings.Join(c.cgroups, " "))
	c.boot.Stdout, c.boot.Stderr = c.console, c.console
	// If this test binary dies (a panic, go test's timeout, SIGKILL), the
	// boot script's unshare gets SIGKILL, its namespace's init (nspawn)
	// gets SIGKILL from unshare, and the kernel kills the rest. Pdeathsig
	// follows the thread that forked, so that thread stays locked to the
	// goroutine that waits for the container until it exits.
	c.boot.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		if err := c.boot.Start(); err != nil {
			started <- err
			close(c.exited)
			return
		}
		started <- nil
		c.boot.Wait()
		close(c.exited)
	}()
	if err := <-started; err != nil {
		t.Fatalf("cannot boot the container: %v", err)
	}

	deadline := time.Now().Add(60 * time.Second)
	for c.leader == 0 {
		select {
		case <-c.exited:
			t.Fatalf("systemd-nspawn could not boot the container (%v); its output:\n%s", c.boot.ProcessState, c.console.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no systemd in the container 60 s after systemd-nspawn started; its output:\n%s", c.console.String())
		}
		if c.nspawn == 0 {
			c.nspawn = childWithName(c.boot.Process.Pid, "systemd-nspawn")
		} else {
			c.leader = childWithName(c.nspawn, "systemd")
		}
		time.Sleep(20 * time.Millisecond)
	}
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/pid", c.leader), &st); err != nil {
		t.Fatalf("container: %v", err)
	}
	c.pidns = st.Ino
	if c.netns, err = tiertest.OpenNetns(c.leader); err != nil {
		t.Fatalf("container: %v", err)
	}

	// systemctl answers once PID 1 has set up its private socket.
	var state string
	for {
		out, err := c.exec(30*time.Second, "systemctl", "is-system-running", "--wait")
		state = strings.TrimSpace(out)
		if state == "running" || state == "degraded" {
			break
		}
		select {
		case <-c.exited:
			t.Fatalf("the container stopped while booting (%v); nspawn's output:\n%s", c.boot.ProcessState, c.console.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the container's systemd did not finish booting within 60 s: is-system-running says %q (%v); nspawn's output:\n%s", state, err, c.console.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if state == "degraded" {
		failed, _ := c.exec(30*time.Second, "systemctl", "--failed", "--no-legend")
		t.Logf("the container booted degraded; failed units:\n%s", failed)
	}
	return c
}

// exec runs a command in the container (its namespaces and root) and returns
// its standard output and error together.
func (c *container) exec(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	nsargs := []string{"-t", strconv.Itoa(c.leader), "-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w", "--"}
	cmd := exec.CommandContext(ctx, "nsenter", append(nsargs, args...)...)
	cmd.Env = []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"LANG=C.UTF-8", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0", "TERM=dumb",
	}
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s: timed out after %v", strings.Join(args, " "), timeout)
	}
	return string(out), err
}

// sh runs a shell script in the container.
func (c *container) sh(timeout time.Duration, script string) (string, error) {
	return c.exec(timeout, "sh", "-c", script)
}

// path is where the host sees a path of the container's file system.
func (c *container) path(p string) string {
	return fmt.Sprintf("/proc/%d/root%s", c.leader, p)
}

func (c *container) writeFile(t *testing.T, p string, data []byte, mode os.FileMode) {
	t.Helper()
	hp := c.path(p)
	if err := os.MkdirAll(filepath.Dir(hp), 0o755); err != nil {
		t.Fatal(err)
	}
	// A new file renamed over the old one, as an install does.
	tmp := hp + ".new"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(tmp, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, hp); err != nil {
		t.Fatal(err)
	}
}

// stop halts the container (SIGTERM to nspawn: systemd shuts down in
// order), kills it if that takes more than 15 s, removes the run's cgroups,
// and fails the test if any process of the container, a mount of its root
// or one of its cgroups is left.
func (c *container) stop(t *testing.T) {
	c.stopOnce.Do(func() {
		if c.netns != nil {
			c.netns.Close()
		}
		if c.boot != nil && c.boot.Process != nil {
			if c.nspawn != 0 {
				syscall.Kill(c.nspawn, syscall.SIGTERM)
			} else {
				c.boot.Process.Signal(syscall.SIGKILL)
			}
			select {
			case <-c.exited:
			case <-time.After(15 * time.Second):
				t.Logf("the container did not halt within 15 s of SIGTERM to nspawn: killing it")
				c.boot.Process.Signal(syscall.SIGKILL)
				<-c.exited
			}
		}
		if c.pidns != 0 {
			deadline := time.Now().Add(10 * time.Second)
			for {
				left := processesInPidns(c.pidns)
				if len(left) == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Errorf("processes of the container are still alive after it stopped: %v", left)
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		for _, cg := range c.cgroups {
			if err := removeCgroupTree(cg, 10*time.Second); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
		if mi, err := os.ReadFile("/proc/self/mountinfo"); err == nil && bytes.Contains(mi, []byte("/run/tier/")) {
			t.Errorf("cleanup: a mount of the container's root is visible on the host:\n%s", mi)
		}
	})
}

// childWithName returns the pid of a child of parent whose command name is
// name, or 0.
func childWithName(parent int, name string) int {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		ppid, comm, ok := procStat(pid)
		if ok && ppid == parent && comm == name {
			return pid
		}
	}
	return 0
}

// procStat reads a process's parent and command name from /proc.
func procStat(pid int) (ppid int, comm string, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, "", false
	}
	s := string(b)
	open, closing := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || closing < open {
		return 0, "", false
	}
	f := strings.Fields(s[closing+1:])
	if len(f) < 2 {
		return 0, "", false
	}
	ppid, err = strconv.Atoi(f[1])
	return ppid, s[open+1 : closing], err == nil
}

// processesInPidns lists the host pids of the live processes in the pid
// namespace with inode ino.
func processesInPidns(ino uint64) []string {
	var left []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(fmt.Sprintf("/proc/%d/ns/pid", pid), &st) != nil || st.Ino != ino {
			continue
		}
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && !isZombie(string(b)) {
			_, comm, _ := procStat(pid)
			left = append(left, fmt.Sprintf("%d (%s)", pid, comm))
		}
	}
	return left
}

func isZombie(stat string) bool {
	i := strings.LastIndexByte(stat, ')')
	f := strings.Fields(stat[i+1:])
	return len(f) > 0 && f[0] == "Z"
}

// cgroupHierarchies returns, for the cgroup v2 hierarchy and for systemd's
// named v1 hierarchy (hybrid hosts) where they are mounted, the directory of
// this process's own cgroup.
func cgroupHierarchies() ([]string, error) {
	mounts := map[string]string{} // "" for v2, "name=systemd" for v1
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint options ... - fstype source superoptions
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(qf) < 3 || pf[3] != "/" {
			continue
		}
		switch {
		case qf[0] == "cgroup2":
			if _, seen := mounts[""]; !seen {
				mounts[""] = pf[4]
			}
		case qf[0] == "cgroup" && strings.Contains(","+qf[2]+",", ",name=systemd,"):
			if _, seen := mounts["name=systemd"]; !seen {
				mounts["name=systemd"] = pf[4]
			}
		}
	}
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	var dirs []string
	for _, line := range strings.Split(strings.TrimSpace(string(self)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		key := parts[1]
		if parts[0] == "0" && key == "" {
			key = ""
		} else if key != "name=systemd" {
			continue
		}
		if m, ok := mounts[key]; ok {
			dirs = append(dirs, filepath.Join(m, parts[2]))
		}
	}
	if len(dirs) == 0 {
		return nil, errors.New("no cgroup v2 hierarchy and no name=systemd hierarchy is mounted: systemd cannot run in a container here")
	}
	return dirs, nil
}

// makeRunCgroups makes a cgroup called name in every hierarchy the
// container's systemd uses, below this process's own cgroup, after removing
// the empty ones earlier runs left (a test binary that was killed).
func makeRunCgroups(name string) ([]string, error) {
	parents, err := cgroupHierarchies()
	if err != nil {
		return nil, err
	}
	var dirs []string
	for _, p := range parents {
		sweepStaleCgroups(p)
		d := filepath.Join(p, name)
		if err := os.Mkdir(d, 0o755); err != nil {
			return nil, fmt.Errorf("cannot make the container's cgroup: %w", err)
		}
		dirs = append(dirs, d)
	}
	return dirs, nil
}

// sweepStaleCgroups removes the run cgroups below parent whose test binary
// is gone and that hold no process.
func sweepStaleCgroups(parent string) {
	matches, _ := filepath.Glob(filepath.Join(parent, cgroupPrefix+"*"))
	for _, m := range matches {
		rest := strings.TrimPrefix(filepath.Base(m), cgroupPrefix)
		owner, err := strconv.Atoi(strings.SplitN(rest, ".", 2)[0])
		if err != nil || owner == os.Getpid() {
			continue
		}
		if syscall.Kill(owner, 0) == nil {
			continue // another run's, still going
		}
		removeCgroupTree(m, 0)
	}
}

// removeCgroupTree removes a cgroup and every cgroup below it, deepest
// first, waiting up to wait for their processes to be gone.
func removeCgroupTree(dir string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		var dirs []string
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		var lastErr error
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := os.Remove(dirs[i]); err != nil && !errors.Is(err, fs.ErrNotExist) {
				procs, _ := os.ReadFile(filepath.Join(dirs[i], "cgroup.procs"))
				lastErr = fmt.Errorf("cannot remove the cgroup %s (processes: %q): %w", dirs[i], strings.Fields(string(procs)), err)
			}
		}
		if lastErr == nil || time.Now().After(deadline) {
			return lastErr
		}
		time.Sleep(50 * time.Millisecond)
	}
}
