package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Targets baton should meet (issue 7); checked against the numbers, never
// tuned.
const (
	targetRatio      = 1.5       // reload p99 ÷ steady p99
	targetRSSKiB     = 10 * 1024 // the master's RSS
	targetThroughput = 0.99      // baton ÷ bare workers, closed loop
	zeroFailureIn    = "hups,upgrade,bad,storm,scale"
)

// plotFile is one PNG the suite wrote.
type plotFile struct {
	Scenario, Mode, Path string
}

func renderReport(cfg *config, f facts, results []*runResult, tp []throughputResult, extra []measured, plots []plotFile, runDir string) string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("# baton vs Gunicorn: chaos and performance suite\n\n")
	p("%s. Same ASGI app, same load, same machine, same run; every run starts fresh servers.\n\n", f.date)
	renderSetup(&b, cfg, f, runDir)
	renderTable(&b, cfg, results)
	renderTargets(&b, cfg, results, tp, extra)
	renderThroughput(&b, cfg, tp)
	for _, m := range extra {
		m.render(&b)
	}
	renderPreload(&b, cfg, results)
	renderFootprint(&b, results)
	renderSoak(&b, cfg, results)
	renderPlots(&b, plots)
	renderDetails(&b, cfg, results)
	renderLoadCheck(&b, cfg, results)
	renderErrors(&b, results)
	renderMachine(&b, cfg, results)
	return b.String()
}

func renderSetup(b *strings.Builder, cfg *config, f facts, runDir string) {
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	p("## Setup\n\n| | |\n|---|---|\n")
	p("| command | `%s` |\n", cfg.cmdline)
	p("| machine | %s CPUs (`nproc`), %s, %s |\n", f.nproc, f.cpu, f.kernel)
	p("| Go | %s |\n", f.goVersion)
	p("| baton | %s (%s) |\n", f.baton, f.commit)
	p("| Gunicorn | %s, `-k uvicorn.workers.UvicornWorker` |\n", f.gunicorn)
	p("| uvicorn | %s (%s) |\n", f.uvicorn, f.python)
	p("| load | %d req/s constant rate (open loop, vegeta), POST with a 4-byte body, %s client timeout, no retries; both a new connection per request and keep-alive |\n",
		cfg.rate, cfg.timeout)
	p("| workers | %d per server (scale scenario: %d) |\n", cfg.workers, cfg.scaleWorkers)
	p("| app | pure ASGI; import sleeps 1.5 s; each request sleeps 3 ms and answers 200 with the worker's pid |\n")
	bt := serverArgv(cfg, serverSpec{kind: kindBaton, workers: cfg.workers}, "APPDIR", 0)
	g := serverArgv(cfg, serverSpec{kind: kindGunicorn, workers: cfg.workers}, "APPDIR", 0)
	p("| servers | Gunicorn: `%s` · baton: `%s` · bare: %d × `uvicorn --fd 3 --no-access-log app:app` on one socket the benchmark bound (TCP_NODELAY, backlog 2048), under an idle bash · gunicorn-preload and baton-preload: the same with `--preload` (baton: `--preload app`, the module) |\n",
		strings.Join(g[1:], " "), strings.Join(bt[1:], " "), cfg.workers)
	for _, name := range cfg.scenarios {
		sc, _ := scenarioByName(name)
		length := fmt.Sprintf("%s of load", cfg.duration)
		if !sc.fixed {
			length = "load until done + " + sc.tail.String()
		}
		if sc.measure != nil {
			length = "no load"
		}
		p("| %s | %s (%s; servers: %s) |\n", sc.title, sc.describe(cfg), length, strings.Join(sc.servers, ", "))
	}
	p("| reload window | [action, action + %s], or until the action was seen to take effect and every worker that served before it had exited, if later; requests that *started* inside a window are \"reload\", all others \"steady\" |\n", cfg.window)
	p("| whole suite took | %s |\n", f.elapsed.Round(time.Second))
	p("| plots, logs and raw results | `%s/` (one .log and one .csv per run) |\n\n", runDir)
	p("Latencies are over every request of the row, failed ones included, from when the client started the request to when it had read the whole response. " +
		"Failure kinds: refused = `connection refused`, reset = `connection reset`, EOF = `EOF`, timeout = `timeout`/`deadline exceeded`, non-2xx = status ≥ 300, other = anything else.\n\n")
}

