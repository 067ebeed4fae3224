// Package cgroup gives each worker a cgroup v2 of its own, in a subtree
// that baton owns, so that the master knows and controls a worker's whole
// process tree: a process that calls setsid() or double-forks stays in
// its worker's cgroup, and one write to cgroup.kill ends them all.
//
// The subtree (a Tree) holds a leaf for the master and one cgroup per
// worker:
//
//	<base>/master          the master itself (cgroup v2 lets only leaves hold processes
//	                       once controllers are enabled for the children)
//	<base>/w-<pid>-<n>     worker n of the master with that pid
//
// A worker is born in its cgroup (clone3 with CLONE_INTO_CGROUP, through
// Go's SysProcAttr.UseCgroupFD), so none of its code runs outside it.
//
// Where baton may write depends on the host: the root of the hierarchy
// (a host without systemd, or a container with its own cgroup namespace),
// or a cgroup that systemd delegated to it (Delegate=yes, which marks it
// with the trusted.delegate extended attribute). Anywhere else the tree
// belongs to someone else and Setup says why baton cannot use it.
package cgroup

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ProbeArg is the hidden argument that makes baton exit 0 at once: Setup
// starts it inside a cgroup to check that the kernel (and any seccomp
// filter) lets baton start processes directly into one.
const ProbeArg = "_cgroup_probe"

// masterLeaf is the master's own cgroup within the tree.
const masterLeaf = "master"

// Spec says where the tree goes.
type Spec struct {
	// Path is the tree's path in the cgroup v2 hierarchy ("/baton/app"),
	// or "" to choose one from the master's own cgroup and Instance.
	Path string
	// Instance names the tree when Path is "": something stable across
	// restarts of the same service (the pidfile path, the addresses),
	// so that a master started after a `kill -9` finds its predecessor's
	// workers. "" gives the master a tree of its own, named by its pid.
	Instance string
	// Upgrade is set for a master an upgrade started: it joins the tree
	// its predecessor still serves from, and kills nothing.
	Upgrade bool
}

// Tree is baton's cgroup subtree.
type Tree struct {
	dir    string // absolute path in the mounted hierarchy
	path   string // the same, as a cgroup path ("/baton-app")
	memory bool   // the memory controller is enabled for workers
	kill   bool   // cgroup.kill exists (Linux 5.14)
	seq    int
}

// Leftover is a process of a previous master's worker that Setup killed.
type Leftover struct {
	Group string // its cgroup
	Pids  []int
}

// Unusable is why the cgroup tree cannot be used; in "auto" mode baton
// then runs without cgroups, and says so.
type Unusable struct{ Reason string }

func (e *Unusable) Error() string { return e.Reason }

// Setup creates (or takes over) the tree, kills what a dead predecessor
// left in it, and moves the calling process, the master, into its leaf.
// An *Unusable error says that cgroups cannot be used here at all; any
// other error is a problem with a tree that could be used (another live
// master holds it, say).
func Setup(spec Spec) (*Tree, []Leftover, error) {
	mount, err := unifiedMount()
	if err != nil {
		return nil, nil, err
	}
	path, err := treePath(mount, spec)
	if err != nil {
		return nil, nil, err
	}
	t := &Tree{dir: filepath.Join(mount, path), path: path}
	if err := os.MkdirAll(t.dir, 0o755); err != nil {
		return nil, nil, &Unusable{Reason: fmt.Sprintf("cannot create cgroup %s: %v", path, err)}
	}
	var left []Leftover
	if !spec.Upgrade {
		left = collectAnonymous(filepath.Dir(t.dir), filepath.Dir(path))
		if pid := t.liveMaster(); pid != 0 {
			return nil, nil, fmt.Errorf("cgroup %s is in use by another baton master (pid %d); stop it first, or give this one another pid file, bind or cgroup", path, pid)
		}
		own, err := t.reclaim()
		left = append(left, own...)
		if err != nil {
			return nil, nil, err
		}
	}
	if err := os.MkdirAll(filepath.Join(t.dir, masterLeaf), 0o755); err != nil {
		return nil, nil, &Unusable{Reason: fmt.Sprintf("cannot create cgroup %s/%s: %v", path, masterLeaf, err)}
	}
	if err := writeFile(filepath.Join(t.dir, masterLeaf, "cgroup.procs"), "0"); err != nil {
		return nil, nil, &Unusable{Reason: fmt.Sprintf("cannot move the master into cgroup %s/%s: %v", path, masterLeaf, err)}
	}
	_, err = os.Stat(filepath.Join(t.dir, "cgroup.kill"))
	t.kill = err == nil
	t.memory = t.enable("memory")
	if err := t.probe(); err != nil {
		return nil, nil, &Unusable{Reason: "cannot start a process inside a cgroup (clone3 with CLONE_INTO_CGROUP): " + err.Error()}
	}
	return t, left, nil
}

