package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// phase is one rolling operation over the whole fleet, and the span of the
// load it is judged on (every request that started in [From, To)).
type phase struct {
	Name  string
	Gate  bool // a failed request in this phase fails the run
	Delay time.Duration
	From  time.Time
	To    time.Time
	Steps []step
}

// step is what happened to one host in a phase.
type step struct {
	Host   string
	Action string
	At     time.Time // when the signal or command was sent
	// A restart's milestones (zero where not reached or not applicable):
	// HAProxy's log saying DOWN, the master's exit, the new master's
	// start, HAProxy's log saying UP again.
	Down, Exited, Started, Up time.Time
	Returned                  time.Time // `baton reload` or `baton upgrade` returned
	Done                      time.Time // the step's check passed (or failed)
	Check                     string    // what the host answered before and after
	Note                      string    // anything else worth knowing (HAProxy's view during a reload)
	Err                       error     // the step did not happen as it should
}

// rollout is the whole run: the rig, the load and what each phase saw.
type rollout struct {
	cfg    config
	binDir string
	hosts  []*host
	lb     *balancer
	load   *loadGen
	t0     time.Time
	phases []*phase
	v2     string // `baton version` of the upgrade's binary
}

// newRollout builds the rig: the network, the hosts (without
// shutdown_delay) and HAProxy, and waits until HAProxy sees every host UP.
// On error it has removed what it built.
func newRollout(ctx context.Context, cfg config) (r *rollout, err error) {
	r = &rollout{cfg: cfg, binDir: filepath.Join(cfg.dir, "bin")}
	defer func() {
		if err != nil {
			err = errors.Join(err, r.close())
		}
	}()
	if left := leftovers(); len(left) > 0 {
		// The lock is ours, so no run owns them: an earlier one was killed.
		fmt.Fprintf(os.Stderr, "fleet: removing what an earlier run left: %s\n", strings.Join(left, ", "))
		if err := removeNet(); err != nil {
			return r, err
		}
	}
	if err := os.MkdirAll(r.binDir, 0o755); err != nil {
		return r, err
	}
	if err := copyFile(cfg.baton, r.batonPath()); err != nil {
		return r, err
	}
	if err := buildNet(ctx); err != nil {
		return r, fmt.Errorf("building the hosts' network: %w", err)
	}
	for i := range numHosts {
		h, err := newHost(i, cfg.dir, r.batonPath())
		if err != nil {
			return r, err
		}
		r.hosts = append(r.hosts, h)
		if err := h.writeConfig(cfg.appDir, 0, cfg.inter); err != nil {
			return r, err
		}
		if err := h.start(); err != nil {
			return r, err
		}
	}
	if r.lb, err = startBalancer(cfg.dir, r.hosts, cfg.inter); err != nil {
		return r, err
	}
	// HAProxy counts a server UP before its first check: wait for each
	// host's own /readyz, then for HAProxy's checks to have passed since.
	var names []string
	for _, h := range r.hosts {
		if err := h.awaitReady(ctx, 90*time.Second); err != nil {
			return r, err
		}
		names = append(names, h.name)
	}
	return r, r.lb.awaitSteadyUp(ctx, 2*cfg.inter, 90*time.Second, names...)
}

func (r *rollout) batonPath() string { return filepath.Join(r.binDir, "baton") }

// runAll runs the load and the phases, prints the report and returns the
// exit code.
func (r *rollout) runAll(ctx context.Context) int {
	const settle = 2 * time.Second // load before the first phase and after the last
	r.load = startLoad(fmt.Sprintf("http://%s:%d/", bridgeIP, lbPort), r.cfg.rate)
	r.t0 = time.Now()
	warm := r.begin("warm-up", true, 0)
	sleepCtx(ctx, settle)
	r.end(warm)

	for _, pl := range r.plans(ctx) {
		if ctx.Err() != nil {
			break
		}
		r.runPhase(ctx, pl)
	}
	if ctx.Err() == nil {
		tail := r.begin("tail", true, r.cfg.delay)
		sleepCtx(ctx, settle)
		r.end(tail)
	}
	samples := r.load.stop()
	r.load = nil

	rep := r.report(samples)
	fmt.Print(rep.text)
	if r.cfg.report != "" {
		if err := os.WriteFile(r.cfg.report, []byte(rep.text), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "fleet:", err)
		}
	}
	if ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, "fleet: interrupted")
		return exitFailed
	}
	if !rep.passed {
		return exitFailed
	}
	return exitOK
}

