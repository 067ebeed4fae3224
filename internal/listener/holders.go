package listener

// When a TCP bind fails because the address is in use, the error names the
// processes holding the port, read from /proc: after a master is killed
// with SIGKILL, workers that were not its direct children (a server started
// by a `sh -c` wrapper, gunicorn's forked workers) can survive and keep the
// listening socket, and the operator needs to know which pids to stop.
//
// The listening sockets come from /proc/net/tcp and /proc/net/tcp6, read
// directly: only LISTEN lines matter, the scan must stay bounded, and the
// addresses there are 32-bit words in host byte order (procfs's NetTCP
// assumes a little-endian host and fails on any line it cannot parse). The
// processes, their fds, command lines and environments come from
// prometheus/procfs, as in internal/procinfo.

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

// Variables a master sets in each worker's environment, which every process
// the worker starts inherits (internal/proc.MasterPidEnv names the last;
// a leaf does not import another leaf for a constant).
const (
	workerIDEnv   = "BATON_WORKER_ID"
	generationEnv = "BATON_GENERATION"
	masterPidEnv  = "BATON_MASTER_PID"
)

// holderScanBudget bounds the whole /proc scan: a failed start must not
// hang on a host with very many processes or sockets.
const holderScanBudget = 5 * time.Second

// holderListLimit is how many holders of one kind the message describes
// one by one; the rest are counted.
const holderListLimit = 4

// cmdlineLimit is how much of a holder's command line the message shows.
const cmdlineLimit = 48

// tcpListen is the LISTEN state in /proc/net/tcp's st column.
const tcpListen = 0x0A

// holder is a process holding a listening socket that blocks a bind.
type holder struct {
	pid   int
	cmd   string // shortened command line
	start uint64 // start time in clock ticks since boot, 0 if unknown
	self  bool   // this very process

	// From the environment; workerID is "" for a process baton did not
	// start (directly or through the worker's own children).
	workerID, generation string
	masterPid            int
	masterAlive          bool
	isMaster             bool // the master of other holders, or a process named baton
}

// holderScan is what findHolders saw.
type holderScan struct {
	sockets int // listening sockets in /proc/net/tcp{,6} that block the bind
	holders []holder
	cut     bool // the budget ran out before every process was seen
}

// addrInUse is the message for EADDRINUSE on sa: today's message when /proc
// cannot be read, otherwise the holders and what to do about them.
func addrInUse(sa unix.Sockaddr) error {
	plain := errors.New("address already in use (another process is listening there)")
	ip, port := sockaddrIPPort(sa)
	if ip == nil {
		return plain
	}
	scan, err := findHolders(ip, port, time.Now().Add(holderScanBudget))
	if err != nil {
		return plain
	}
	return errors.New("address already in use" + describeHolders(scan))
}

func sockaddrIPPort(sa unix.Sockaddr) (net.IP, int) {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return net.IP(a.Addr[:]).To16(), a.Port
	case *unix.SockaddrInet6:
		return net.IP(a.Addr[:]), a.Port
	}
	return nil, 0
}

// findHolders finds the processes holding a LISTEN socket that blocks a
// bind to ip:port. It fails only when /proc/net cannot be read at all.
func findHolders(ip net.IP, port int, deadline time.Time) (holderScan, error) {
	var scan holderScan
	inodes, cut, err := listenInodes(ip, port, deadline)
	if err != nil {
		return scan, err
	}
	scan.sockets, scan.cut = len(inodes), cut
	if len(inodes) == 0 {
		return scan, nil
	}
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return scan, err
	}
	procs, err := fs.AllProcs()
	if err != nil {
		return scan, err
	}
	for _, p := range procs {
		if time.Now().After(deadline) {
			scan.cut = true
			break
		}
		// A process that vanished or that this user may not inspect is
		// skipped: its fd directory cannot be read.
		targets, err := p.FileDescriptorTargets()
		if err != nil {
			continue
		}
		for _, target := range targets {
			if inodes[socketInode(target)] {
				scan.holders = append(scan.holders, describeProcess(fs, p))
				break
			}
		}
	}
	slices.SortFunc(scan.holders, func(a, b holder) int { return a.pid - b.pid })
	markMasters(scan.holders)
	return scan, nil
}

