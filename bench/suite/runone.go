package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

type runSpec struct{ Scenario, Server, Mode string }

func (s runSpec) name() string { return s.Scenario + "-" + s.Server + "-" + s.Mode }

// hupRecord is one deploy + HUP, at a time since the load started.
type hupRecord struct {
	At     time.Duration
	Deploy string // "good" or "broken"
	Err    string // why the HUP was not sent
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
	Samples      []sample
	HUPs         []hupRecord
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
	LoadBefore   string // 1-minute load average when the load started
	LoadAfter    string // and when it ended
	CPU          cpuUse // the whole machine's CPU use during the load
	QuietWait    time.Duration
	Quiet        bool // the machine was quiet before the run started
}

func runOne(cfg *config, spec runSpec, good, broken []byte, runDir string) *runResult {
	res := &runResult{runSpec: spec, LogPath: filepath.Join(runDir, spec.name()+".log")}
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

	srv, err := startServer(cfg, spec.Server, appDir, res.LogPath)
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
	if err := srv.waitReady(cfg.workers, 60*time.Second); err != nil {
		res.Err = err
		res.Termed, res.Leftovers = srv.stop(45 * time.Second)
		return res
	}
	time.Sleep(500 * time.Millisecond) // let the first generation settle

	type planned struct {
		at     time.Duration
		source []byte
		name   string
	}
	var plan []planned
	if spec.Scenario == scenarioBad {
		plan = append(plan, planned{badSchedule(cfg.duration), broken, "broken"})
	} else {
		at, _ := hupSchedule(cfg.duration, cfg.hups, cfg.window) // validated
		for _, t := range at {
			plan = append(plan, planned{t, good, "good"})
		}
	}

	res.LoadBefore = loadAvg()
	stopCPU := make(chan struct{})
	cpu := sampleCPU(stopCPU)
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	wg.Add(1)
	go func() {
		defer wg.Done()
		for _, p := range plan {
			time.Sleep(time.Until(start.Add(p.at)))
			rec := hupRecord{Deploy: p.name}
			if err := deploy(appDir, p.source); err != nil {
				rec.Err = "deploy: " + err.Error()
			} else if at, err := srv.hup(); err != nil {
				rec.Err = err.Error()
			} else {
				rec.At = at.Sub(start)
			}
			mu.Lock()
			res.HUPs = append(res.HUPs, rec)
			mu.Unlock()
		}
	}()
	res.Samples = attack(srv.url(), cfg.rate, cfg.duration, cfg.timeout, spec.Mode == modeKeep, start)
	res.LoadAfter = loadAvg()
	close(stopCPU)
	res.CPU = <-cpu
	wg.Wait()

	for _, h := range res.HUPs {
		if h.Err == "" {
			res.Windows = append(res.Windows, window{h.At, h.At + cfg.window})
		}
	}
	// Let baton log the outcome of a reload still going when the load ended.
	if spec.Server == "baton" {
		deadline := time.Now().Add(15 * time.Second)
		for time.Now().Before(deadline) && srv.alive() {
			_, events := srv.snapshot()
			if rs := batonReloads(events, start); len(rs) >= len(res.Windows) && allEnded(rs) {
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

	lines, events := srv.snapshot()
	seen := map[string]bool{}
	for _, l := range lines {
		if l.At.After(stopAt) {
			break
		}
		res.Lines = append(res.Lines, timedLine{l.At.Sub(start), l.Text})
		if spec.Server == "baton" {
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
	if spec.Server == "baton" {
		res.Reloads = batonReloads(events, start)
		for _, e := range events {
			if strings.HasPrefix(e.Msg, "reload requested during a reload") {
				res.Queued++
			}
		}
		for _, e := range events {
			if !e.At.After(stopAt) && (e.Level == "WARN" || e.Level == "ERROR") {
				res.Notable = append(res.Notable, fmt.Sprintf("t=%s %s %s", fmtSecs(e.At.Sub(start)), e.Level, eventGist(e)))
			}
		}
	}

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