// renderTable is the one table of every run: the numbers to paste.
func renderTable(b *strings.Builder, cfg *config, results []*runResult) {
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	p("## Results\n\n")
	p("| scenario | server | connections | requests | failed | p50 | p99 | max | steady p99 | reload p99 | ÷ steady | reload takes (median, max) |\n")
	p("|---|---|---|--:|---|--:|--:|--:|--:|--:|--:|---|\n")
	for _, r := range results {
		if r.Err != nil {
			p("| %s | %s | %s | setup failed: %s |||||||||\n", scenarioTitle(r.Scenario), r.Server, modeTitle(r.Mode), oneLine(r.Err.Error()))
			continue
		}
		s := r.Stats
		failed := "0"
		if s.Failed > 0 {
			failed = fmt.Sprintf("**%d** (%s)", s.Failed, kindsText(s))
		}
		reloadP99, ratio := fmtDur(s.ReloadP99), fmtRatio(s.Ratio)
		if s.ReloadN == 0 {
			reloadP99, ratio = "–", "–"
		}
		p("| %s | %s | %s | %d | %s | %s | %s | %s | %s | %s | %s | %s |\n", scenarioTitle(r.Scenario), r.Server, modeTitle(r.Mode),
			s.Requests, failed, fmtDur(s.P50), fmtDur(s.P99), fmtDur(s.Max), fmtDur(s.SteadyP99), reloadP99, ratio, durationCell(r))
	}
	p("\n")
}

// actionDurations are how long each action took to take effect: what
// baton logged for reloads nobody waited on (a HUP), otherwise from the
// action to when the benchmark saw it done.
func actionDurations(r *runResult) []time.Duration {
	var ds []time.Duration
	waited := false
	for _, a := range r.Actions {
		if a.Err == "" && a.Done > 0 {
			waited = true
			ds = append(ds, a.Done-a.At)
		}
	}
	if !waited && family(r.Server) == kindBaton {
		for _, o := range r.Reloads {
			if d, err := time.ParseDuration(o.Duration); err == nil {
				ds = append(ds, d)
			}
		}
	}
	return ds
}

func durationCell(r *runResult) string {
	switch {
	case len(r.Actions) == 0:
		return "–"
	case r.Scenario == scenarioKill:
		return "n/a (a worker is replaced)"
	}
	ds := actionDurations(r)
	if len(ds) == 0 {
		if family(r.Server) == kindGunicorn {
			return "not reported by Gunicorn"
		}
		return "none logged"
	}
	out := fmt.Sprintf("%s, %s (%d)", fmtDur(percentile(ds, 0.5)), fmtDur(percentile(ds, 1)), len(ds))
	if ok, failed := outcomes(r); failed > 0 {
		out += fmt.Sprintf("; %d ok, **%d failed**", ok, failed)
	}
	return out
}

// outcomes counts the run's reloads or upgrades that succeeded and failed:
// the actions the benchmark waited on, else the reloads baton logged.
func outcomes(r *runResult) (ok, failed int) {
	counted := false
	for _, a := range r.Actions {
		if a.Result == "" || a.Result == "sent" || a.Kind == "kill -9" {
			continue
		}
		counted = true
		if a.Result == "succeeded" {
			ok++
		} else {
			failed++
		}
	}
	if counted || family(r.Server) != kindBaton {
		return ok, failed
	}
	for _, o := range r.Reloads {
		switch o.Result {
		case "succeeded":
			ok++
		case "failed":
			failed++
		}
	}
	return ok, failed
}

