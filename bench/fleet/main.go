// Command fleet is baton's fleet rollout, tested: three hosts, each a
// network namespace running one baton with two uvicorn workers, behind
// Debian's HAProxy, which health-checks each host's /readyz and neither
// retries nor redispatches a failed request. Under a constant load of new
// connections through HAProxy it restarts, reloads and upgrades the hosts
// one after another and counts every failed request per phase. Its first
// phase restarts the hosts as they were started, without shutdown_delay, to
// show what the delay saves; every later phase runs with the delay and must
// not fail a single request.
//
// examples/fleet/run builds baton and runs this as root; see the README's
// "Fleets behind a load balancer". It exits 0 when the delay phases lost
// nothing, 1 when a request failed there or a step did not happen, 2 when
// it could not run (not root, a tool missing, bad flags).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

// config is what the command line chooses.
type config struct {
	baton   string        // the baton the hosts start with
	batonV2 string        // the baton the upgrade phase installs
	appDir  string        // the ASGI app (examples/fleet)
	dir     string        // working directory: binaries, configs, logs, sockets
	rate    int           // requests per second through HAProxy
	delay   time.Duration // shutdown_delay after the first phase; 0: never set
	inter   time.Duration // HAProxy's check interval (fall and rise are 2)
	report  string        // also write the markdown report here
	cleanup bool          // only remove what an earlier run left
}

// Exit codes.
const (
	exitOK      = 0
	exitFailed  = 1 // a request failed with the delay, or a step did not happen
	exitCantRun = 2 // not root, a tool missing, bad flags, the rig did not come up
)

func main() {
	os.Exit(run())
}

func run() int {
	cfg, err := parseFlags()
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleet:", err)
		return exitCantRun
	}
	if err := preflight(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "fleet: refusing to run:", err)
		return exitCantRun
	}
	unlock, err := lockRig()
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleet:", err)
		return exitCantRun
	}
	defer unlock()
	if cfg.cleanup {
		if err := removeRig(cfg.dir); err != nil {
			fmt.Fprintln(os.Stderr, "fleet: cleanup:", err)
			return exitFailed
		}
		return exitOK
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	r, err := newRollout(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleet:", err)
		return exitCantRun
	}
	code := r.runAll(ctx)
	if err := r.close(); err != nil {
		fmt.Fprintln(os.Stderr, "fleet: teardown:", err)
		return max(code, exitFailed)
	}
	return code
}

func parseFlags() (config, error) {
	var c config
	flag.StringVar(&c.baton, "baton", "", "baton binary the hosts start with (required)")
	flag.StringVar(&c.batonV2, "baton-v2", "", "baton binary the upgrade phase installs (required; built with another main.version)")
	flag.StringVar(&c.appDir, "app", "examples/fleet", "directory of the ASGI app (app.py)")
	flag.StringVar(&c.dir, "dir", "", "working directory (required; the caller removes it)")
	flag.IntVar(&c.rate, "rate", 200, "requests per second through HAProxy, each on a new connection")
	flag.DurationVar(&c.delay, "shutdown-delay", 3*time.Second, "baton's shutdown_delay for the phases after the first; 0: never set it")
	flag.DurationVar(&c.inter, "check-inter", time.Second, "HAProxy's health check interval (fall 2, rise 2)")
	flag.StringVar(&c.report, "report", "", "also write the markdown report to this file")
	flag.BoolVar(&c.cleanup, "cleanup", false, "remove the namespaces, bridge and processes an earlier run left, then exit")
	flag.Parse()
	if flag.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	if c.dir == "" {
		return c, errors.New("-dir is required")
	}
	if c.cleanup {
		return c, nil
	}
	if c.baton == "" || c.batonV2 == "" {
		return c, errors.New("-baton and -baton-v2 are required")
	}
	if c.rate <= 0 {
		return c, fmt.Errorf("-rate %d: must be > 0", c.rate)
	}
	if c.inter <= 0 {
		return c, fmt.Errorf("-check-inter %s: must be > 0", c.inter)
	}
	// HAProxy needs fall (2) failed checks to take a host out; a delay no
	// longer than that lets requests reach a host that stopped accepting.
	if c.delay != 0 && c.delay <= 2*c.inter {
		return c, fmt.Errorf("-shutdown-delay %s: must be longer than HAProxy's fall × inter (2 × %s), or 0", c.delay, c.inter)
	}
	var err error
	for _, p := range []*string{&c.baton, &c.batonV2, &c.appDir, &c.dir} {
		if *p, err = filepath.Abs(*p); err != nil {
			return c, err
		}
	}
	return c, nil
}

// tools are the programs the rig runs, and the Debian package of each.
var tools = []struct{ name, pkg string }{
	{"ip", "iproute2"},
	{"nsenter", "util-linux"},
	{"haproxy", "haproxy"},
	{"/usr/bin/uvicorn", "uvicorn and python3-uvicorn"},
}

// preflight refuses to run, saying why, when the rig cannot be built here.
func preflight(cfg config) error {
	if os.Geteuid() != 0 {
		return errors.New("must run as root: it creates network namespaces, a bridge and veth pairs")
	}
	for _, t := range tools {
		if _, err := exec.LookPath(t.name); err != nil {
			return fmt.Errorf("%s is missing: install the Debian package %s (scripts/install-test-deps does)", t.name, t.pkg)
		}
	}
	if cfg.cleanup {
		return nil
	}
	for _, f := range []string{cfg.baton, cfg.batonV2, filepath.Join(cfg.appDir, "app.py")} {
		if _, err := os.Stat(f); err != nil {
			return err
		}
	}
	return nil
}

// lockRig makes sure one run at a time owns the rig's fixed names (bridge,
// namespaces, addresses): a second run fails at once instead of tearing
// down the first one's hosts.
func lockRig() (unlock func(), err error) {
	const path = "/run/lock/baton-fleet.lock"
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("another fleet run holds %s (%v): wait for it to finish", path, err)
	}
	return func() { f.Close() }, nil
}
