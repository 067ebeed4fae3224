package main

import (
	"bufio"
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

type runSpec struct{ Scenario, Server, Mode string }

func (s runSpec) name() string { return s.Scenario + "-" + s.Server + "-" + s.Mode }

// action is one thing a scenario did to the server, at a time since the
// load started.
type action struct {
	Kind   string // "HUP", "upgrade", "reload" or "kill -9"
	Deploy string // what was deployed before a HUP ("good", "broken"), or the pid killed
	At     time.Duration
	Done   time.Duration // when it was seen to have taken effect; 0 if not waited for
	// Retired is when every worker that served before the action had
	// exited: a reload's work goes on after it took effect while the old
	// generation drains. 0 if they had not all exited when the run ended.
	Retired time.Duration
	Result  string // as the benchmark saw it: "succeeded", "failed: …", "sent"
	Err     string // why it was not done
	Before  []int  // the workers that served before it
}

// reloadOutcome is one reload as baton's log reported it.
type reloadOutcome struct {
	Generation string
	Started    time.Duration // when "reload started" was read, since the load started
	Ended      time.Duration // when the outcome was read
	Result     string        // "succeeded", "failed" or "" (no outcome logged)
	Duration   string        // as baton logged it
	Reason     string
	Stderr     []string
}

// timedLine is one line of a server's log, at a time since the load started.
type timedLine struct {
	At   time.Duration
	Text string
}

type runResult struct {
	runSpec
	Err          error
	Workers      int
	Samples      []sample
	Actions      []action
	Windows      []window
	Reloads      []reloadOutcome // baton only
	Queued       int             // baton only: HUPs that arrived during a reload and were queued
	Notable      []string        // baton's warnings and errors, gunicorn's failure lines
	Lines        []timedLine     // everything the server logged until the benchmark stopped it
	MasterExited bool            // during the load (before the benchmark's TERM)
	MasterExitAt time.Duration
	MasterExit   string
	Termed       bool
	Leftovers    []string
	LogPath      string
	CSVPath      string
	Stats        stats
	LoadFor      time.Duration // how long the load ran
	LoadBefore   string        // 1-minute load average when the load started
	LoadAfter    string        // and when it ended
	CPU          cpuUse        // the whole machine's CPU use during the load
	QuietWait    time.Duration
	Quiet        bool // the machine was quiet before the run started
	First200     time.Duration
	AllUp        time.Duration
	MemStart     memory // the master's resident memory when the load started
	MemEnd       memory // and when it ended
	Soak         []soakSample
}

// runCtx is what a scenario's driver works with during one run.
type runCtx struct {
	cfg          *config
	srv          *server
	start        time.Time
	appDir       string
	good, broken []byte

	mu      sync.Mutex
	actions []action
	soak    []soakSample

	retirements   sync.WaitGroup
	stopRetireLog chan struct{} // closed once the run is over: stop tracking
}

func (rc *runCtx) sleepUntil(at time.Duration) { time.Sleep(time.Until(rc.start.Add(at))) }

func (rc *runCtx) since(t time.Time) time.Duration {
	if t.IsZero() {
		return 0
	}
	return t.Sub(rc.start)
}

func (rc *runCtx) record(a action) int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.actions = append(rc.actions, a)
	return len(rc.actions) - 1
}

// recordOp records an operation that waited for its outcome, and tracks
// the retirement of the workers that served before it.
func (rc *runCtx) recordOp(kind string, before []int, res opResult, err error) {
	a := action{Kind: kind, Before: before}
	if err != nil {
		a.Err = err.Error()
	} else {
		a.At, a.Done, a.Result = rc.since(res.At), rc.since(res.Done), res.Result
	}
	i := rc.record(a)
	if err == nil {
		rc.trackRetirement(i, before)
	}
}

// deployAndHUP replaces app.py and sends HUP, fire and forget.
func (rc *runCtx) deployAndHUP(name string, source []byte) {
	before := rc.srv.workerPIDs()
	a := action{Kind: "HUP", Deploy: name, Result: "sent", Before: before}
	if err := deploy(rc.appDir, source); err != nil {
		a.Err = "deploy: " + err.Error()
	} else if at, err := rc.srv.hup(); err != nil {
		a.Err = err.Error()
	} else {
		a.At = at.Sub(rc.start)
	}
	i := rc.record(a)
	if a.Err == "" {
		rc.trackRetirement(i, before)
	}
}

