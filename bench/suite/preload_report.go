package main

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// The preload runs' part of the report: the boot scenario, the scale
// scenario's three servers, and the HUPs with baton-preload.

// Targets for preload mode (issue 15), fixed before any run.
const (
	targetBootReload = 3 * time.Second // baton --preload: each reload of the boot scenario
)

// reloadTimes are the waited actions' durations, in order.
func reloadTimes(r *runResult) []time.Duration {
	var ds []time.Duration
	for _, a := range r.Actions {
		if a.Err == "" && a.Done > 0 {
			ds = append(ds, a.Done-a.At)
		}
	}
	return ds
}

// allNewAnswered is how long after action i every worker of the new
// generation had answered a request of the load: the time the last of
// r.Workers pids not serving before it first answered, counting requests
// that started before the next action. false if fewer answered.
func allNewAnswered(r *runResult, i int) (time.Duration, bool) {
	a := r.Actions[i]
	if a.Err != "" {
		return 0, false
	}
	until := time.Duration(1<<63 - 1)
	for _, next := range r.Actions[i+1:] {
		if next.Err == "" {
			until = next.At
			break
		}
	}
	first := map[int]time.Duration{}
	for _, s := range r.Samples {
		if s.Kind != OK || s.Start < a.At || s.Start >= until || slices.Contains(a.Before, s.PID) {
			continue
		}
		end := s.Start + s.Latency
		if t, ok := first[s.PID]; !ok || end < t {
			first[s.PID] = end
		}
	}
	if len(first) < r.Workers {
		return 0, false
	}
	var ts []time.Duration
	for _, t := range first {
		ts = append(ts, t)
	}
	slices.Sort(ts)
	return ts[r.Workers-1] - a.At, true
}

func durationsText(ds []time.Duration) string {
	if len(ds) == 0 {
		return "–"
	}
	var parts []string
	for _, d := range ds {
		parts = append(parts, fmtDur(d))
	}
	return strings.Join(parts, ", ")
}

