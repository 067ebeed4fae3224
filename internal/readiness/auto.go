// Package readiness tells, from /proc and without the app's help, whether a
// worker is actually waiting for connections on one of its inherited
// listeners (baton's `ready = "auto"` mode).
//
// A worker counts as waiting when any process of its tree either has a
// listener registered for input in one of its epoll sets (asyncio/uvicorn,
// Go's netpoller, node's libuv, gunicorn's gthread worker), or has a thread
// blocked in accept, poll or select on it (gunicorn's sync worker, plain
// blocking servers). Listeners are matched by socket inode, not fd number,
// because apps dup the inherited fds (uvicorn --fd 3 does).
//
// The same reading of a worker's sockets finds the TCP sockets it listens
// on that are not baton's (foreign.go): a server that bound its own port
// instead of using the one it inherited.
package readiness

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// maxWatchedFDs bounds how much of a poll() array or select() set is read
// from another process's memory.
const maxWatchedFDs = 65536

// SocketInode is the inode of the socket open as fd in this process.
func SocketInode(fd int) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("fstat fd %d: %w", fd, err)
	}
	return st.Ino, nil
}

// Probe checks worker processes against a fixed set of listener inodes.
type Probe struct {
	inodes map[uint64]bool
	// onDiagFailure is told once that sock_diag failed (foreign.go).
	onDiagFailure func(error)
	diagFailed    atomic.Bool
}

// procRoot is where the kernel's process information is mounted.
const procRoot = "/proc"

// NewProbe watches for the given listener socket inodes.
func NewProbe(inodes []uint64) *Probe {
	p := &Probe{inodes: map[uint64]bool{}}
	for _, ino := range inodes {
		p.inodes[ino] = true
	}
	return p
}

// Waiting reports whether root or any of its descendants waits for
// connections on a watched listener. Processes that vanish while being read
// simply do not count.
func (p *Probe) Waiting(root int) bool {
	for _, pid := range p.tree(root) {
		if p.processWaiting(pid) {
			return true
		}
	}
	return false
}

// tree lists root and its descendants, from the kernel's children lists.
func (p *Probe) tree(root int) []int {
	seen := map[int]bool{}
	queue := []int{root}
	var pids []int
	for len(queue) > 0 && len(pids) < 4096 {
		pid := queue[0]
		queue = queue[1:]
		if seen[pid] {
			continue
		}
		seen[pid] = true
		pids = append(pids, pid)
		queue = append(queue, p.children(pid)...)
	}
	return pids
}

// children lists pid's children, from each of its threads' children file.
func (p *Probe) children(pid int) []int {
	var kids []int
	for _, path := range taskFiles(pid, "children") {
		data, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(data)) {
			if k, err := strconv.Atoi(f); err == nil {
				kids = append(kids, k)
			}
		}
	}
	return kids
}

func (p *Probe) processWaiting(pid int) bool {
	sockets, epolls := p.fds(pid)
	if !p.anyWatched(sockets) {
		return false // holds none of the listeners: nothing to wait on
	}
	for _, epfd := range epolls {
		if p.epollWatches(pid, epfd) {
			return true
		}
	}
	return p.threadBlockedOnListener(pid, sockets)
}

func (p *Probe) anyWatched(sockets map[int]uint64) bool {
	for _, ino := range sockets {
		if p.inodes[ino] {
			return true
		}
	}
	return false
}

// fds maps the process's socket fds to their inodes and lists its epoll fds.
func (p *Probe) fds(pid int) (sockets map[int]uint64, epolls []int) {
	dir := fmt.Sprintf("%s/%d/fd", procRoot, pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil
	}
	sockets = map[int]uint64{}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		switch {
		case strings.HasPrefix(target, "socket:["):
			if ino, err := strconv.ParseUint(strings.Trim(target[len("socket:"):], "[]"), 10, 64); err == nil {
				sockets[fd] = ino
			}
		case target == "anon_inode:[eventpoll]":
			epolls = append(epolls, fd)
		}
	}
	return sockets, epolls
}

// epollWatches reports whether the epoll set has a watched listener
// registered for input.
func (p *Probe) epollWatches(pid, epfd int) bool {
	for _, t := range p.epollTargets(pid, epfd) {
		if t.events&unix.EPOLLIN != 0 {
			return true
		}
	}
	return false
}

// epollTarget is one registration of a watched listener in an epoll set.
type epollTarget struct {
	fd     int // the registered fd number, in the owning process
	ino    uint64
	events uint32
}

// epollTargets reads the epoll set's registrations of watched listeners
// from fdinfo, one line per target:
// "tfd: 7 events: 19 data: ... pos:0 ino:1a2b sdev:8".
func (p *Probe) epollTargets(pid, epfd int) []epollTarget {
	data, err := os.ReadFile(fmt.Sprintf("%s/%d/fdinfo/%d", procRoot, pid, epfd))
	if err != nil {
		return nil
	}
	var targets []epollTarget
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if t, ok := parseEpollTarget(sc.Text()); ok && p.inodes[t.ino] {
			targets = append(targets, t)
		}
	}
	return targets
}

func parseEpollTarget(line string) (t epollTarget, ok bool) {
	if !strings.HasPrefix(line, "tfd:") {
		return t, false
	}
	fields := strings.Fields(line)
	var haveFD, haveIno, haveEvents bool
	for i, f := range fields {
		switch {
		case f == "tfd:" && i+1 < len(fields):
			fd, err := strconv.Atoi(fields[i+1])
			t.fd, haveFD = fd, err == nil
		case f == "events:" && i+1 < len(fields):
			e, err := strconv.ParseUint(fields[i+1], 16, 32)
			t.events, haveEvents = uint32(e), err == nil
		case strings.HasPrefix(f, "ino:"):
			v, err := strconv.ParseUint(f[len("ino:"):], 16, 64)
			t.ino, haveIno = v, err == nil
		}
	}
	return t, haveFD && haveIno && haveEvents
}