// plan is one phase to run: a step on every host in turn.
type plan struct {
	name    string
	gate    bool          // a failed request in it fails the run
	delay   time.Duration // the hosts' shutdown_delay during it
	prepare func() error  // before the first host; nil: nothing
	step    func(*host) step
}

// plans are the rollout's phases. The hosts start without shutdown_delay;
// each restart of the first phase brings its host back with the delay
// configured, so every later phase runs with it.
func (r *rollout) plans(ctx context.Context) []plan {
	d := r.cfg.delay
	return []plan{
		{name: "rolling restart, no shutdown_delay", gate: false, step: func(h *host) step {
			if err := h.writeConfig(r.cfg.appDir, d, r.cfg.inter); err != nil {
				return step{Host: h.name, Action: "write baton.toml", Err: err}
			}
			return r.restart(ctx, h, 0)
		}},
		{name: "rolling restart", gate: true, delay: d, step: func(h *host) step { return r.restart(ctx, h, d) }},
		{name: "rolling `baton reload`", gate: true, delay: d, step: func(h *host) step { return r.control(ctx, h, "reload") }},
		{name: "rolling `baton upgrade`", gate: true, delay: d, prepare: func() error { return r.installV2(ctx) },
			step: func(h *host) step { return r.control(ctx, h, "upgrade") }},
	}
}

// runPhase runs one phase, stopping at the first host whose step failed (a
// rollout does not go on past a broken host).
func (r *rollout) runPhase(ctx context.Context, pl plan) {
	p := r.begin(pl.name, pl.gate, pl.delay)
	defer r.end(p)
	if pl.prepare != nil {
		if err := pl.prepare(); err != nil {
			p.Steps = append(p.Steps, step{Action: "prepare", Err: err})
			return
		}
	}
	for _, h := range r.hosts {
		if ctx.Err() != nil {
			return
		}
		st := pl.step(h)
		p.Steps = append(p.Steps, st)
		if st.Err != nil {
			return
		}
	}
}

func (r *rollout) begin(name string, gate bool, delay time.Duration) *phase {
	p := &phase{Name: name, Gate: gate, Delay: delay, From: time.Now()}
	r.phases = append(r.phases, p)
	fmt.Fprintf(os.Stderr, "fleet: %5.1fs %s\n", time.Since(r.t0).Seconds(), name)
	return p
}

func (r *rollout) end(p *phase) { p.To = time.Now() }

// restart is one host's step of a rolling restart: TERM, wait until baton
// has exited (with shutdown_delay it serves that long after /readyz turned
// 503, then drains), start it again, wait until its /readyz says ready and
// HAProxy sees it UP, and check that a new master answers.
func (r *rollout) restart(ctx context.Context, h *host, delay time.Duration) (st step) {
	st = step{Host: h.name, Action: "TERM, restart"}
	defer func() { st.Done = time.Now() }()
	before, err := h.ask(ctx)
	if err != nil {
		st.Err = fmt.Errorf("%s before the restart: %w", h.name, err)
		return st
	}
	st.At = time.Now()
	if st.Err = h.signal(syscall.SIGTERM); st.Err != nil {
		return st
	}
	if st.Err = h.waitExit(ctx, delay+60*time.Second); st.Err != nil {
		return st
	}
	st.Exited = time.Now()
	if st.Err = h.start(); st.Err != nil {
		return st
	}
	st.Started = time.Now()
	if st.Err = h.awaitReady(ctx, 90*time.Second); st.Err != nil {
		return st
	}
	if st.Err = r.awaitBack(ctx, h, st.At); st.Err != nil {
		st.Err = fmt.Errorf("%w (baton's log: %s)", st.Err, h.logPath())
		return st
	}
	st.Down = r.lb.firstChange(h.name, "DOWN", st.At)
	st.Up = r.lb.firstChange(h.name, "UP", st.Started)
	after, err := h.awaitIdentity(ctx, 30*time.Second, func(id identity) bool { return id.Master != before.Master })
	st.Check = fmt.Sprintf("master %d → %d", before.Master, after.Master)
	st.Err = err
	return st
}

