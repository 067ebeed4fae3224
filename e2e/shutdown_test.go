package e2e

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// pending is a request whose connection is open and whose request is sent;
// the reply comes on done.
type pending struct {
	done <-chan requestResult
}

type requestResult struct {
	reply reply
	err   error
	at    time.Time // when the reply (or error) came
}

// sendRequest connects and sends GET path before returning, then reads the
// reply in the background. The caller can then wait for the connection to
// be accepted (waitAccepted) before it signals baton.
func sendRequest(t *testing.T, addr, path string, timeout time.Duration) pending {
	t.Helper()
	network, address := dialTarget(addr)
	conn, err := net.DialTimeout(network, address, timeout)
	if err != nil {
		t.Fatalf("connecting to %s: %v", addr, err)
	}
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: baton-e2e\r\nConnection: close\r\n\r\n", path); err != nil {
		conn.Close()
		t.Fatalf("sending GET %s: %v", path, err)
	}
	done := make(chan requestResult, 1)
	go func() {
		defer conn.Close()
		r, err := readReply(conn)
		done <- requestResult{reply: r, err: err, at: time.Now()}
	}()
	return pending{done: done}
}

func (p pending) wait(t *testing.T, timeout time.Duration) requestResult {
	t.Helper()
	select {
	case r := <-p.done:
		return r
	case <-time.After(timeout):
		t.Fatalf("no reply within %v", timeout)
		return requestResult{}
	}
}

// TestGracefulShutdownFinishesRequests: TERM while slow requests are in
// flight lets every one of them finish with 200, then baton exits 0 and
// leaves nothing behind: no process, the port free, no pidfile.
func TestGracefulShutdownFinishesRequests(t *testing.T) {
	t.Parallel()
	pidfile := filepath.Join(t.TempDir(), "baton.pid")
	b := startBaton(t, "run", "-w", "4", "--pid", pidfile, "--", testworkerBin)
	b.waitListed(t, 4)
	collectWorkers(t, b.Addr(), 4, waitTimeout)

	const slowMS = 1500
	sent := time.Now()
	var requests []pending
	for range 4 {
		requests = append(requests, sendRequest(t, b.Addr(), fmt.Sprintf("/slow?ms=%d", slowMS), 30*time.Second))
	}
	waitAccepted(t, b.Addr())
	b.signal(t, syscall.SIGTERM)
	r := b.waitLog(t, "shutting down", nil, waitTimeout)
	if r.str("signal") != "TERM" || r.str("graceful") != "true" {
		t.Errorf("shutdown record %s, want signal TERM, graceful true", r)
	}

	for i, p := range requests {
		res := p.wait(t, 30*time.Second)
		if res.err != nil || res.reply.status != http.StatusOK || string(res.reply.body) != "slow done" {
			t.Errorf("slow request %d: %v, status %d %q; want 200 slow done", i, res.err, res.reply.status, res.reply.body)
		} else if took := res.at.Sub(sent); took < slowMS*time.Millisecond {
			t.Errorf("slow request %d answered after %v, before its %dms", i, took, slowMS)
		}
	}
	if code := b.waitExit(t, exitTimeout); code != 0 {
		t.Errorf("exit code %d after TERM, want 0", code)
	}
	b.waitLog(t, "shutdown complete", nil, waitTimeout)
	for _, r := range b.logs("worker exited", nil) {
		if r.str("expected") != "true" || r.str("status") != "exit status 0" {
			t.Errorf("during a graceful shutdown: %s, want exit status 0, expected true", r)
		}
	}
	b.assertNothingLeft(t)
	if !portFree(b.Addr()) {
		t.Errorf("port %s still in use after baton exited", b.Addr())
	}
	if _, err := os.Stat(pidfile); !os.IsNotExist(err) {
		t.Errorf("pidfile %s still there after shutdown (err %v)", pidfile, err)
	}
}

// TestGracefulTimeout: workers that do not stop on TERM are killed once
// graceful_timeout has passed, and so is whatever they started in their
// process group; baton still exits 0.
func TestGracefulTimeout(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		flags      []string
		workerArgs []string
		// TERM to exit: at least the graceful timeout when workers wait
		// for it, at most maxTook (default 10s).
		minTook, maxTook time.Duration
		status           string // how the workers end
	}{
		{name: "ignore-term", workerArgs: []string{"-ignore-term"}, minTook: 900 * time.Millisecond, status: "killed by signal KILL"},
		{name: "spawn-child", workerArgs: []string{"-spawn-child"}, status: "exit status 0"},
		{name: "ignore-term with child", workerArgs: []string{"-ignore-term", "-spawn-child"}, minTook: 900 * time.Millisecond, status: "killed by signal KILL"},
		// The test worker exits 0 at once on SIGINT.
		{name: "stop-signal INT", flags: []string{"--stop-signal", "INT"}, workerArgs: []string{"-ignore-term"}, maxTook: 900 * time.Millisecond, status: "exit status 0"},
	} {
		if tc.maxTook == 0 {
			tc.maxTook = 10 * time.Second
		}
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			args := slices.Concat([]string{"run", "-w", "2", "--graceful-timeout", "1s"}, tc.flags, []string{"--", testworkerBin}, tc.workerArgs)
			b := startBaton(t, args...)
			b.waitListed(t, 2)
			workers := collectWorkers(t, b.Addr(), 2, waitTimeout)
			var watched []procStat
			for pid, w := range workers {
				watched = append(watched, statOf(t, pid))
				if strings.Contains(strings.Join(tc.workerArgs, " "), "-spawn-child") {
					child := statOf(t, w.ChildPID)
					if child.pgrp != pid {
						t.Errorf("worker %d's child %d is in group %d, not the worker's", pid, child.pid, child.pgrp)
					}
					watched = append(watched, child)
				}
			}

			start := time.Now()
			b.signal(t, syscall.SIGTERM)
			if code := b.waitExit(t, exitTimeout); code != 0 {
				t.Errorf("exit code %d after TERM, want 0", code)
			}
			took := time.Since(start)
			t.Logf("TERM to exit: %v", took)
			if took < tc.minTook || took > tc.maxTook {
				t.Errorf("TERM to exit took %v, want between %v and %v (graceful timeout 1s)", took, tc.minTook, tc.maxTook)
			}
			for _, r := range b.logs("worker exited", nil) {
				if r.str("status") != tc.status {
					t.Errorf("worker exit %s, want status %q", r, tc.status)
				}
			}
			if left := waitProcsGone(watched, 5*time.Second); len(left) > 0 {
				t.Errorf("workers or their children alive after baton exited:\n%s", describeProcs(left))
			}
			b.assertNothingLeft(t)
		})
	}
}