// Close removes the tree when the master exits: every worker cgroup that
// is empty, then, once the master moved itself to the tree's parent, its
// leaf and the tree itself. What is busy (a new master that an upgrade
// started lives in the leaf) stays.
func (t *Tree) Close() {
	entries, _ := os.ReadDir(t.dir)
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), "w-") {
			unix.Rmdir(filepath.Join(t.dir, e.Name()))
		}
	}
	if writeFile(filepath.Join(filepath.Dir(t.dir), "cgroup.procs"), "0") != nil {
		return
	}
	if unix.Rmdir(filepath.Join(t.dir, masterLeaf)) == nil {
		unix.Rmdir(t.dir)
	}
}

// Path is the tree's cgroup path.
func (t *Tree) Path() string { return t.path }

// Memory reports whether workers' memory is accounted (memory.current).
func (t *Tree) Memory() bool { return t.memory }

// unifiedMount finds the cgroup v2 hierarchy: /sys/fs/cgroup on a unified
// host, /sys/fs/cgroup/unified on a hybrid one.
func unifiedMount() (string, error) {
	for _, dir := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		var st unix.Statfs_t
		if unix.Statfs(dir, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			return dir, nil
		}
	}
	return "", &Unusable{Reason: "no cgroup v2 hierarchy is mounted (neither /sys/fs/cgroup nor /sys/fs/cgroup/unified)"}
}

// ownPath is the calling process's cgroup v2 path.
func ownPath() (string, error) {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p, nil
		}
	}
	return "", errors.New("/proc/self/cgroup has no cgroup v2 entry")
}

// treePath decides where the tree goes. An explicit path is taken as it
// is. Otherwise the master's own cgroup must be baton's to use: the root
// of the hierarchy (as seen from this cgroup namespace), or one systemd
// delegated; a master already in a tree's leaf (restarted by an upgrade,
// or started from a worker) is not moved elsewhere.
func treePath(mount string, spec Spec) (string, error) {
	if spec.Path != "" {
		return filepath.Clean(spec.Path), nil
	}
	own, err := ownPath()
	if err != nil {
		return "", &Unusable{Reason: "cannot read this process's cgroup: " + err.Error()}
	}
	if spec.Upgrade && filepath.Base(own) == masterLeaf {
		return filepath.Dir(own), nil
	}
	name := "baton-" + instanceName(spec.Instance)
	if spec.Instance == "" {
		name = fmt.Sprintf("%s%d", anonymousPrefix, os.Getpid())
	}
	if own == "/" {
		return "/" + name, nil
	}
	if delegated(filepath.Join(mount, own)) {
		return filepath.Join(own, name), nil
	}
	return "", &Unusable{Reason: fmt.Sprintf("this process's cgroup %s is not delegated to baton (under systemd, set Delegate=yes in the unit; or set cgroup to a path baton may use)", own)}
}