func renderTargets(b *strings.Builder, cfg *config, results []*runResult, tp []throughputResult, extra []measured) {
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	p("## baton's targets\n\n")
	p("Set before the run (issue 7; preload: issue 15) and checked against the numbers above; the scenarios are not tuned to pass them. baton-preload rows are baton with `--preload`.\n\n")
	p("| target | run | measured | |\n|---|---|---|---|\n")
	for _, r := range filter(results, func(r *runResult) bool { return family(r.Server) == kindBaton }) {
		run := scenarioTitle(r.Scenario) + ", " + modeTitle(r.Mode)
		if r.Server != kindBaton {
			run = r.Server + ": " + run
		}
		if r.Err != nil {
			p("| all | %s | setup failed | **NOT met** |\n", run)
			continue
		}
		s := r.Stats
		if strings.Contains(zeroFailureIn, r.Scenario) {
			p("| 0 failed requests | %s | %d failed of %d | %s |\n", run, s.Failed, s.Requests, metStr(s.Failed == 0))
			ratioOK := !math.IsNaN(s.Ratio) && s.Ratio <= targetRatio
			p("| reload p99 ≤ %.1f× steady p99 | %s | %s ÷ %s = %s | %s |\n", targetRatio, run,
				fmtDur(s.ReloadP99), fmtDur(s.SteadyP99), fmtRatio(s.Ratio), metStr(ratioOK))
		}
		ok, failed := outcomes(r)
		switch r.Scenario {
		case scenarioBad:
			p("| the bad deploy reported failed, old workers serving | %s | %d reported failed | %s |\n", run, failed, metStr(failed == 1 && ok == 0))
		case scenarioHUPs, scenarioUpgrade, scenarioStorm, scenarioScale, scenarioSoak, scenarioBoot:
			want := 0
			for _, a := range r.Actions {
				if a.Err == "" {
					want++
				}
			}
			p("| (sanity) every reload or upgrade reported succeeded | %s | %d of %d | %s |\n", run, ok, want, metStr(ok == want && failed == 0))
		}
		if r.Scenario == scenarioSoak {
			for _, g := range soakTrends(r.Soak) {
				p("| no growth over the soak: %s | %s | %s | %s |\n", g.Name, run, growthText(g), metStr(g.OK && !g.Unavailable))
			}
		}
	}
	preloadTargets(b, cfg, results)
	for _, m := range extra {
		m.targets(b)
	}
	if rss, run := maxMasterRSS(results, kindBaton); rss > 0 {
		p("| master RSS ≤ %d MiB | largest over all baton runs (%s) | %.1f MiB | %s |\n", targetRSSKiB/1024, run, float64(rss)/1024, metStr(rss <= targetRSSKiB))
	}
	for _, t := range tp {
		if t.Err != nil || len(t.Rounds["baton"]) == 0 || len(t.Rounds["bare"]) == 0 {
			continue
		}
		ratio := t.median("baton") / t.median("bare")
		p("| throughput ≥ %.2f × the bare workers' | closed loop, %s | %.0f ÷ %.0f req/s = %.3f | %s |\n", targetThroughput, modeTitle(t.Mode),
			t.median("baton"), t.median("bare"), ratio, metStr(ratio >= targetThroughput))
	}
	p("\n")
}

func growthText(g soakGrowth) string {
	if g.Unavailable {
		return "not sampled"
	}
	return fmt.Sprintf("%s → %s (slope %+.2f%s per 1,000 reloads; max %s)", num(g.First, g.Unit), num(g.Last, g.Unit), g.PerThousand, unitSuffix(g.Unit), num(g.Max, g.Unit))
}

func num(v float64, unit string) string {
	if unit == "" {
		return fmt.Sprintf("%g", v)
	}
	return fmt.Sprintf("%.1f %s", v, unit)
}

func unitSuffix(unit string) string {
	if unit == "" {
		return ""
	}
	return " " + unit
}

