package main

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/baton-pm/baton/internal/config"
	"github.com/baton-pm/baton/internal/control"
	"github.com/baton-pm/baton/internal/metrics"
)

// The master's file descriptors, in the worst case the start-time check
// plans for. Measured on Linux 6.18: an idle master with one listener, the
// control socket and the metrics endpoint holds 13, and each worker 4 (3
// without a cgroup of its own).
const (
	// fdsFixed: the standard streams, /dev/null, the runtime's epoll and
	// eventfd and cgroup files, the log file, the listening control socket
	// and metrics endpoint, baton's cgroup tree.
	fdsFixed = 16
	// fdsPerWorker: its notify socket, the read end of its stderr pipe,
	// its pidfd and its cgroup's directory.
	fdsPerWorker = 4
	// workerGenerations: a reload's booting generation, the serving one,
	// and the one before it still draining when a queued HUP starts the
	// next reload.
	workerGenerations = 3
	// fdsPerBooting: the /proc files the auto readiness probe reads while
	// a worker boots (one generation boots at a time).
	fdsPerBooting = 2
	// fdsPerMetricsConn: the connection, and the /proc file a scrape's
	// process collector reads meanwhile.
	fdsPerMetricsConn = 2
	// endpointCopies: a reload that moves the control socket or the
	// metrics endpoint serves the old and the new one until the new
	// generation is ready.
	endpointCopies = 2
	// fdsMargin: short-lived descriptors (a fork's exec-error pipe, a
	// worker's stderr pipe while it starts, the config file on a reload,
	// an upgrade's pipe and pidfd, the systemd notify socket, /proc reads
	// for status and memory limits, a reopened log file).
	fdsMargin = 64
)

// fdNeed is the master's worst-case descriptor use, in parts.
type fdNeed struct {
	workers   int // for the workers: workerGenerations of them, plus booting
	endpoints int // for the connections of the control socket and the metrics endpoint
	fixed     int // the master's own, its listeners and the margin
}

func (n fdNeed) total() int { return n.workers + n.endpoints + n.fixed }

// masterFDs is what a master with these workers, listeners and endpoints
// may hold at once. The endpoints' connections are capped (control.MaxConns,
// metrics.MaxConns) precisely so that they fit in this budget: however many
// clients connect, what is left is enough to start every worker.
func masterFDs(workers, listeners int, metricsOn bool) fdNeed {
	endpoints := control.MaxConns
	if metricsOn {
		endpoints += fdsPerMetricsConn * metrics.MaxConns
	}
	return fdNeed{
		workers:   workers * (workerGenerations*fdsPerWorker + fdsPerBooting),
		endpoints: endpointCopies * endpoints,
		fixed:     fdsFixed + listeners + fdsMargin,
	}
}

// checkFileLimit refuses a configuration whose master could run out of file
// descriptors, within soft (RLIMIT_NOFILE's soft limit, as the Go runtime
// raised it: see fileLimit), before a worker's restart fails for it.
func checkFileLimit(cfg *config.Config, soft, hard uint64) error {
	need := masterFDs(cfg.Workers, len(cfg.Binds), cfg.MetricsBind != "")
	if uint64(need.total()) <= soft {
		return nil
	}
	fewer := "no number of workers fits"
	perWorker := need.workers / cfg.Workers
	if room := int(soft) - need.endpoints - need.fixed; room >= perWorker {
		fewer = fmt.Sprintf("or run at most %d workers", room/perWorker)
	}
	return fmt.Errorf("the open-file limit (RLIMIT_NOFILE: soft %d, hard %d) is too low for %d workers: "+
		"the master may need %d file descriptors (%d for the workers of three generations at once, "+
		"%d for the control socket's and metrics endpoint's connections, %d for itself, its listeners and a margin); "+
		"raise the hard limit (ulimit -Hn, LimitNOFILE= in a systemd unit, docker run --ulimit nofile=N:N), %s",
		soft, hard, cfg.Workers, need.total(), need.workers, need.endpoints, need.fixed, fewer)
}

// fileLimit is RLIMIT_NOFILE. baton does not raise it itself: the Go
// runtime already raised the soft limit to the hard one (less one) when
// the process started, and gives every process it starts (the _exec shim,
// a new master) the original soft limit back, which the shim's own
// runtime in turn restores before it execs the worker, so a worker that
// relies on select(2)'s 1024 keeps the limit it would have had without
// baton. Raising it here with setrlimit would turn that restoring off
// (golang/go#46279). ok is false if the limit cannot be read; the start
// never fails for that.
func fileLimit() (soft, hard uint64, ok bool) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0, 0, false
	}
	return lim.Cur, lim.Max, true
}

// checkFileLimitNow checks cfg against the process's limit.
func checkFileLimitNow(cfg *config.Config) error {
	soft, hard, ok := fileLimit()
	if !ok || soft == unix.RLIM_INFINITY {
		return nil
	}
	return checkFileLimit(cfg, soft, hard)
}