// delegated reports whether systemd delegated the cgroup at dir.
func delegated(dir string) bool {
	for _, attr := range []string{"trusted.delegate", "user.delegate"} {
		buf := make([]byte, 8)
		n, err := unix.Getxattr(dir, attr, buf)
		if err == nil && string(buf[:n]) == "1" {
			return true
		}
	}
	return false
}

// instanceName makes a cgroup name out of s: letters, digits, '.', '_'
// and '-' are kept, the rest becomes '_'; long names are cut and made
// unique with a hash.
func instanceName(s string) string {
	s = strings.Trim(s, "/")
	var b strings.Builder
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	name := b.String()
	if name == "" {
		name = "default"
	}
	if len(name) > 48 {
		h := uint32(2166136261)
		for i := 0; i < len(s); i++ {
			h = (h ^ uint32(s[i])) * 16777619
		}
		name = fmt.Sprintf("%s-%08x", name[len(name)-39:], h)
	}
	return name
}

// liveMaster is the pid of a process in the tree's master leaf, -1 for
// one this process cannot see (a master in another pid namespace shows
// as 0, or not at all, in cgroup.procs), or 0 when the leaf holds none
// but this process.
func (t *Tree) liveMaster() int {
	leaf := filepath.Join(t.dir, masterLeaf)
	pids, _ := readPids(filepath.Join(leaf, "cgroup.procs"))
	self := os.Getpid()
	for _, pid := range pids {
		if pid != self {
			if pid == 0 {
				return -1
			}
			return pid
		}
	}
	if len(pids) == 0 {
		// cgroup.events counts the processes of every pid namespace.
		g := &Group{tree: t, dir: leaf, fd: -1}
		if busy, err := g.Populated(); err == nil && busy {
			return -1
		}
	}
	return 0
}

// reclaim kills what a dead master left in the tree's worker cgroups and
// removes them.
func (t *Tree) reclaim() ([]Leftover, error) {
	entries, err := os.ReadDir(t.dir)
	if err != nil {
		return nil, &Unusable{Reason: fmt.Sprintf("cannot read cgroup %s: %v", t.path, err)}
	}
	var left []Leftover
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), "w-") {
			continue
		}
		g := &Group{tree: t, dir: filepath.Join(t.dir, e.Name()), fd: -1}
		pids, _ := readPids(filepath.Join(g.dir, "cgroup.procs"))
		if len(pids) > 0 {
			left = append(left, Leftover{Group: filepath.Join(t.path, e.Name()), Pids: pids})
			if err := g.Kill(); err != nil {
				return left, fmt.Errorf("cannot kill the leftover processes in cgroup %s: %w", g.dir, err)
			}
		}
		if err := g.WaitEmpty(3 * time.Second); err != nil {
			return left, fmt.Errorf("leftover processes in cgroup %s: %w", g.dir, err)
		}
		if err := g.Remove(); err != nil {
			return left, err
		}
	}
	return left, nil
}

// anonymousPrefix names the trees of masters that had nothing stable to
// name theirs by (no pidfile; port 0 or inherited sockets).
const anonymousPrefix = "baton-pid"

// collectAnonymous cleans the trees of masters that are gone, under dir:
// an anonymous tree is reclaimed (its leftovers killed: nothing else
// would ever find them) and removed; another tree is removed only when
// nothing is left in it, since its leftovers are its own service's to
// reclaim when it starts again.
func collectAnonymous(dir, cgPath string) []Leftover {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var left []Leftover
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), "baton-") || e.Name() == fmt.Sprintf("%s%d", anonymousPrefix, os.Getpid()) {
			continue
		}
		t := &Tree{dir: filepath.Join(dir, e.Name()), path: filepath.Join(cgPath, e.Name())}
		_, err := os.Stat(filepath.Join(t.dir, "cgroup.kill"))
		t.kill = err == nil
		if t.liveMaster() != 0 || settingUp(t.dir) {
			continue
		}
		if !strings.HasPrefix(e.Name(), anonymousPrefix) {
			t.removeIfEmpty()
			continue
		}
		found, err := t.reclaim()
		left = append(left, found...)
		if err == nil {
			unix.Rmdir(filepath.Join(t.dir, masterLeaf))
			unix.Rmdir(t.dir)
		}
	}
	return left
}