func renderPreload(b *strings.Builder, cfg *config, results []*runResult) {
	boot := filter(results, func(r *runResult) bool { return r.Scenario == scenarioBoot })
	scale := filter(results, func(r *runResult) bool { return r.Scenario == scenarioScale })
	hups := filter(results, func(r *runResult) bool { return r.Scenario == scenarioHUPs && r.Server == kindBatonPreload })
	if len(boot) == 0 && !slices.ContainsFunc(scale, func(r *runResult) bool { return r.Server == kindBatonPreload }) && len(hups) == 0 {
		return
	}
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	if len(boot) > 0 {
		p("## Preload: boot (scenario 11)\n\n")
		p("%d workers of `app.py` whose import burns 1 s of CPU in a busy loop instead of sleeping 1.5 s, on %s CPUs, under the %d req/s load. "+
			"**reload takes**: `baton reload` from the command's start to its exit; Gunicorn: from HUP until as many new \"Application startup complete\" lines as workers (its best case). "+
			"**all new workers answered**: from the reload until the last of the %d new worker pids first answered a request of the load (the same rule for every server; with keep-alive the client's connections stay with the workers that accepted them, so \"not all seen\" there says nothing about the server). "+
			"Gunicorn's HUP with `--preload` forks the new workers from its master, which imported the app once at start: it does **not** load new code, so its time is not a code reload.\n\n",
			cfg.bootWorkers, output("nproc"), cfg.rate, cfg.bootWorkers)
		p("| server | connections | reload takes (each) | median | max | all new workers answered (each) | failed requests | reloads ok |\n|---|---|---|--:|--:|---|--:|--:|\n")
		for _, r := range boot {
			if r.Err != nil {
				p("| %s | %s | setup failed: %s ||||||\n", r.Server, modeTitle(r.Mode), oneLine(r.Err.Error()))
				continue
			}
			ds := reloadTimes(r)
			var answered []string
			for i := range r.Actions {
				if d, ok := allNewAnswered(r, i); ok {
					answered = append(answered, fmtDur(d))
				} else if r.Actions[i].Err == "" {
					answered = append(answered, "not all seen")
				}
			}
			ok, failed := outcomes(r)
			p("| %s | %s | %s | %s | %s | %s | %d of %d | %d of %d |\n", r.Server, modeTitle(r.Mode), durationsText(ds),
				fmtDur(percentile(ds, 0.5)), fmtDur(percentile(ds, 1)), strings.Join(answered, ", "), r.Stats.Failed, r.Stats.Requests, ok, ok+failed)
		}
		p("\n")
	}
	if slices.ContainsFunc(scale, func(r *runResult) bool { return r.Server == kindBatonPreload }) {
		p("## Preload: scale (scenario 7 with baton --preload)\n\n")
		p("%d workers of the 1.5 s-import app, one reload under load: how long it took (as in the results table) and the ratio to Gunicorn's in the same connection mode.\n\n", cfg.scaleWorkers)
		p("| connections | server | reload takes | ÷ Gunicorn's | all new workers answered | failed requests |\n|---|---|--:|--:|--:|--:|\n")
		for _, mode := range cfg.modes {
			ref := firstReload(scale, kindGunicorn, mode)
			for _, r := range filter(scale, func(r *runResult) bool { return r.Mode == mode && r.Err == nil }) {
				d := firstReload(scale, r.Server, mode)
				ratio := "–"
				if ref > 0 && d > 0 {
					ratio = fmt.Sprintf("%.2f×", d.Seconds()/ref.Seconds())
				}
				answered := "not all seen"
				if len(r.Actions) > 0 {
					if t, ok := allNewAnswered(r, 0); ok {
						answered = fmtDur(t)
					}
				}
				p("| %s | %s | %s | %s | %s | %d of %d |\n", modeTitle(mode), r.Server, fmtDur(d), ratio, answered, r.Stats.Failed, r.Stats.Requests)
			}
		}
		p("\n")
	}
	if len(hups) > 0 {
		p("## Preload: HUPs under load (scenario 2 with baton --preload)\n\n")
		p("| connections | requests | failed | steady p99 | reload p99 | reloads (as baton logged them) |\n|---|--:|--:|--:|--:|---|\n")
		for _, r := range hups {
			if r.Err != nil {
				p("| %s | setup failed: %s |||||\n", modeTitle(r.Mode), oneLine(r.Err.Error()))
				continue
			}
			failed := "0"
			if r.Stats.Failed > 0 {
				failed = fmt.Sprintf("**%d** (%s)", r.Stats.Failed, kindsText(r.Stats))
			}
			p("| %s | %d | %s | %s | %s | %s |\n", modeTitle(r.Mode), r.Stats.Requests, failed, fmtDur(r.Stats.SteadyP99), fmtDur(r.Stats.ReloadP99), durationCell(r))
		}
		p("\n")
	}
}

// firstReload is how long the first waited action of server's run in
// mode took, 0 if none.
func firstReload(rs []*runResult, server, mode string) time.Duration {
	for _, r := range rs {
		if r.Server == server && r.Mode == mode && r.Err == nil {
			if ds := reloadTimes(r); len(ds) > 0 {
				return ds[0]
			}
		}
	}
	return 0
}

// preloadTargets are the boot and scale targets' rows.
func preloadTargets(b *strings.Builder, cfg *config, results []*runResult) {
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	for _, r := range results {
		if r.Server != kindBatonPreload || r.Err != nil {
			continue
		}
		run := scenarioTitle(r.Scenario) + ", " + modeTitle(r.Mode)
		switch r.Scenario {
		case scenarioBoot:
			ds := reloadTimes(r)
			if len(ds) == 0 {
				p("| reload ≤ %s with preload | %s | no reload done | **NOT met** |\n", fmtDur(targetBootReload), run)
				continue
			}
			worst := percentile(ds, 1)
			p("| reload ≤ %s with preload | %s | %s (max of %d; median %s) | %s |\n", fmtDur(targetBootReload), run, fmtDur(worst), len(ds),
				fmtDur(percentile(ds, 0.5)), metStr(worst <= targetBootReload))
		case scenarioScale:
			scale := filter(results, func(x *runResult) bool { return x.Scenario == scenarioScale })
			d, ref := firstReload(scale, kindBatonPreload, r.Mode), firstReload(scale, kindGunicorn, r.Mode)
			if ref == 0 {
				continue
			}
			p("| %d-worker reload with preload no slower than Gunicorn's | %s | %s ÷ %s = %.2f× | %s |\n", cfg.scaleWorkers, run, fmtDur(d), fmtDur(ref),
				d.Seconds()/ref.Seconds(), metStr(d > 0 && d <= ref))
		}
	}
}