// trackRetirement sets action i's Retired once every one of pids has
// exited, polling in the background (a failed reload retires none: then
// it gives up when the run is over).
func (rc *runCtx) trackRetirement(i int, pids []int) {
	rc.retirements.Add(1)
	go func() {
		defer rc.retirements.Done()
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			if !slices.ContainsFunc(pids, func(pid int) bool { return !processGone(pid) }) {
				rc.mu.Lock()
				rc.actions[i].Retired = time.Since(rc.start)
				rc.mu.Unlock()
				return
			}
			select {
			case <-tick.C:
			case <-rc.stopRetireLog:
				return
			}
		}
	}()
}

func runOne(cfg *config, spec runSpec, apps map[string][]byte, runDir string) *runResult {
	sc, _ := scenarioByName(spec.Scenario)
	good, broken := apps[cmp.Or(sc.app, appGood)], apps[appBroken]
	res := &runResult{runSpec: spec, LogPath: filepath.Join(runDir, spec.name()+".log"), Workers: sc.workerCount(cfg)}
	res.Quiet = true
	if cfg.quietBelow > 0 {
		res.QuietWait, res.Quiet = waitQuiet(cfg.quietBelow, cfg.quietWait)
	}
	if !res.Quiet {
		fmt.Fprintf(os.Stderr, "      the machine stayed busy for %s; starting anyway\n", res.QuietWait.Round(time.Second))
	}
	appDir, err := os.MkdirTemp("", "baton-bench-app-")
	if err != nil {
		res.Err = err
		return res
	}
	defer os.RemoveAll(appDir)
	if err := deploy(appDir, good); err != nil {
		res.Err = err
		return res
	}

	sspec := serverSpec{kind: spec.Server, workers: res.Workers, demo: sc.demo && spec.Server == kindBaton}
	if spec.Scenario == scenarioSoak {
		if sspec.metrics, err = freePort(); err != nil {
			res.Err = err
			return res
		}
	}
	srv, err := startServer(cfg, sspec, appDir, res.LogPath)
	if err != nil {
		res.Err = err
		return res
	}
	defer func() {
		// Normally stopped below; this covers an early return.
		if srv.alive() {
			srv.stop(45 * time.Second)
		}
	}()
	if res.First200, res.AllUp, err = srv.waitReady(3 * time.Minute); err != nil {
		res.Err = err
		res.Termed, res.Leftovers = srv.stop(45 * time.Second)
		return res
	}
	time.Sleep(500 * time.Millisecond) // let the first generation settle

	rc := &runCtx{cfg: cfg, srv: srv, appDir: appDir, good: good, broken: broken, stopRetireLog: make(chan struct{})}
	res.LoadBefore = loadAvg()
	res.MemStart = readMem(srv.master())
	stopCPU := make(chan struct{})
	cpu := sampleCPU(stopCPU)
	stopLoad := make(chan struct{})
	rc.start = time.Now()
	driven := make(chan struct{})
	go func() {
		defer close(driven)
		if sc.drive != nil {
			sc.drive(rc)
		}
	}()
	go func() {
		if sc.fixed {
			time.Sleep(time.Until(rc.start.Add(cfg.duration)))
		} else {
			select {
			case <-driven:
				time.Sleep(sc.tail)
			case <-time.After(cfg.maxRun):
				fmt.Fprintf(os.Stderr, "      stopping the load after -max-run %s\n", cfg.maxRun)
			}
		}
		close(stopLoad)
	}()
	res.Samples = attack(srv.url(), cfg.rate, cfg.timeout, spec.Mode == modeKeep, rc.start, stopLoad)
	res.LoadFor = time.Since(rc.start)
	res.LoadAfter = loadAvg()
	res.MemEnd = readMem(srv.master())
	close(stopCPU)
	res.CPU = <-cpu
	select {
	case <-driven:
	case <-time.After(5 * time.Minute):
		fmt.Fprintln(os.Stderr, "      the scenario's driver is still running 5 minutes after the load ended; going on")
	}
	// Old workers still draining when the load ended get a few seconds.
	time.AfterFunc(5*time.Second, func() { close(rc.stopRetireLog) })
	rc.retirements.Wait()
	rc.mu.Lock()
	res.Actions = append([]action(nil), rc.actions...)
	res.Soak = append([]soakSample(nil), rc.soak...)
	rc.mu.Unlock()

	for _, a := range res.Actions {
		if a.Err == "" {
			res.Windows = append(res.Windows, window{a.At, max(a.At+cfg.window, a.Done, a.Retired)})
		}
	}
	start := rc.start
	// Let baton log the outcome of a reload still going when the load ended.
	if family(spec.Server) == kindBaton && spec.Scenario != scenarioSteady {
		deadline := time.Now().Add(15 * time.Second)
		for time.Now().Before(deadline) && srv.alive() {
			_, events := srv.snapshot()
			if rs := batonReloads(events, start); allEnded(rs) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if !srv.alive() {
		res.MasterExited = true
		res.MasterExitAt = srv.exitAt.Sub(start)
		res.MasterExit = srv.exitText
	}
	stopAt := time.Now()
	res.Termed, res.Leftovers = srv.stop(45 * time.Second)
	res.collectLog(srv, start, stopAt)

	after := time.Duration(-1)
	if res.MasterExited {
		after = res.MasterExitAt
	}
	res.Stats = computeStats(res.Samples, res.Windows, after)
	res.CSVPath = filepath.Join(runDir, spec.name()+".csv")
	if err := writeCSV(res.CSVPath, res.Samples); err != nil {
		fmt.Fprintln(os.Stderr, "      cannot write raw results:", err)
	}
	return res
}

// collectLog keeps the server's log up to when the benchmark stopped it,
// its notable lines, and for baton the reloads it reported.
func (res *runResult) collectLog(srv *server, start, stopAt time.Time) {
	lines, events := srv.snapshot()
	seen := map[string]bool{}
	for _, l := range lines {
		if l.At.After(stopAt) {
			break
		}
		res.Lines = append(res.Lines, timedLine{l.At.Sub(start), l.Text})
		if family(res.Server) != kindGunicorn {
			continue
		}
		text := strings.TrimSpace(l.Text)
		if _, msg, ok := strings.Cut(text, "] ["); ok {
			text = "[" + msg // drop gunicorn's own timestamp, to spot repeats
		}
		if !seen[text] && (strings.Contains(text, "Worker failed to boot") || strings.Contains(text, "Shutting down: Master") ||
			strings.Contains(text, "Reason:") || strings.Contains(text, "Error:")) {
			seen[text] = true
			res.Notable = append(res.Notable, fmt.Sprintf("t=%s %s", fmtSecs(l.At.Sub(start)), text))
		}
	}
	if family(res.Server) != kindBaton {
		return
	}
	res.Reloads = batonReloads(events, start)
	for _, e := range events {
		if e.At.After(stopAt) {
			break
		}
		if strings.HasPrefix(e.Msg, "reload requested during a reload") {
			res.Queued++
		}
		if e.Level == "WARN" || e.Level == "ERROR" {
			res.Notable = append(res.Notable, fmt.Sprintf("t=%s %s %s", fmtSecs(e.At.Sub(start)), e.Level, eventGist(e)))
		}
	}
}

// deploy replaces app.py in dir atomically, as a deploy would.
func deploy(dir string, source []byte) error {
	tmp := filepath.Join(dir, ".app.py.new")
	if err := os.WriteFile(tmp, source, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, "app.py"))
}

// batonReloads pairs baton's "reload started" records with the outcome
// that followed each one, in order.
func batonReloads(events []batonEvent, start time.Time) []reloadOutcome {
	var out []reloadOutcome
	for _, e := range events {
		switch {
		case e.Msg == "reload started":
			out = append(out, reloadOutcome{Generation: e.str("generation"), Started: e.At.Sub(start)})
		case e.Msg == "reload succeeded" || strings.HasPrefix(e.Msg, "reload failed"):
			i := len(out) - 1
			if i < 0 || out[i].Result != "" {
				// A failure before any new generation started (an invalid config).
				out = append(out, reloadOutcome{Started: e.At.Sub(start)})
				i++
			}
			o := &out[i]
			o.Ended = e.At.Sub(start)
			o.Result = "succeeded"
			if e.Msg != "reload succeeded" {
				o.Result = "failed"
			}
			o.Duration = e.str("duration")
			o.Reason = e.str("reason")
			if s, ok := e.Fields["stderr"].([]any); ok {
				for _, l := range s {
					o.Stderr = append(o.Stderr, fmt.Sprint(l))
				}
			}
		}
	}
	return out
}

func allEnded(rs []reloadOutcome) bool {
	for _, r := range rs {
		if r.Result == "" {
			return false
		}
	}
	return true
}

func writeCSV(path string, ss []sample) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	fmt.Fprintln(w, "seq,start_s,latency_ms,lag_ms,code,kind,pid,error")
	for _, s := range ss {
		fmt.Fprintf(w, "%d,%.6f,%.3f,%.3f,%d,%s,%d,%q\n", s.Seq, s.Start.Seconds(),
			float64(s.Latency)/float64(time.Millisecond), float64(s.Lag)/float64(time.Millisecond),
			s.Code, s.Kind, s.PID, s.Err)
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// loadAvg is the 1-minute load average, from /proc/loadavg.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) > 0 {
		return f[0]
	}
	return "?"
}
