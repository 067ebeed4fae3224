package listener

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// holdInChild starts `sleep` holding ln's socket (as its fd 3), with env
// added to a clean environment, and closes the test's own copies, so the
// child is the socket's only holder, like a worker that outlived its
// master. It returns the child's pid.
func holdInChild(t *testing.T, ln *net.TCPListener, env ...string) int {
	t.Helper()
	f, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sleep", "300")
	cmd.Env = append(envWithoutBaton(), env...)
	cmd.ExtraFiles = []*os.File{f}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	f.Close()
	ln.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd.Process.Pid
}

func envWithoutBaton() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BATON_") {
			env = append(env, kv)
		}
	}
	return env
}

func listen(t *testing.T, addr string) (*net.TCPListener, int) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener), ln.Addr().(*net.TCPAddr).Port
}

// gonePid is the pid of a process that has exited and been reaped.
func gonePid(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

// bindError opens addr, which must fail, and returns the error text.
func bindError(t *testing.T, addr string) string {
	t.Helper()
	start := time.Now()
	ls, err := Open([]Spec{{Name: "again", Network: "tcp", Address: addr, Backlog: 16}})
	if err == nil {
		CloseAll(ls)
		t.Fatalf("binding %s succeeded; it is held", addr)
	}
	if d := time.Since(start); d > holderScanBudget+time.Second {
		t.Errorf("the failed bind took %v; the /proc scan is bounded by %v", d, holderScanBudget)
	}
	t.Logf("error: %v", err)
	return err.Error()
}

func TestPortHeldByLeftoverWorkersNamesThem(t *testing.T) {
	ln, port := listen(t, "127.0.0.1:0")
	f, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	master := gonePid(t)
	// Two workers of one dead master share the socket, as a worker's
	// forked children do.
	env := func(id string) []string {
		return []string{"BATON_WORKER_ID=" + id, "BATON_GENERATION=1", fmt.Sprintf("BATON_MASTER_PID=%d", master)}
	}
	second, err := net.FileListener(f)
	if err != nil {
		t.Fatal(err)
	}
	pids := []int{holdInChild(t, ln, env("1")...), holdInChild(t, second.(*net.TCPListener), env("2")...)}
	f.Close()
	slices.Sort(pids)

	addr := fmt.Sprintf("127.0.0.1:%d", port)
	got := bindError(t, addr)
	want := fmt.Sprintf("bind %s: address already in use: held by pid %d (sleep 300) and pid %d (sleep 300), "+
		"leftover baton workers (BATON_WORKER_ID=1 and 2, generation 1, started by master %d, which is gone); "+
		"stop them (kill %d %d) or wait for them to exit", addr, pids[0], pids[1], master, pids[0], pids[1])
	if got != want {
		t.Fatalf("error:\n got %s\nwant %s", got, want)
	}
}

func TestPortHeldByOneLeftoverWorker(t *testing.T) {
	ln, port := listen(t, "127.0.0.1:0")
	master := gonePid(t)
	pid := holdInChild(t, ln, "BATON_WORKER_ID=3", "BATON_GENERATION=7", fmt.Sprintf("BATON_MASTER_PID=%d", master))
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	want := fmt.Sprintf("bind %s: address already in use: held by pid %d (sleep 300), a leftover baton worker "+
		"(BATON_WORKER_ID=3, generation 7, started by master %d, which is gone); stop it (kill %d) or wait for it to exit",
		addr, pid, master, pid)
	if got := bindError(t, addr); got != want {
		t.Fatalf("error:\n got %s\nwant %s", got, want)
	}
}

func TestPortHeldByAnotherProgramSaysNotBaton(t *testing.T) {
	ln, port := listen(t, "127.0.0.1:0")
	pid := holdInChild(t, ln)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	want := fmt.Sprintf("bind %s: address already in use: held by pid %d (sleep 300), not a baton worker", addr, pid)
	if got := bindError(t, addr); got != want {
		t.Fatalf("error:\n got %s\nwant %s", got, want)
	}
}

func TestPortHeldByWorkerOfRunningMaster(t *testing.T) {
	// The test process plays the master: it started before the worker and
	// still runs.
	ln, port := listen(t, "127.0.0.1:0")
	pid := holdInChild(t, ln, "BATON_WORKER_ID=1", "BATON_GENERATION=2", fmt.Sprintf("BATON_MASTER_PID=%d", os.Getpid()))
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	want := fmt.Sprintf("bind %s: address already in use: held by pid %d (sleep 300), a baton worker "+
		"(BATON_WORKER_ID=1, generation 2) of master %d, which still runs; "+
		"a baton already serves this address: stop it first (kill -TERM %d) or bind another address",
		addr, pid, os.Getpid(), os.Getpid())
	if got := bindError(t, addr); got != want {
		t.Fatalf("error:\n got %s\nwant %s", got, want)
	}
}

func TestPortHolderFoundAcrossAddresses(t *testing.T) {
	for _, tc := range []struct{ hold, bind string }{
		{"0.0.0.0:0", "127.0.0.1"}, // a wildcard blocks a specific address
		{"127.0.0.1:0", "0.0.0.0"}, // and a specific address a wildcard
		{"[::]:0", "127.0.0.1"},    // Go's "[::]" is dual-stack
		{"[::1]:0", "::1"},
		{"[::1]:0", "::"},
	} {
		t.Run(tc.hold+"/"+tc.bind, func(t *testing.T) {
			ln, port := listen(t, tc.hold)
			pid := holdInChild(t, ln, "BATON_WORKER_ID=1")
			got := bindError(t, net.JoinHostPort(tc.bind, fmt.Sprint(port)))
			if !strings.Contains(got, fmt.Sprintf("held by pid %d (sleep 300), a leftover baton worker (BATON_WORKER_ID=1)", pid)) {
				t.Fatalf("error does not name pid %d as a leftover worker: %s", pid, got)
			}
		})
	}
}

// The kernel's /proc/net/tcp{,6} must be parsed in its own byte order:
// the inode of a real listening socket is found at its real address.
func TestListenInodesFindsARealSocket(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		ln, port := listen(t, addr)
		f, err := ln.File()
		if err != nil {
			t.Fatal(err)
		}
		var st syscall.Stat_t
		if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
			t.Fatal(err)
		}
		f.Close()
		ip := ln.Addr().(*net.TCPAddr).IP
		inodes, _, err := listenInodes(ip, port, time.Now().Add(time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		if !inodes[st.Ino] || len(inodes) != 1 {
			t.Errorf("listenInodes(%s) = %v, want just the socket's inode %d", ln.Addr(), inodes, st.Ino)
		}
		// Another address of the same port is not blocked by it.
		other := net.ParseIP("127.0.0.2")
		if ip.To4() == nil {
			other = net.ParseIP("fe80::1")
		}
		if inodes, _, _ := listenInodes(other, port, time.Now().Add(time.Minute)); inodes[st.Ino] {
			t.Errorf("a listener on %s was reported as blocking %s", ln.Addr(), other)
		}
	}
}

func TestParseProcAddr(t *testing.T) {
	for _, tc := range []struct {
		in   string
		ip   string
		port int
	}{
		{"0100007F:1F40", "127.0.0.1", 8000},
		{"00000000:0050", "0.0.0.0", 80},
		{"00000000000000000000000001000000:1F90", "::1", 8080},
		{"00000000000000000000000000000000:0016", "::", 22},
		{"0000000000000000FFFF00000100007F:1F40", "127.0.0.1", 8000}, // v4-mapped
		{"B80D0120000000000000000001000000:01BB", "2001:db8::1", 443},
	} {
		ip, port, ok := parseProcAddr(hostOrder(tc.in))
		if !ok || !ip.Equal(net.ParseIP(tc.ip)) || port != tc.port {
			t.Errorf("parseProcAddr(%q) = %v, %d, %v; want %s, %d", tc.in, ip, port, ok, tc.ip, tc.port)
		}
	}
	for _, bad := range []string{"", "0100007F", "0100007G:1F40", "01007F:1F40", "0100007F:10000"} {
		if _, _, ok := parseProcAddr(bad); ok {
			t.Errorf("parseProcAddr(%q) accepted", bad)
		}
	}
}

// hostOrder turns a sample line written on a little-endian host (as the
// kernel writes each 32-bit word of an address in the host's order) into
// this host's.
func hostOrder(s string) string {
	if binary.NativeEndian.Uint16([]byte{1, 0}) == 1 {
		return s
	}
	addr, port, _ := strings.Cut(s, ":")
	var b strings.Builder
	for i := 0; i+8 <= len(addr); i += 8 {
		w := addr[i : i+8]
		b.WriteString(w[6:8] + w[4:6] + w[2:4] + w[0:2])
	}
	return b.String() + ":" + port
}

func TestBlocks(t *testing.T) {
	for _, tc := range []struct {
		local, target string
		want          bool
	}{
		{"127.0.0.1", "127.0.0.1", true},
		{"0.0.0.0", "127.0.0.1", true},
		{"127.0.0.1", "0.0.0.0", true},
		{"127.0.0.2", "127.0.0.1", false},
		{"::", "127.0.0.1", true}, // dual-stack, unless IPV6_V6ONLY
		{"::", "0.0.0.0", true},
		{"::1", "127.0.0.1", false},
		{"::1", "0.0.0.0", false},
		{"0.0.0.0", "::", false}, // baton's IPv6 sockets are IPV6_V6ONLY
		{"::", "::1", true},
		{"::1", "::", true},
		{"::1", "::2", false},
		{"::ffff:127.0.0.1", "127.0.0.1", true},
	} {
		if got := blocks(net.ParseIP(tc.local), net.ParseIP(tc.target)); got != tc.want {
			t.Errorf("blocks(%s, %s) = %v, want %v", tc.local, tc.target, got, tc.want)
		}
	}
}

func TestDescribeHolders(t *testing.T) {
	worker := func(pid int, id, gen string, master int, alive bool) holder {
		return holder{pid: pid, cmd: "python3 srv.py", workerID: id, generation: gen, masterPid: master, masterAlive: alive}
	}
	many := []holder{}
	for i := range 6 {
		many = append(many, worker(100+i, "1", "4", 90, false))
	}
	for _, tc := range []struct {
		name string
		scan holderScan
		want string
	}{
		{
			name: "the issue's example",
			scan: holderScan{sockets: 1, holders: []holder{worker(4242, "1", "1", 4200, false), worker(4243, "2", "1", 4200, false)}},
			want: ": held by pid 4242 (python3 srv.py) and pid 4243 (python3 srv.py), leftover baton workers " +
				"(BATON_WORKER_ID=1 and 2, generation 1, started by master 4200, which is gone); stop them (kill 4242 4243) or wait for them to exit",
		},
		{
			name: "a non-baton holder",
			scan: holderScan{sockets: 1, holders: []holder{{pid: 99, cmd: "nginx: master process"}}},
			want: ": held by pid 99 (nginx: master process), not a baton worker",
		},
		{
			name: "gunicorn's arbiter and its forked workers share one slot",
			scan: holderScan{sockets: 1, holders: many},
			want: ": held by pid 100 (python3 srv.py), pid 101 (python3 srv.py), pid 102 (python3 srv.py), pid 103 (python3 srv.py) and 2 more, " +
				"leftover baton workers (BATON_WORKER_ID=1, generation 4, started by master 90, which is gone); " +
				"stop them (kill 100 101 102 103 104 105) or wait for them to exit",
		},
		{
			name: "a running baton: its master and a worker",
			scan: holderScan{sockets: 1, holders: []holder{
				{pid: 50, cmd: "baton run -b 127.0.0.1:8000 -- python3 srv.py", isMaster: true},
				worker(51, "10", "2", 50, true),
			}},
			want: ": held by pid 51 (python3 srv.py), a baton worker (BATON_WORKER_ID=10, generation 2) of master 50, which still runs; " +
				"pid 50 (baton run -b 127.0.0.1:8000 -- python3 srv.py), a running baton master; " +
				"a baton already serves this address: stop it first (kill -TERM 50) or bind another address",
		},
		{
			name: "leftovers of two masters, no master pid, and another program",
			scan: holderScan{sockets: 2, cut: true, holders: []holder{
				worker(7, "2", "", 0, false), worker(8, "1", "3", 6, false), worker(9, "2", "5", 6, false), {pid: 10, cmd: "nc -l 8000"},
			}},
			want: ": held by pid 7 (python3 srv.py), a leftover baton worker (BATON_WORKER_ID=2); " +
				"pid 8 (python3 srv.py) and pid 9 (python3 srv.py), leftover baton workers (BATON_WORKER_ID=1 and 2, generations 3 and 5, started by master 6, which is gone); " +
				"pid 10 (nc -l 8000), not a baton worker, and perhaps others (the /proc scan stopped after 5s); stop them (kill 7 8 9) or wait for them to exit",
		},
		{
			name: "this process",
			scan: holderScan{sockets: 1, holders: []holder{{pid: 5, cmd: "baton run", self: true}}},
			want: ": held by pid 5 (baton run), this process itself (another of its listeners covers this address)",
		},
		{
			name: "no socket in /proc/net",
			scan: holderScan{},
			want: " (another process is listening there) (no process holding it was found)",
		},
		{
			name: "the scan ran out of time",
			scan: holderScan{sockets: 1, cut: true},
			want: " (another process is listening there; the /proc scan stopped after 5s before finding it)",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := describeHolders(tc.scan); got != tc.want {
				t.Errorf("describeHolders:\n got %s\nwant %s", got, tc.want)
			}
		})
	}
}

func TestShorten(t *testing.T) {
	long := "python3 -c import socket, time; s = socket.socket(); s.bind(('127.0.0.1', 8000))"
	if got := shorten(long, 20); got != "python3 -c import s…" {
		t.Errorf("shorten = %q", got)
	}
	if got := shorten("a\tb\nc", 20); got != "a b c" {
		t.Errorf("shorten = %q", got)
	}
}
