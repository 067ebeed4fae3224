package cgroup

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestMain lets the test binary be the probe Setup starts.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == ProbeArg {
		os.Exit(0)
	}
	// A race-built binary sleeps a second at exit; the probe is one.
	os.Setenv("GORACE", "atexit_sleep_ms=0")
	os.Exit(m.Run())
}

func TestInstanceName(t *testing.T) {
	for in, want := range map[string]string{
		"/run/app/baton.pid":     "run_app_baton.pid",
		"127.0.0.1:8000,[::1]:9": "127.0.0.1_8000____1__9",
		"":                       "default",
	} {
		if got := instanceName(in); got != want {
			t.Errorf("instanceName(%q) = %q, want %q", in, got, want)
		}
	}
	long := strings.Repeat("x", 100)
	a, b := instanceName(long+"a"), instanceName(long+"b")
	if len(a) > 48 || a == b {
		t.Errorf("long names %q and %q: want at most 48 characters and distinct", a, b)
	}
}

// testTree sets up a tree at a fresh path with the test process as its
// master, and puts everything back when the test ends: the process in
// its old cgroup, the tree removed.
func testTree(t *testing.T) (*Tree, Spec) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the cgroup tests need root (they create cgroups); run the suite as root, as ./scripts/test does")
	}
	mount, err := unifiedMount()
	if err != nil {
		t.Fatalf("cgroup v2 is needed for these tests: %v", err)
	}
	own, err := ownPath()
	if err != nil {
		t.Fatal(err)
	}
	spec := Spec{Path: fmt.Sprintf("/baton-test-%d-%s", os.Getpid(), strings.ToLower(t.Name()))}
	tree, left, err := Setup(spec)
	if err != nil {
		t.Fatalf("Setup(%+v): %v", spec, err)
	}
	if len(left) != 0 {
		t.Fatalf("leftovers in a fresh tree: %v", left)
	}
	t.Cleanup(func() {
		if err := writeFile(filepath.Join(mount, own, "cgroup.procs"), "0"); err != nil {
			t.Errorf("moving the test back to %s: %v", own, err)
		}
		entries, _ := os.ReadDir(tree.dir)
		for _, e := range entries {
			if e.IsDir() {
				g := &Group{tree: tree, dir: filepath.Join(tree.dir, e.Name()), fd: -1}
				g.Kill()
				g.WaitEmpty(3 * time.Second)
				g.Remove()
			}
		}
		if err := unix.Rmdir(tree.dir); err != nil {
			t.Errorf("removing the test tree: %v", err)
		}
	})
	return tree, spec
}

// startIn starts a shell command inside g and returns its pid.
func startIn(t *testing.T, g *Group, script string) int {
	t.Helper()
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devNull.Close()
	fd := devNull.Fd()
	pid, err := forkExecInto(g, "/bin/sh", []string{"sh", "-c", script}, []uintptr{fd, fd, fd})
	if err != nil {
		t.Fatalf("start %q in %s: %v", script, g.Path(), err)
	}
	return pid
}

func waitProcs(t *testing.T, g *Group, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for g.Procs() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%s holds %d processes, want %d", g.Path(), g.Procs(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func reap(pid int) {
	var ws unix.WaitStatus
	unix.Wait4(pid, &ws, 0, nil)
}

// A process that left its session and process group (setsid) is still in
// its worker's cgroup, and one Kill ends it with the rest.
func TestKillEndsTheWholeTreeIncludingSetsidEscapes(t *testing.T) {
	tree, _ := testTree(t)
	g, err := tree.NewGroup()
	if err != nil {
		t.Fatal(err)
	}
	sh := startIn(t, g, "sleep 1000 & setsid sleep 1000 & wait")
	waitProcs(t, g, 3)
	pids := g.Pids()
	if err := g.Kill(); err != nil {
		t.Fatal(err)
	}
	reap(sh)
	if err := g.WaitEmpty(5 * time.Second); err != nil {
		t.Fatalf("after Kill: %v", err)
	}
	for _, pid := range pids {
		if unix.Kill(pid, 0) == nil && pid != sh {
			if st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); !strings.Contains(string(st), ") Z ") {
				t.Errorf("process %d of the group still runs", pid)
			}
		}
	}
	if err := g.Remove(); err != nil {
		t.Fatal(err)
	}
}