// maxMasterRSS is the largest master RSS seen in any run of server.
func maxMasterRSS(results []*runResult, server string) (int64, string) {
	var best int64
	var run string
	for _, r := range results {
		if family(r.Server) != server || r.Err != nil {
			continue
		}
		rss := max(r.MemStart.RSS, r.MemEnd.RSS)
		for _, s := range r.Soak {
			rss = max(rss, s.RSSKiB)
		}
		if rss > best {
			best, run = rss, scenarioTitle(r.Scenario)+", "+modeTitle(r.Mode)
		}
	}
	return best, run
}

func renderThroughput(b *strings.Builder, cfg *config, tp []throughputResult) {
	if len(tp) == 0 {
		return
	}
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	p("## Throughput (scenario 1, closed loop)\n\n")
	p("%d clients send their next POST as soon as the last one is answered; each server in turn for %s, %d rounds in a rotating order, all servers up at once. The median round counts; every round is listed.\n\n",
		cfg.conns, cfg.burst, cfg.rounds)
	p("| connections | server | req/s (median) | ÷ bare | rounds (req/s) | failed |\n|---|---|--:|--:|---|--:|\n")
	for _, t := range tp {
		if t.Err != nil {
			p("| %s | setup failed: %s |||||\n", modeTitle(t.Mode), oneLine(t.Err.Error()))
			continue
		}
		bare := t.median("bare")
		for _, srv := range []string{"bare", "gunicorn", "baton"} {
			rounds := t.Rounds[srv]
			if len(rounds) == 0 {
				continue
			}
			var rs []string
			for _, v := range rounds {
				rs = append(rs, fmt.Sprintf("%.0f", v))
			}
			ratio := "–"
			if bare > 0 {
				ratio = fmt.Sprintf("%.3f", t.median(srv)/bare)
			}
			p("| %s | %s | %.0f | %s | %s | %d |\n", modeTitle(t.Mode), srv, t.median(srv), ratio, strings.Join(rs, ", "), t.Failed[srv])
		}
	}
	p("\n")
}

func renderFootprint(b *strings.Builder, results []*runResult) {
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	p("## Footprint (scenario 9)\n\n")
	p("The master's resident memory (VmRSS = anonymous + file-backed: the heap and stacks, and the pages of its program and libraries, which the page cache shares) once all workers were up and when the load ended; the time from starting the server to its first 200 (polled every 10 ms) and to every worker up. Medians over the runs named; bare has no master (its idle bash is not counted).\n\n")
	p("| server | workers | runs | master RSS at start (anon + file) | master RSS at end (anon + file) | first 200 after | all workers up after |\n|---|--:|---|--:|--:|--:|--:|\n")
	for _, sc := range []string{scenarioSteady, scenarioScale, scenarioBoot} {
		for _, srv := range serverKinds {
			rs := filter(results, func(r *runResult) bool { return r.Err == nil && r.Scenario == sc && r.Server == srv })
			if len(rs) == 0 {
				continue
			}
			var first, up []time.Duration
			var start, end []memory
			for _, r := range rs {
				start, end = append(start, r.MemStart), append(end, r.MemEnd)
				first, up = append(first, r.First200), append(up, r.AllUp)
			}
			mem := func(ms []memory) string {
				if srv == kindBare {
					return "–"
				}
				m := medianMemory(ms)
				return fmt.Sprintf("%.1f MiB (%.1f + %.1f)", float64(m.RSS)/1024, float64(m.Anon)/1024, float64(m.File)/1024)
			}
			p("| %s | %d | %s (%d) | %s | %s | %s | %s |\n", srv, rs[0].Workers, scenarioTitle(sc), len(rs), mem(start), mem(end),
				fmtDur(percentile(first, 0.5)), fmtDur(percentile(up, 0.5)))
		}
	}
	p("\n")
}

// medianMemory is the sample with the median RSS (its own anon and file
// parts, so that they add up).
func medianMemory(ms []memory) memory {
	c := slices.Clone(ms)
	slices.SortFunc(c, func(a, b memory) int { return int(a.RSS - b.RSS) })
	return c[(len(c)-1)/2]
}

