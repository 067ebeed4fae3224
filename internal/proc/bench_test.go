package proc_test

// Benchmarks of the master's spawn path: proc.Start with a Spec shaped like
// the one master.workerSpec builds, then reaping the exited worker the way
// the master does (SIGCHLD, then proc.Reap). They run only with -bench:
//
//	go test -run='^$' -bench=. -count=10 ./internal/proc/

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/baton-pm/baton/internal/listener"
	"github.com/baton-pm/baton/internal/proc"
)

// batonBin is the real baton binary, built once per test process on first
// use: the shim the master re-executes is baton itself, and its start-up
// (Go runtime and package initialisation, then prctl and execve) is most of
// a spawn's cost, so a stand-in binary would measure something else.
var batonBin struct {
	once sync.Once
	dir  string // removed by TestMain
	path string
	err  error
}

func TestMain(m *testing.M) {
	// The test binary is the shim, and the program it execs, for the tests
	// in shim_test.go.
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case proc.ShimArg:
			os.Exit(proc.Shim(os.Args[2:]))
		case listFDsArg:
			os.Exit(listFDs())
		case guardChildArg:
			os.Exit(guardChild())
		case startShellArg:
			os.Exit(startShell(os.Args[2]))
		}
	}
	code := m.Run()
	if batonBin.dir != "" {
		os.RemoveAll(batonBin.dir)
	}
	os.Exit(code)
}

// buildBaton returns the path of a freshly built cmd/baton. It is built
// outside the timed loop, into a directory that lives as long as the test
// process, so -count=N builds it once rather than N times.
func buildBaton(b *testing.B) string {
	b.Helper()
	batonBin.once.Do(func() {
		gobin, err := exec.LookPath("go") // go test puts GOROOT/bin first in PATH
		if err != nil {
			batonBin.err = fmt.Errorf("the go command is needed to build the baton shim: %w", err)
			return
		}
		dir, err := os.MkdirTemp("", "baton-proc-bench-")
		if err != nil {
			batonBin.err = err
			return
		}
		batonBin.dir = dir
		path := filepath.Join(dir, "baton")
		out, err := exec.Command(gobin, "build", "-o", path, "github.com/baton-pm/baton/cmd/baton").CombinedOutput()
		if err != nil {
			batonBin.err = fmt.Errorf("go build ./cmd/baton: %v\n%s", err, out)
			return
		}
		batonBin.path = path
	})
	if batonBin.err != nil {
		b.Fatal(batonBin.err)
	}
	return batonBin.path
}

// BenchmarkStartReap measures one spawn as the master does it, from
// proc.Start to the exit status collected by proc.Reap after SIGCHLD, for a
// worker command (/bin/true) that exits at once:
//
//   - shim=baton: the real path; fork, exec of baton's "_exec" shim, which
//     sets the parent-death signal, checks its master and execs the command.
//   - shim=none: /bin/true is exec'd in the shim's place (it ignores the
//     shim's arguments), the floor of fork+exec+reap through the same API,
//     so the shim's own share is the difference.
//
// workers=4 starts a whole generation before reaping it, as
// generation.fill does; ns/worker is then the cost per worker.
func BenchmarkStartReap(b *testing.B) {
	for _, bc := range []struct {
		shim    string
		workers int
	}{
		{"none", 1},
		{"baton", 1},
		{"baton", 4},
	} {
		b.Run(fmt.Sprintf("shim=%s/workers=%d", bc.shim, bc.workers), func(b *testing.B) {
			shim := "/bin/true"
			if bc.shim == "baton" {
				shim = buildBaton(b)
			}
			benchStartReap(b, shim, bc.workers)
		})
	}
}

func benchStartReap(b *testing.B, shim string, workers int) {
	b.ReportAllocs()
	// Pdeathsig is tied to the forking thread, so the master forks from a
	// locked one; do the same so a thread exit can never kill a child.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	// One real listener, passed as fd 3 with LISTEN_FDS, as the master
	// passes its bound sockets.
	ls, err := listener.Open([]listener.Spec{{Name: "http", Network: "tcp", Address: "127.0.0.1:0", Backlog: 128}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { listener.CloseAll(ls) })

	// Set up before the first child exists, so no SIGCHLD is missed; the
	// channel holds one pending signal, and each one is answered by
	// reaping every exited child, as the master's loop does.
	sigchld := make(chan os.Signal, 1)
	signal.Notify(sigchld, syscall.SIGCHLD)
	b.Cleanup(func() { signal.Stop(sigchld) })

	spec := proc.Spec{
		Shim: shim,
		Path: "/bin/true",
		Args: []string{"true"},
		// The environment workerEnv builds: the master's own plus the
		// worker's variables.
		Env: append(os.Environ(),
			"LISTEN_FDS=1",
			"LISTEN_FDNAMES=http",
			"NOTIFY_SOCKET=@baton-notify-bench",
			"BATON_WORKER_ID=1",
			"BATON_GENERATION=1",
			proc.MasterPidEnv+"="+strconv.Itoa(os.Getpid()),
		),
		Listeners: []int{ls[0].FD()},
		Stdout:    1,
		Stderr:    io.Discard,
	}

	// One timer for every wait: a time.After per iteration would show up
	// in allocs/op although the master has nothing like it.
	timeout := time.NewTimer(time.Hour)
	defer timeout.Stop()
	procs := make(map[int]*proc.Process, workers)

	for b.Loop() {
		for range workers {
			p, err := proc.Start(spec)
			if err != nil {
				b.Fatal(err)
			}
			procs[p.Pid] = p
		}
		timeout.Reset(10 * time.Second)
		for len(procs) > 0 {
			select {
			case <-sigchld:
			case <-timeout.C:
				b.Fatalf("%d workers not reaped within 10s", len(procs))
			}
			for _, e := range proc.Reap() {
				p, ok := procs[e.Pid]
				if !ok {
					continue // not ours; nothing else should be forking here
				}
				delete(procs, e.Pid)
				// Waiting for the stderr tail to see EOF ends the
				// iteration with its pipe and goroutine gone too.
				<-p.Stderr.Wait()
				if !e.Status.Exited() || e.Status.ExitStatus() != 0 {
					b.Fatalf("worker %s; its stderr: %q", proc.Describe(e.Status), p.Stderr.Lines(10, 10))
				}
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*workers), "ns/worker")
}