// Registration is a watched listener registered in an epoll set of a
// worker's process: Pid's fd EpollFD watches its fd FD, the listener with
// socket inode Inode.
type Registration struct {
	Pid, EpollFD, FD int
	Inode            uint64
}

// Registrations lists every epoll registration of a watched listener in
// root's process tree.
func (p *Probe) Registrations(root int) []Registration {
	var regs []Registration
	for _, pid := range p.tree(root) {
		_, epolls := p.fds(pid)
		for _, epfd := range epolls {
			for _, t := range p.epollTargets(pid, epfd) {
				regs = append(regs, Registration{Pid: pid, EpollFD: epfd, FD: t.fd, Inode: t.ino})
			}
		}
	}
	return regs
}

// threadBlockedOnListener looks at every thread's current system call for
// accept, poll or select on a watched listener.
func (p *Probe) threadBlockedOnListener(pid int, sockets map[int]uint64) bool {
	for _, t := range taskFiles(pid, "syscall") {
		data, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		call, ok := parseSyscall(string(data))
		if ok && p.callWaitsOnListener(pid, call, sockets) {
			return true
		}
	}
	return false
}

// syscallState is one line of /proc/PID/task/TID/syscall: the number of the
// system call the thread is blocked in and its arguments.
type syscallState struct {
	nr   int64
	args [6]uint64
}

func parseSyscall(line string) (syscallState, bool) {
	fields := strings.Fields(line)
	if len(fields) < 7 {
		return syscallState{}, false // "running", or "-1 sp pc" outside a syscall
	}
	var s syscallState
	nr, err := strconv.ParseInt(fields[0], 10, 64)
	if err != nil || nr < 0 {
		return syscallState{}, false
	}
	s.nr = nr
	for i := range s.args {
		v, err := strconv.ParseUint(strings.TrimPrefix(fields[i+1], "0x"), 16, 64)
		if err != nil {
			return syscallState{}, false
		}
		s.args[i] = v
	}
	return s, true
}

func (p *Probe) callWaitsOnListener(pid int, call syscallState, sockets map[int]uint64) bool {
	switch kindOf(call.nr) {
	case acceptCall:
		return p.inodes[sockets[int(call.args[0])]]
	case pollCall:
		return p.pollWatches(pid, call.args[0], call.args[1], sockets)
	case selectCall:
		return p.selectWatches(pid, int(call.args[0]), call.args[1], sockets)
	}
	return false
}

type callKind int

const (
	otherCall callKind = iota
	acceptCall
	pollCall   // poll, ppoll: (struct pollfd *fds, nfds_t nfds, ...)
	selectCall // select, pselect6: (int nfds, fd_set *readfds, ...)
)

// pollWatches reads the pollfd array (int fd; short events; short revents)
// from the process's memory.
func (p *Probe) pollWatches(pid int, addr, n uint64, sockets map[int]uint64) bool {
	if n == 0 || n > maxWatchedFDs {
		return false
	}
	buf, ok := p.readMemory(pid, addr, int(n)*8)
	if !ok {
		return false
	}
	for i := 0; i+8 <= len(buf); i += 8 {
		fd := int32(binary.NativeEndian.Uint32(buf[i:]))
		events := binary.NativeEndian.Uint16(buf[i+4:])
		if fd >= 0 && events&unix.POLLIN != 0 && p.inodes[sockets[int(fd)]] {
			return true
		}
	}
	return false
}

// selectWatches reads the read fd_set (a bit array of longs) from the
// process's memory.
func (p *Probe) selectWatches(pid, nfds int, readfds uint64, sockets map[int]uint64) bool {
	if readfds == 0 || nfds <= 0 || nfds > maxWatchedFDs {
		return false
	}
	buf, ok := p.readMemory(pid, readfds, (nfds+63)/64*8)
	if !ok {
		return false
	}
	for fd, ino := range sockets {
		if fd >= nfds || !p.inodes[ino] {
			continue
		}
		if word := binary.NativeEndian.Uint64(buf[fd/64*8:]); word>>(fd%64)&1 != 0 {
			return true
		}
	}
	return false
}

// readMemory reads another process's memory; the master may, because
// workers are its descendants.
func (p *Probe) readMemory(pid int, addr uint64, n int) ([]byte, bool) {
	f, err := os.Open(fmt.Sprintf("%s/%d/mem", procRoot, pid))
	if err != nil {
		return nil, false
	}
	defer f.Close()
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, int64(addr)); err != nil {
		return nil, false
	}
	return buf, true
}

// taskFiles lists the file name of each of pid's threads
// (/proc/PID/task/TID/name), from one read of the task directory; a file
// that vanishes before it is read is the caller's to skip. A probe runs
// every 25 ms for every booting worker, and filepath.Glob would also stat
// each file and match each name against a pattern.
func taskFiles(pid int, name string) []string {
	taskDir := fmt.Sprintf("%s/%d/task", procRoot, pid)
	d, err := os.Open(taskDir)
	if err != nil {
		return nil
	}
	tids, _ := d.Readdirnames(-1)
	d.Close()
	paths := make([]string, len(tids))
	for i, tid := range tids {
		paths[i] = taskDir + "/" + tid + "/" + name
	}
	return paths
}