func renderSoak(b *strings.Builder, cfg *config, results []*runResult) {
	rs := filter(results, func(r *runResult) bool { return r.Err == nil && r.Scenario == scenarioSoak })
	if len(rs) == 0 {
		return
	}
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	p("## Soak (scenario 8)\n\n")
	p("\"start\" and \"end\" are the medians of the first and the last fifth of the samples; the slope is a least-squares fit over all of them. Growth allowed from start to end: 0 open fds, 0 goroutines, 2 threads, 1 MiB RSS (the Go heap breathes); zombie children: none at the end.\n\n")
	for _, r := range rs {
		ok, failed := outcomes(r)
		p("**%s**: %d reloads (%d succeeded, %d failed) in %s under %d req/s; %d requests, %d failed.\n\n", modeTitle(r.Mode),
			len(r.Actions), ok, failed, r.LoadFor.Round(time.Second), cfg.rate, r.Stats.Requests, r.Stats.Failed)
		p("| metric | start | end | slope per 1,000 reloads | max | |\n|---|--:|--:|--:|--:|---|\n")
		for _, g := range soakTrends(r.Soak) {
			if g.Unavailable {
				p("| %s | not sampled |||||\n", g.Name)
				continue
			}
			p("| %s | %s | %s | %+.2f%s | %s | %s |\n", g.Name, num(g.First, g.Unit), num(g.Last, g.Unit), g.PerThousand, unitSuffix(g.Unit), num(g.Max, g.Unit), metStr(g.OK))
		}
		p("\n")
	}
}

func renderPlots(b *strings.Builder, plots []plotFile) {
	if len(plots) == 0 {
		return
	}
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	p("## Plots\n\nEvery request's latency over time (log scale), the actions marked; failed requests in red.\n\n")
	for _, pf := range plots {
		p("- %s, %s: `%s`\n", scenarioTitle(pf.Scenario), modeTitle(pf.Mode), pf.Path)
	}
	p("\n")
}

// renderDetails lists, run by run, what the scenario did and what the
// server reported, and each failed request with the log around it.
func renderDetails(b *strings.Builder, cfg *config, results []*runResult) {
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	p("## Details\n\n")
	for _, r := range results {
		if r.Err != nil {
			continue
		}
		p("**%s · %s · %s**: ", scenarioTitle(r.Scenario), r.Server, modeTitle(r.Mode))
		p("%s ", actionsText(r))
		if family(r.Server) == kindBaton && r.Scenario != scenarioSteady {
			if r.Queued > 0 {
				p("%d HUP(s) arrived while a reload was running and were queued. ", r.Queued)
			}
			for _, o := range r.Reloads {
				if o.Result == "failed" {
					p("baton reported a failed reload after %s: %s", o.Duration, o.Reason)
					if len(o.Stderr) > 0 {
						p(", the worker's last stderr line: `%s`", cleanErr(o.Stderr[len(o.Stderr)-1]))
					}
					p(". ")
				}
			}
		}
		if r.MasterExited {
			p("**The master exited** at %s (%s); %d of the %d requests started after that failed. ",
				fmtSecs(r.MasterExitAt), r.MasterExit, r.Stats.FailedAfter, r.Stats.RequestsAfter)
		}
		p("Distinct worker pids that answered: %d.", r.Stats.PIDs)
		if len(r.Leftovers) > 0 {
			p(" **Processes left behind after stop (killed by the benchmark): %s.**", strings.Join(r.Leftovers, "; "))
		}
		p("\n\n")
		renderFailures(b, r)
	}
}