// socketInode is N of an fd link "socket:[N]", or 0.
func socketInode(target string) uint64 {
	rest, ok := strings.CutPrefix(target, "socket:[")
	if !ok {
		return 0
	}
	n, _ := strconv.ParseUint(strings.TrimSuffix(rest, "]"), 10, 64)
	return n
}

// listenInodes returns the inodes of the LISTEN sockets in /proc/net/tcp
// and /proc/net/tcp6 that block a bind to ip:port. It fails only when
// neither file can be read (tcp6 is missing when IPv6 is disabled).
func listenInodes(ip net.IP, port int, deadline time.Time) (map[uint64]bool, bool, error) {
	inodes := map[uint64]bool{}
	var cut bool
	var errs []error
	for _, name := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		c, err := readListeners(name, deadline, func(local net.IP, localPort int, inode uint64) {
			if localPort == port && inode != 0 && blocks(local, ip) {
				inodes[inode] = true
			}
		})
		cut = cut || c
		if err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 2 {
		return nil, false, errors.Join(errs...)
	}
	return inodes, cut, nil
}

// readListeners calls found for every LISTEN line of a /proc/net/tcp-style
// file; it stops at the deadline and reports so.
func readListeners(name string, deadline time.Time, found func(net.IP, int, uint64)) (cut bool, err error) {
	f, err := os.Open(name)
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for n := 0; sc.Scan(); n++ {
		if n%1024 == 1023 && time.Now().After(deadline) {
			return true, nil
		}
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 {
			continue
		}
		st, err := strconv.ParseUint(fields[3], 16, 8)
		if err != nil || st != tcpListen {
			continue // the header, or another state
		}
		ip, port, ok := parseProcAddr(fields[1])
		if !ok {
			continue
		}
		inode, err := strconv.ParseUint(fields[9], 10, 64)
		if err != nil {
			continue
		}
		found(ip, port, inode)
	}
	return false, sc.Err()
}

// parseProcAddr parses "0100007F:1F40" from /proc/net/tcp{,6}. The kernel
// prints the address as 32-bit words (one for IPv4, four for IPv6), each
// the network-order bytes loaded as a host-order integer and printed as
// %08X; the port is a plain hex number.
func parseProcAddr(s string) (net.IP, int, bool) {
	hexIP, hexPort, ok := strings.Cut(s, ":")
	if !ok {
		return nil, 0, false
	}
	words, err := hex.DecodeString(hexIP)
	if err != nil || (len(words) != net.IPv4len && len(words) != net.IPv6len) {
		return nil, 0, false
	}
	ip := make(net.IP, len(words))
	for i := 0; i < len(words); i += 4 {
		binary.NativeEndian.PutUint32(ip[i:], binary.BigEndian.Uint32(words[i:]))
	}
	port, err := strconv.ParseUint(hexPort, 16, 16)
	if err != nil {
		return nil, 0, false
	}
	return ip.To16(), int(port), true
}

// blocks reports whether a listener on local (same port) keeps baton from
// binding target. A wildcard on either side overlaps every address of its
// family. baton's IPv4 sockets conflict with an IPv6 "::" listener, which
// is dual-stack unless it set IPV6_V6ONLY (which /proc does not show; such
// a listener is named too, a small over-report); baton's IPv6 sockets are
// IPV6_V6ONLY, so no IPv4 listener blocks them.
func blocks(local, target net.IP) bool {
	local4, target4 := local.To4() != nil, target.To4() != nil
	switch {
	case target4 && !local4:
		return local.Equal(net.IPv6unspecified)
	case !target4 && local4:
		return false
	}
	return local.IsUnspecified() || target.IsUnspecified() || local.Equal(target)
}