// setupGrace is how young a tree is left alone by other masters'
// clean-up: its master may be creating it, not yet in its leaf.
const setupGrace = 10 * time.Second

// settingUp reports whether the tree at dir was created too recently to
// be collected.
func settingUp(dir string) bool {
	var st unix.Stat_t
	if unix.Stat(dir, &st) != nil {
		return true
	}
	return time.Since(time.Unix(st.Ctim.Unix())) < setupGrace
}

// removeIfEmpty removes the tree if no process is left in it.
func (t *Tree) removeIfEmpty() {
	entries, _ := os.ReadDir(t.dir)
	for _, e := range entries {
		if e.IsDir() {
			unix.Rmdir(filepath.Join(t.dir, e.Name())) // fails while busy
		}
	}
	unix.Rmdir(t.dir)
}

// enable turns controller on for the tree's children, if the parent
// gives it to the tree.
func (t *Tree) enable(controller string) bool {
	data, err := os.ReadFile(filepath.Join(t.dir, "cgroup.controllers"))
	if err != nil || !contains(strings.Fields(string(data)), controller) {
		return false
	}
	if writeFile(filepath.Join(t.dir, "cgroup.subtree_control"), "+"+controller) != nil {
		return false
	}
	_, err = os.Stat(filepath.Join(t.dir, masterLeaf, controller+".current"))
	return err == nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// probe starts baton itself, exiting at once, inside a cgroup of the tree.
func (t *Tree) probe() error {
	g, err := t.NewGroup()
	if err != nil {
		return err
	}
	defer g.Remove()
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		return err
	}
	defer devNull.Close()
	fd := devNull.Fd()
	pid, err := forkExecInto(g, "/proc/self/exe", []string{"baton", ProbeArg}, []uintptr{fd, fd, fd})
	if err != nil {
		return err
	}
	var ws unix.WaitStatus
	for {
		_, err = unix.Wait4(pid, &ws, 0, nil)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return err
	}
	if !ws.Exited() || ws.ExitStatus() != 0 {
		return fmt.Errorf("the probe process ended with wait status %#x", uint32(ws))
	}
	return nil
}

// Group is one worker's cgroup.
type Group struct {
	tree *Tree
	dir  string
	fd   int // O_PATH fd of dir, for CLONE_INTO_CGROUP; -1 once closed
}

// NewGroup creates a cgroup for one worker. It never takes one that
// exists: after an in-place upgrade the same pid names the cgroups of the
// workers the previous image started, which live on.
func (t *Tree) NewGroup() (*Group, error) {
	var dir string
	for {
		t.seq++
		dir = filepath.Join(t.dir, fmt.Sprintf("w-%d-%d", os.Getpid(), t.seq))
		err := os.Mkdir(dir, 0o755)
		if err == nil {
			break
		}
		if !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("cgroup: %w", err)
		}
	}
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		os.Remove(dir)
		return nil, fmt.Errorf("cgroup: open %s: %w", dir, err)
	}
	return &Group{tree: t, dir: dir, fd: fd}, nil
}

// OpenGroup takes over the worker cgroup at path (a cgroup path, as Path
// gives it), which a previous image of this master created.
func (t *Tree) OpenGroup(path string) (*Group, error) {
	if filepath.Dir(path) != t.path {
		return nil, fmt.Errorf("cgroup %s is not in the tree %s", path, t.path)
	}
	dir := filepath.Join(t.dir, filepath.Base(path))
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("cgroup: open %s: %w", dir, err)
	}
	return &Group{tree: t, dir: dir, fd: fd}, nil
}