// TestQuickShutdown: INT and QUIT stop at once, even with a long request in
// flight, and kill workers that ignore SIGINT within a couple of seconds.
func TestQuickShutdown(t *testing.T) {
	t.Parallel()
	// A worker that ignores INT and TERM (sleep inherits the ignored
	// dispositions), so only SIGKILL stops it.
	stubborn := []string{"/bin/sh", "-c", `trap "" INT TERM; sleep 3600`}
	for _, tc := range []struct {
		name    string
		sig     syscall.Signal
		command []string
	}{
		{"QUIT", syscall.SIGQUIT, []string{testworkerBin}},
		{"INT", syscall.SIGINT, []string{testworkerBin}},
		{"QUIT to workers ignoring INT", syscall.SIGQUIT, stubborn},
		{"INT to workers ignoring INT", syscall.SIGINT, stubborn},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pidfile := filepath.Join(t.TempDir(), "baton.pid")
			b := startBaton(t, append([]string{"run", "-w", "2", "--pid", pidfile, "--"}, tc.command...)...)
			b.waitListed(t, 2)
			var slow *pending
			if tc.command[0] == testworkerBin {
				collectWorkers(t, b.Addr(), 2, waitTimeout)
				p := sendRequest(t, b.Addr(), "/slow?ms=30000", 40*time.Second)
				slow = &p
				waitAccepted(t, b.Addr())
			} else {
				// Wait until sh has set its traps and started sleep.
				waitFor(t, waitTimeout, "the workers to start sleep", func() bool {
					sleeping := 0
					for _, pid := range descendants(b.Pid) {
						if strings.HasPrefix(cmdline(pid), "sleep ") {
							sleeping++
						}
					}
					return sleeping == 2
				})
			}

			start := time.Now()
			b.signal(t, tc.sig)
			code := b.waitExit(t, 10*time.Second)
			took := time.Since(start)
			t.Logf("signal to exit: %v", took)
			if code != 0 {
				t.Errorf("exit code %d, want 0", code)
			}
			sigName := strings.Fields(tc.name)[0]
			r := b.waitLog(t, "shutting down", nil, waitTimeout)
			if r.str("signal") != sigName || r.str("graceful") != "false" {
				t.Errorf("shutdown record %s, want signal %s, graceful false", r, sigName)
			}
			if slow != nil {
				if res := slow.wait(t, 10*time.Second); res.err == nil && res.reply.status == http.StatusOK {
					t.Errorf("the 30s request completed (%q) though baton stopped after %v", res.reply.body, took)
				}
			}
			b.assertNothingLeft(t)
			if _, err := os.Stat(pidfile); !os.IsNotExist(err) {
				t.Errorf("pidfile still there after a quick shutdown (err %v)", err)
			}
			if !portFree(b.Addr()) {
				t.Errorf("port %s still in use after baton exited", b.Addr())
			}
		})
	}
}

// TestKillMasterKillsWorkers: kill -9 of the master takes every worker
// with it, so nothing holds the port.
func TestKillMasterKillsWorkers(t *testing.T) {
	t.Parallel()
	b := startBaton(t, "run", "-w", "3", "--", testworkerBin)
	b.waitListed(t, 3)
	var workers []procStat
	for pid := range collectWorkers(t, b.Addr(), 3, waitTimeout) {
		workers = append(workers, statOf(t, pid))
	}
	b.signal(t, syscall.SIGKILL)
	select {
	case <-b.done:
	case <-time.After(exitTimeout):
		t.Fatal("baton survived SIGKILL")
	}
	if left := waitProcsGone(workers, waitTimeout); len(left) > 0 {
		t.Fatalf("workers alive after kill -9 of the master:\n%s", describeProcs(left))
	}
	waitFor(t, waitTimeout, "port "+b.Addr()+" to be free", func() bool { return portFree(b.Addr()) })
	b.assertNothingLeft(t)
}