// describeProcess reads what the message says about process p.
func describeProcess(fs procfs.FS, p procfs.Proc) holder {
	h := holder{pid: p.PID, self: p.PID == os.Getpid(), cmd: shortCmdline(p)}
	if st, err := p.Stat(); err == nil {
		h.start = st.Starttime
	}
	env, _ := p.Environ()
	for _, kv := range env {
		name, value, _ := strings.Cut(kv, "=")
		switch name {
		case workerIDEnv:
			h.workerID = value
		case generationEnv:
			h.generation = value
		case masterPidEnv:
			h.masterPid, _ = strconv.Atoi(value)
		}
	}
	if h.workerID != "" && h.masterPid > 0 {
		h.masterAlive = masterRuns(fs, h.masterPid, h.start)
	}
	if h.workerID == "" {
		if comm, err := p.Comm(); err == nil && comm == "baton" {
			h.isMaster = true
		}
	}
	return h
}

// masterRuns reports whether pid still runs as the master that started a
// worker at workerStart: a zombie is gone, and a process that started
// after the worker only reuses the dead master's pid.
func masterRuns(fs procfs.FS, pid int, workerStart uint64) bool {
	p, err := fs.Proc(pid)
	if err != nil {
		return false
	}
	st, err := p.Stat()
	if err != nil || st.State == "Z" || st.State == "X" {
		return false
	}
	return workerStart == 0 || st.Starttime <= workerStart
}

// markMasters marks the holders that are the master of other holders.
func markMasters(hs []holder) {
	for i := range hs {
		for _, w := range hs {
			if w.workerID != "" && w.masterPid == hs[i].pid && hs[i].workerID == "" {
				hs[i].isMaster = true
			}
		}
	}
}

// shortCmdline is the start of p's command line: the program's base name
// and its arguments, or [comm] for a process without one.
func shortCmdline(p procfs.Proc) string {
	args, err := p.CmdLine()
	if err != nil || len(args) == 0 || args[0] == "" {
		if comm, err := p.Comm(); err == nil {
			return "[" + comm + "]"
		}
		return "?"
	}
	// A program that rewrote its argv ("nginx: master process ...") has
	// spaces in its first word: keep it whole.
	if !strings.Contains(args[0], " ") {
		args[0] = filepath.Base(args[0])
	}
	return shorten(strings.Join(args, " "), cmdlineLimit)
}

func shorten(s string, limit int) string {
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, strings.TrimSpace(s))
	if r := []rune(s); len(r) > limit {
		return strings.TrimSpace(string(r[:limit-1])) + "…"
	}
	return s
}