// A master started after its predecessor was killed finds the workers it
// left and kills them before it binds.
func TestSetupReclaimsWhatADeadMasterLeft(t *testing.T) {
	tree, spec := testTree(t)
	g, err := tree.NewGroup()
	if err != nil {
		t.Fatal(err)
	}
	sh := startIn(t, g, "setsid sleep 1000 & wait")
	waitProcs(t, g, 2)
	want := g.Pids()
	g.Remove() // closes the fd; the cgroup stays, busy
	_, left, err := Setup(spec)
	reap(sh)
	if err != nil {
		t.Fatalf("second Setup: %v", err)
	}
	if len(left) != 1 || !slices.Equal(left[0].Pids, want) || left[0].Group != g.Path() {
		t.Fatalf("leftovers %+v, want %v in %s", left, want, g.Path())
	}
	if _, err := os.Stat(g.dir); !os.IsNotExist(err) {
		t.Errorf("the leftover cgroup was not removed: %v", err)
	}
}

// Two live masters must not share a tree: the second would kill the
// first one's workers.
func TestSetupRefusesATreeALiveMasterHolds(t *testing.T) {
	tree, spec := testTree(t)
	leaf := &Group{tree: tree, dir: filepath.Join(tree.dir, masterLeaf)}
	fd, err := unix.Open(leaf.dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	leaf.fd = fd
	other := startIn(t, leaf, "exec sleep 1000")
	defer func() {
		unix.Kill(other, syscall.SIGKILL)
		reap(other)
		unix.Close(fd)
	}()
	_, _, err = Setup(spec)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("in use by another baton master (pid %d)", other)) {
		t.Fatalf("Setup with a live master in the tree: %v, want a refusal naming pid %d", err, other)
	}
	var unusable *Unusable
	if errorsAs(err, &unusable) {
		t.Error("a conflict must not read as 'cgroups unusable': auto mode would silently fall back")
	}
}

func errorsAs(err error, target **Unusable) bool {
	u, ok := err.(*Unusable)
	if ok {
		*target = u
	}
	return ok
}

func TestProcsAndMemory(t *testing.T) {
	tree, _ := testTree(t)
	g, err := tree.NewGroup()
	if err != nil {
		t.Fatal(err)
	}
	sh := startIn(t, g, "sleep 1000 & sleep 1000 & wait")
	waitProcs(t, g, 3)
	if n := g.Procs(); n != 3 {
		t.Errorf("Procs = %d, want 3", n)
	}
	mem, ok := g.MemoryCurrent()
	if ok != tree.Memory() || (ok && mem == 0) {
		t.Errorf("MemoryCurrent = %d, %v with the memory controller %v", mem, ok, tree.Memory())
	}
	t.Logf("memory controller for workers: %v", tree.Memory())
	g.Kill()
	reap(sh)
	g.WaitEmpty(5 * time.Second)
	g.Remove()
}

// A master this process cannot see (another pid namespace) still counts
// as live: its leaf is populated.
func TestAMasterInTheLeafThatThisProcessCannotSeeIsLive(t *testing.T) {
	tree, _ := testTree(t)
	if pid := tree.liveMaster(); pid != 0 {
		t.Fatalf("liveMaster of a tree with only this process = %d, want 0", pid)
	}
	leaf := &Group{tree: tree, dir: filepath.Join(tree.dir, masterLeaf)}
	fd, err := unix.Open(leaf.dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	leaf.fd = fd
	// unshare --pid --fork: the sleep's pid lives in a new pid namespace,
	// and cgroup.procs shows its pid from ours; what matters is that a
	// process there makes the leaf live.
	other := startIn(t, leaf, "exec unshare --pid --fork sleep 1000")
	defer func() { unix.Kill(other, syscall.SIGKILL); reap(other) }()
	waitProcs(t, leaf, 2)
	if pid := tree.liveMaster(); pid == 0 {
		t.Fatal("a leaf holding another process reads as having no live master")
	}
}