// actionsText tells what the scenario did: every action when there are
// few, a count otherwise.
func actionsText(r *runResult) string {
	if len(r.Actions) == 0 {
		return "No action (steady load)."
	}
	var parts []string
	notDone := 0
	for _, a := range r.Actions {
		if a.Err != "" {
			notDone++
			parts = append(parts, fmt.Sprintf("%s not done (%s)", a.Kind, a.Err))
			continue
		}
		text := a.Kind + " at " + fmtSecs(a.At)
		if a.Deploy != "" {
			text = a.Deploy + " " + text
			if a.Kind == "HUP" {
				text = a.Deploy + " deploy, HUP at " + fmtSecs(a.At)
			}
		}
		if a.Done > 0 {
			text += fmt.Sprintf(", %s after %s", a.Result, fmtSecs(a.Done-a.At))
		}
		if a.Retired > 0 {
			text += fmt.Sprintf(", the workers from before it gone after %s", fmtSecs(a.Retired-a.At))
		}
		parts = append(parts, text)
	}
	if len(r.Actions) > 8 {
		ok, failed := outcomes(r)
		return fmt.Sprintf("%d %ss from %s to %s: %d succeeded, %d failed, %d not done.", len(r.Actions), r.Actions[0].Kind,
			fmtSecs(r.Actions[0].At), fmtSecs(r.Actions[len(r.Actions)-1].At), ok, failed, notDone)
	}
	return strings.Join(parts, "; ") + "."
}

func renderMachine(b *strings.Builder, cfg *config, results []*runResult) {
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	var saturated []string
	for _, r := range results {
		if r.Err == nil && r.CPU.Saturated > 0 {
			saturated = append(saturated, fmt.Sprintf("%s · %s · %s (%d s)", scenarioTitle(r.Scenario), r.Server, modeTitle(r.Mode), r.CPU.Saturated))
		}
	}
	if len(saturated) > 0 {
		p("**Machine:** all %d CPUs were ≥ 95%% busy for whole seconds in: %s. Whatever took the CPU (the servers and their booting workers, the client, or other work), latencies in those runs are partly the machine's.\n\n",
			runtime.NumCPU(), strings.Join(saturated, "; "))
	}
}

// writePlots draws, for each scenario with actions and each connection
// mode, Gunicorn's run and baton's side by side.
func writePlots(cfg *config, results []*runResult, runDir string) []plotFile {
	var out []plotFile
	for _, name := range cfg.scenarios {
		if name == scenarioSteady || name == scenarioSoak {
			continue
		}
		for _, mode := range cfg.modes {
			var panels []plotPanel
			for _, srv := range serverKinds {
				i := slices.IndexFunc(results, func(r *runResult) bool {
					return r.Err == nil && r.Scenario == name && r.Server == srv && r.Mode == mode
				})
				if i < 0 {
					continue
				}
				panels = append(panels, panelOf(results[i]))
			}
			if len(panels) == 0 {
				continue
			}
			path := filepath.Join(runDir, fmt.Sprintf("%s-%s.png", name, mode))
			title := fmt.Sprintf("%s, %s, %d req/s", scenarioTitle(name), modeTitle(mode), cfg.rate)
			if err := writeLatencyPlot(path, title, panels); err != nil {
				fmt.Fprintf(os.Stderr, "      plot %s: %v\n", path, err)
				continue
			}
			out = append(out, plotFile{name, mode, path})
		}
	}
	return out
}

func panelOf(r *runResult) plotPanel {
	name := map[string]string{kindGunicorn: "Gunicorn", kindGunicornPreload: "Gunicorn --preload", kindBaton: "baton", kindBatonPreload: "baton --preload"}[r.Server]
	pp := plotPanel{Title: fmt.Sprintf("%s: %d of %d failed, p99 %s", name, r.Stats.Failed, r.Stats.Requests, fmtDur(r.Stats.P99)),
		Samples: r.Samples}
	label := len(r.Actions) <= 8
	for _, a := range r.Actions {
		if a.Err != "" {
			continue
		}
		m := plotMark{At: a.At}
		if label {
			m.Label = a.Kind
		}
		pp.Marks = append(pp.Marks, m)
		if end := max(a.Done, a.Retired); end > 0 {
			pp.Spans = append(pp.Spans, plotSpan{a.At, end})
		}
	}
	if r.MasterExited {
		pp.Marks = append(pp.Marks, plotMark{At: r.MasterExitAt, Label: "master exited"})
	}
	return pp
}