// awaitBack waits until HAProxy sends traffic to host h again after its
// restart began at term. If HAProxy took it out (with shutdown_delay it
// always does), that is its log saying UP once rise checks passed. Without
// the delay a restart can be over before HAProxy noticed anything, so its
// status may still be the old master's UP: then the new master counts as
// back once HAProxy has kept saying UP for rise (2) check intervals.
func (r *rollout) awaitBack(ctx context.Context, h *host, term time.Time) error {
	const timeout = 90 * time.Second
	if down := r.lb.firstChange(h.name, "DOWN", term); !down.IsZero() {
		deadline := time.Now().Add(timeout)
		for r.lb.firstChange(h.name, "UP", down).IsZero() {
			if time.Now().After(deadline) {
				return fmt.Errorf("HAProxy has not said %s is UP %s after its restart", h.name, timeout)
			}
			if sleepCtx(ctx, 100*time.Millisecond) != nil {
				return ctx.Err()
			}
		}
		return r.lb.awaitStatus(ctx, h.name, "UP", timeout)
	}
	return r.lb.awaitSteadyUp(ctx, 2*r.cfg.inter, timeout, h.name)
}

// control is one host's step of a rolling reload or upgrade: the command
// waits for the new generation, then the host must answer from the same
// master with the next generation, and HAProxy should not have taken it
// out meanwhile.
func (r *rollout) control(ctx context.Context, h *host, verb string) (st step) {
	st = step{Host: h.name, Action: "baton " + verb}
	defer func() { st.Done = time.Now() }()
	before, err := h.ask(ctx)
	if err != nil {
		st.Err = fmt.Errorf("%s before %s: %w", h.name, verb, err)
		return st
	}
	st.At = time.Now()
	out, err := h.control(ctx, verb)
	st.Returned = time.Now()
	if err != nil {
		st.Err = err
		return st
	}
	if verb == "upgrade" && !strings.Contains(out, r.v2) {
		st.Err = fmt.Errorf("%s: baton upgrade does not say the master runs %q: %s", h.name, r.v2, out)
		return st
	}
	after, err := h.awaitIdentity(ctx, 30*time.Second, func(id identity) bool {
		return id.Master == before.Master && id.Generation == before.Generation+1
	})
	st.Check = fmt.Sprintf("generation %d → %d, master %d → %d", before.Generation, after.Generation, before.Master, after.Master)
	if verb == "upgrade" {
		st.Check += ", runs " + r.v2
	}
	st.Err = err
	// The old generation drains after the command returned: give its end,
	// and HAProxy's checks (fall 2), time to show in this step's phase.
	sleepCtx(ctx, 2*r.cfg.inter+500*time.Millisecond)
	if down := r.lb.firstChange(h.name, "DOWN", st.At); !down.IsZero() {
		st.Note = fmt.Sprintf("HAProxy took %s out %.1fs after `baton %s`", h.name, down.Sub(st.At).Seconds(), verb)
	}
	return st
}

// installV2 puts the upgrade's binary where the masters were started from,
// the way a deploy does: a new file renamed over the old path.
func (r *rollout) installV2(ctx context.Context) error {
	tmp := r.batonPath() + ".new"
	if err := copyFile(r.cfg.batonV2, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, r.batonPath()); err != nil {
		return err
	}
	out, err := runCmd(ctx, r.batonPath(), "version")
	if err != nil {
		return err
	}
	r.v2 = out
	return nil
}

// close stops the load, the hosts and HAProxy, removes the network and
// checks that nothing is left.
func (r *rollout) close() error {
	var errs []error
	if r.load != nil {
		r.load.stop()
		r.load = nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, h := range r.hosts {
		errs = append(errs, h.quit())
	}
	for _, h := range r.hosts {
		errs = append(errs, h.waitExit(ctx, 30*time.Second))
	}
	if r.lb != nil {
		errs = append(errs, r.lb.stop())
		os.Remove(filepath.Join(r.cfg.dir, "haproxy.pid"))
	}
	errs = append(errs, removeNet())
	if left := leftovers(); len(left) > 0 {
		errs = append(errs, fmt.Errorf("still there after the teardown: %s", strings.Join(left, ", ")))
	}
	return errors.Join(errs...)
}

func copyFile(from, to string) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	return dst.Close()
}

// sleepCtx sleeps for d or until ctx is done (then it returns ctx.Err()).
func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}