// describeHolders is what follows "address already in use" in the error.
func describeHolders(scan holderScan) string {
	budget := fmt.Sprintf("the /proc scan stopped after %v", holderScanBudget)
	if len(scan.holders) == 0 {
		switch {
		case scan.cut:
			return " (another process is listening there; " + budget + " before finding it)"
		case scan.sockets == 0:
			// The holder exited meanwhile, or bound without listening.
			return " (another process is listening there) (no process holding it was found)"
		case os.Geteuid() != 0:
			return " (another process is listening there) (no process holding it was found: it may belong to another user or to another pid namespace)"
		default:
			return " (another process is listening there) (no process holding it was found: it may be in another pid namespace)"
		}
	}

	var self, masters, others []holder
	var leftovers, live map[int][]holder // by master pid
	leftovers, live = map[int][]holder{}, map[int][]holder{}
	for _, h := range scan.holders {
		switch {
		case h.self:
			self = append(self, h)
		case h.workerID != "" && h.masterAlive:
			live[h.masterPid] = append(live[h.masterPid], h)
		case h.workerID != "":
			leftovers[h.masterPid] = append(leftovers[h.masterPid], h)
		case h.isMaster:
			masters = append(masters, h)
		default:
			others = append(others, h)
		}
	}

	var parts []string
	var stopPids, stopMasters []int
	for _, m := range sortedKeys(leftovers) {
		hs := leftovers[m]
		what := "leftover baton workers"
		if len(hs) == 1 {
			what = "a leftover baton worker"
		}
		env := workerEnv(hs)
		if m > 0 {
			env += fmt.Sprintf(", started by master %d, which is gone", m)
		}
		parts = append(parts, fmt.Sprintf("%s, %s (%s)", listHolders(hs), what, env))
		for _, h := range hs {
			stopPids = append(stopPids, h.pid)
		}
	}
	for _, m := range sortedKeys(live) {
		hs := live[m]
		what := "baton workers"
		if len(hs) == 1 {
			what = "a baton worker"
		}
		parts = append(parts, fmt.Sprintf("%s, %s (%s) of master %d, which still runs", listHolders(hs), what, workerEnv(hs), m))
		stopMasters = append(stopMasters, m)
	}
	if len(masters) > 0 {
		what := "running baton masters"
		if len(masters) == 1 {
			what = "a running baton master"
		}
		parts = append(parts, fmt.Sprintf("%s, %s", listHolders(masters), what))
		for _, h := range masters {
			stopMasters = append(stopMasters, h.pid)
		}
	}
	if len(self) > 0 {
		parts = append(parts, listHolders(self)+", this process itself (another of its listeners covers this address)")
	}
	if len(others) > 0 {
		what := "not baton workers"
		if len(others) == 1 {
			what = "not a baton worker"
		}
		parts = append(parts, fmt.Sprintf("%s, %s", listHolders(others), what))
	}

	text := ": held by " + strings.Join(parts, "; ")
	if scan.cut {
		text += ", and perhaps others (" + budget + ")"
	}
	slices.Sort(stopMasters)
	stopMasters = slices.Compact(stopMasters)
	switch {
	case len(stopMasters) > 0:
		text += fmt.Sprintf("; a baton already serves this address: stop it first (kill -TERM %s) or bind another address", joinInts(stopMasters, " "))
	case len(stopPids) == 1:
		text += fmt.Sprintf("; stop it (kill %d) or wait for it to exit", stopPids[0])
	case len(stopPids) > 1:
		text += fmt.Sprintf("; stop them (kill %s) or wait for them to exit", joinInts(stopPids, " "))
	}
	return text
}

// listHolders is "pid 1 (cmd) and pid 2 (cmd)", the first few of hs.
func listHolders(hs []holder) string {
	var items []string
	for i, h := range hs {
		if i == holderListLimit && len(hs) > holderListLimit+1 {
			items = append(items, fmt.Sprintf("%d more", len(hs)-i))
			break
		}
		items = append(items, fmt.Sprintf("pid %d (%s)", h.pid, h.cmd))
	}
	return andList(items)
}

// workerEnv is "BATON_WORKER_ID=1 and 2, generation 1" for hs.
func workerEnv(hs []holder) string {
	var ids, gens []string
	for _, h := range hs {
		ids = append(ids, h.workerID)
		if h.generation != "" {
			gens = append(gens, h.generation)
		}
	}
	ids, gens = numericSet(ids), numericSet(gens)
	text := workerIDEnv + "=" + andList(ids)
	switch len(gens) {
	case 0:
	case 1:
		text += ", generation " + gens[0]
	default:
		text += ", generations " + andList(gens)
	}
	return text
}

// numericSet sorts values as numbers where they are and drops repeats.
func numericSet(values []string) []string {
	slices.SortFunc(values, func(a, b string) int {
		x, errA := strconv.Atoi(a)
		y, errB := strconv.Atoi(b)
		if errA == nil && errB == nil {
			return x - y
		}
		return strings.Compare(a, b)
	})
	return slices.Compact(values)
}

func andList(items []string) string {
	if len(items) <= 1 {
		return strings.Join(items, "")
	}
	return strings.Join(items[:len(items)-1], ", ") + " and " + items[len(items)-1]
}

func joinInts(ns []int, sep string) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, sep)
}

func sortedKeys(m map[int][]holder) []int {
	keys := make([]int, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
