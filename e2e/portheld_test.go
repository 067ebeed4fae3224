package e2e

import (
	"bufio"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// holdPort is a python program that listens on 127.0.0.1 (a free port),
// prints its pid and port, and holds the socket until stdin closes.
const holdPort = `import os, socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
print(os.getpid(), s.getsockname()[1], flush=True)
sys.stdin.read()
`

// startHolder runs holdPort with env added and returns its pid and address.
func startHolder(t *testing.T, env ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(requireTool(t, "python3"), "-c", holdPort)
	cmd.Env = append(cleanEnv(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	})
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- l
	}()
	var pid, port int
	select {
	case l := <-line:
		if _, err := fmt.Sscan(l, &pid, &port); err != nil {
			t.Fatalf("the port holder printed %q: %v", l, err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("the port holder did not say which port it holds")
	}
	return pid, "127.0.0.1:" + strconv.Itoa(port)
}

// TestPortHeldByLeftoverWorkerIsNamed (issue 11): when something holds the
// port, baton run exits 2 naming the pid and saying whether it is a
// leftover baton worker, read from the holder's environment.
func TestPortHeldByLeftoverWorkerIsNamed(t *testing.T) {
	t.Parallel()
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	master := gone.Process.Pid
	for _, tc := range []struct {
		name string
		env  []string
		want func(pid int) []string
	}{
		{
			name: "leftover worker",
			env:  []string{"BATON_WORKER_ID=1", "BATON_GENERATION=1", "BATON_MASTER_PID=" + strconv.Itoa(master)},
			want: func(pid int) []string {
				return []string{
					fmt.Sprintf("held by pid %d (python3", pid),
					fmt.Sprintf("a leftover baton worker (BATON_WORKER_ID=1, generation 1, started by master %d, which is gone); stop it (kill %d) or wait for it to exit", master, pid),
				}
			},
		},
		{
			name: "another program",
			want: func(pid int) []string {
				return []string{fmt.Sprintf("held by pid %d (python3", pid), "), not a baton worker"}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pid, addr := startHolder(t, tc.env...)
			res := runToExit(t, batonSpec{args: []string{"run", "-b", addr, "--cgroup", "off", "--", testworkerBin}})
			if res.code != 2 {
				t.Errorf("exit code %d, want 2", res.code)
			}
			t.Logf("stderr: %s", res.stderr)
			want := append(tc.want(pid), "bind "+addr+": address already in use: ")
			for _, phrase := range want {
				if !strings.Contains(res.stderr, phrase) {
					t.Errorf("stderr does not say %q:\n%s", phrase, res.stderr)
				}
			}
			if n := len(res.b.logs("worker started", nil)); n > 0 {
				t.Errorf("%d workers started though the port is held", n)
			}
		})
	}
}

// TestKilledMastersGrandchildIsNamed is issue 11 itself: a worker's child
// (here sleep under sh, which exits with the killed master) outlives kill -9
// of the master and keeps the listener; the next baton run on that port
// names it as a leftover of that master, and killing what it names frees
// the port.
func TestKilledMastersGrandchildIsNamed(t *testing.T) {
	t.Parallel()
	// Without cgroups (with them, the next master reclaims the leftovers:
	// TestRestartAfterKill9ReclaimsTheLeftoversWithCgroups).
	b := startBaton(t, "run", "-w", "1", "--cgroup", "off", "--", "/bin/sh", "-c", "sleep 3600; true")
	addr := b.Addr()
	b.waitLogs(t, "worker started", nil, 1, waitTimeout)
	waitFor(t, waitTimeout, "the worker to start sleep", func() bool {
		for _, pid := range descendants(b.Pid) {
			if strings.HasPrefix(cmdline(pid), "sleep ") {
				return true
			}
		}
		return false
	})
	b.signal(t, syscall.SIGKILL)
	select {
	case <-b.done:
	case <-time.After(exitTimeout):
		t.Fatal("baton survived SIGKILL")
	}

	res := runToExit(t, batonSpec{args: []string{"run", "-b", addr, "--cgroup", "off", "--", testworkerBin}})
	if res.code != 2 {
		t.Errorf("exit code %d, want 2", res.code)
	}
	t.Logf("stderr: %s", res.stderr)
	m := regexp.MustCompile(`held by pid (\d+) \(sleep 3600\), a leftover baton worker \(BATON_WORKER_ID=1, generation \d+, started by master (\d+), which is gone\); stop it \(kill (\d+)\)`).
		FindStringSubmatch(res.stderr)
	if m == nil {
		t.Fatalf("stderr does not name the sleep as a leftover worker of the killed master:\n%s", res.stderr)
	}
	if m[2] != strconv.Itoa(b.Pid) || m[1] != m[3] {
		t.Errorf("named master %s (want %d) and kill %s (want %s)", m[2], b.Pid, m[3], m[1])
	}
	// Do what the message says; the port is then free.
	leftover, _ := strconv.Atoi(m[1])
	if err := syscall.Kill(leftover, syscall.SIGKILL); err != nil {
		t.Fatalf("kill %d: %v", leftover, err)
	}
	waitFor(t, waitTimeout, "port "+addr+" to be free", func() bool { return portFree(addr) })
}
