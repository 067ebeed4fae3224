package readiness

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/baton-pm/baton/internal/sockdiag"
)

// A worker that binds a socket of its own instead of using the one it
// inherited (puma with a -b that is not baton's bind) serves where nobody
// sends requests, and its siblings, binding the same address, crash with
// EADDRINUSE. ForeignListeners finds such sockets: TCP sockets in the
// LISTEN state that a process of the worker's tree holds and that are not
// one of baton's listeners.

// tcpListen is the LISTEN state in /proc/net/tcp's st column.
const tcpListen = "0A"

// ForeignListeners returns, for each root, the addresses ("0.0.0.0:9292",
// "[::]:3000") of the TCP sockets its tree listens on that are not the
// watched listeners; roots with none are left out. The listening sockets
// are read once per network namespace. Processes that vanish while being
// read do not count.
func (p *Probe) ForeignListeners(roots []int) map[int][]string {
	found := map[int][]string{}
	tables := map[string]map[uint64]string{} // by network namespace
	for _, root := range roots {
		sockets := p.otherSockets(root)
		if len(sockets) == 0 {
			continue
		}
		ns, _ := os.Readlink(fmt.Sprintf("%s/%d/ns/net", procRoot, root))
		table, ok := tables[ns]
		if !ok {
			table = p.listeningSockets(root, ns)
			tables[ns] = table
		}
		var addrs []string
		for ino := range sockets {
			if addr, ok := table[ino]; ok && !slices.Contains(addrs, addr) {
				addrs = append(addrs, addr)
			}
		}
		if len(addrs) > 0 {
			slices.Sort(addrs)
			found[root] = addrs
		}
	}
	return found
}

// otherSockets are the inodes of the sockets root's tree holds that are
// not watched listeners (connections among them).
func (p *Probe) otherSockets(root int) map[uint64]bool {
	others := map[uint64]bool{}
	for _, pid := range p.tree(root) {
		sockets, _ := p.fds(pid)
		for _, ino := range sockets {
			if !p.inodes[ino] {
				others[ino] = true
			}
		}
	}
	return others
}

// listeningSockets maps the inode of every listening TCP socket of pid's
// network namespace (ns, as /proc/PID/ns/net names it) to its local
// address: from sock_diag when it is this process's namespace (the kernel
// then walks only its listening sockets), else from the namespace's
// /proc/net/tcp and tcp6.
func (p *Probe) listeningSockets(pid int, ns string) map[uint64]string {
	if own, err := os.Readlink(procRoot + "/self/ns/net"); err == nil && own == ns {
		socks, err := listeningViaDiag()
		if err == nil {
			table := make(map[uint64]string, len(socks))
			for _, s := range socks {
				table[uint64(s.Inode)] = s.Src.String()
			}
			return table
		}
		if !p.diagFailed.Swap(true) && p.onDiagFailure != nil {
			p.onDiagFailure(err)
		}
	}
	return procListeningSockets(pid)
}

// listeningViaDiag is sockdiag.Listening; a test makes it fail.
var listeningViaDiag = sockdiag.Listening

// OnSockDiagFailure has f called, once, the first time sock_diag cannot
// be read (a seccomp filter on netlink sockets, say): the listening
// sockets then come from /proc/net/tcp, as correct but slower under many
// connections. f runs on the scanning goroutine.
func (p *Probe) OnSockDiagFailure(f func(error)) { p.onDiagFailure = f }

// procListeningSockets is listeningSockets from /proc/PID/net/tcp{,6}.
func procListeningSockets(pid int) map[uint64]string {
	table := map[uint64]string{}
	for _, name := range []string{"tcp", "tcp6"} {
		f, err := os.Open(fmt.Sprintf("%s/%d/net/%s", procRoot, pid, name))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			// Only listening sockets are made a string of: a busy
			// server's table has thousands of lines, nearly all of them
			// connections, and a scan every second would leave them all
			// as garbage in an otherwise idle master.
			if line := sc.Bytes(); isListening(line) {
				if ino, addr, ok := parseListening(string(line)); ok {
					table[ino] = addr
				}
			}
		}
		f.Close()
	}
	return table
}

// isListening reports whether a line of /proc/net/tcp or tcp6 has the
// LISTEN state in its fourth column ("sl local rem st ...").
func isListening(line []byte) bool {
	col := 0
	for i := 0; i < len(line); {
		for i < len(line) && line[i] == ' ' {
			i++
		}
		start := i
		for i < len(line) && line[i] != ' ' {
			i++
		}
		if start == i {
			return false
		}
		if col == 3 {
			return string(line[start:i]) == tcpListen
		}
		col++
	}
	return false
}

// parseListening reads one line of /proc/net/tcp or tcp6:
// "0: 0100007F:4B5C 00000000:0000 0A ... uid timeout inode ...",
// and returns a listening socket's inode and local address.
func parseListening(line string) (ino uint64, addr string, ok bool) {
	f := strings.Fields(line)
	if len(f) < 10 || f[3] != tcpListen {
		return 0, "", false
	}
	ino, err := strconv.ParseUint(f[9], 10, 64)
	if err != nil {
		return 0, "", false
	}
	host, port, found := strings.Cut(f[1], ":")
	if !found {
		return 0, "", false
	}
	ip, ok := parseProcIP(host)
	n, err := strconv.ParseUint(port, 16, 16)
	if !ok || err != nil {
		return 0, "", false
	}
	return ino, netip.AddrPortFrom(ip, uint16(n)).String(), true
}

// parseProcIP reads an address as /proc/net/tcp writes it: the 32-bit
// words of the address in hex, each in the machine's byte order.
func parseProcIP(s string) (netip.Addr, bool) {
	raw, err := hex.DecodeString(s)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.Addr{}, false
	}
	for i := 0; i < len(raw); i += 4 {
		binary.BigEndian.PutUint32(raw[i:], binary.NativeEndian.Uint32(raw[i:]))
	}
	ip, _ := netip.AddrFromSlice(raw)
	return ip.Unmap(), true
}