// Move moves process pid, and only it, into g: a preload template's forked
// worker, which waits to be told to run until it is in its own cgroup.
func (g *Group) Move(pid int) error {
	if err := writeFile(filepath.Join(g.dir, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
		return fmt.Errorf("cgroup: move pid %d into %s: %w", pid, g.Path(), err)
	}
	return nil
}

// FD is the cgroup's directory fd, to start a process inside it.
func (g *Group) FD() int { return g.fd }

// Path is the group's cgroup path.
func (g *Group) Path() string { return filepath.Join(g.tree.path, filepath.Base(g.dir)) }

// Kill sends SIGKILL to every process in the group: one write to
// cgroup.kill, which the kernel applies to processes forking meanwhile
// too; before Linux 5.14, the group is frozen so that nothing forks,
// every process in it is killed, and it is thawed.
func (g *Group) Kill() error {
	if g.tree.kill {
		return writeFile(filepath.Join(g.dir, "cgroup.kill"), "1")
	}
	freeze := filepath.Join(g.dir, "cgroup.freeze")
	frozen := writeFile(freeze, "1") == nil
	defer func() {
		if frozen {
			writeFile(freeze, "0")
		}
	}()
	pids, err := readPids(filepath.Join(g.dir, "cgroup.procs"))
	if err != nil {
		return err
	}
	for _, pid := range pids {
		// A process listed in a frozen cgroup cannot exit and be reaped
		// before this, so its pid is still its own.
		unix.Kill(pid, unix.SIGKILL)
	}
	return nil
}

// Populated reports whether any process is left in the group.
func (g *Group) Populated() (bool, error) {
	data, err := os.ReadFile(filepath.Join(g.dir, "cgroup.events"))
	if err != nil {
		return false, err
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "populated "); ok {
			return v != "0", nil
		}
	}
	return false, errors.New("cgroup.events has no populated line")
}

// WaitEmpty waits until no process is left in the group.
func (g *Group) WaitEmpty(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		busy, err := g.Populated()
		if err != nil || !busy {
			return err
		}
		if time.Now().After(deadline) {
			pids, _ := readPids(filepath.Join(g.dir, "cgroup.procs"))
			return fmt.Errorf("processes %v still run after %v", pids, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Procs is how many processes the group holds.
func (g *Group) Procs() int {
	pids, _ := readPids(filepath.Join(g.dir, "cgroup.procs"))
	return len(pids)
}

// Pids lists the processes the group holds.
func (g *Group) Pids() []int {
	pids, _ := readPids(filepath.Join(g.dir, "cgroup.procs"))
	return pids
}

// MemoryCurrent is the memory the group uses, in bytes, when the memory
// controller is enabled.
func (g *Group) MemoryCurrent() (uint64, bool) {
	if !g.tree.memory {
		return 0, false
	}
	data, err := os.ReadFile(filepath.Join(g.dir, "memory.current"))
	if err != nil {
		return 0, false
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
	return v, err == nil
}

// Remove closes the group's fd and removes the cgroup, which must be
// empty.
func (g *Group) Remove() error {
	if g.fd >= 0 {
		unix.Close(g.fd)
		g.fd = -1
	}
	if err := unix.Rmdir(g.dir); err != nil && err != unix.ENOENT {
		return fmt.Errorf("cgroup: remove %s: %w", g.dir, err)
	}
	return nil
}

func readPids(path string) ([]int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(data)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

func writeFile(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// forkExecInto starts argv[0] at path inside g, with files as its fds.
func forkExecInto(g *Group, path string, argv []string, files []uintptr) (int, error) {
	return syscall.ForkExec(path, argv, &syscall.ProcAttr{
		Env:   os.Environ(),
		Files: files,
		Sys:   &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: g.fd, Pdeathsig: syscall.SIGKILL},
	})
}
