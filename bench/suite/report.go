package main

import (
	"cmp"
	"fmt"
	"math"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

type facts struct {
	date, nproc, cpu, kernel, goVersion, gunicorn, uvicorn, python, baton, commit string
	elapsed                                                                       time.Duration
}

func machineFacts(cfg *config) facts {
	f := facts{
		date:      time.Now().Format("2006-01-02 15:04:05 MST"),
		nproc:     output("nproc"),
		kernel:    output("uname", "-sr"),
		goVersion: runtime.Version(),
		gunicorn:  output(cfg.gunicorn, "--version"),
		uvicorn:   output(cfg.python, "-c", "import uvicorn; print(uvicorn.__version__)"),
		python:    output(cfg.python, "--version"),
		commit:    output("git", "describe", "--always", "--dirty"),
	}
	if cfg.baton != "" {
		f.baton = output(cfg.baton, "version")
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if name, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(name) == "model name" {
				f.cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	return f
}

func output(name string, args ...string) string {
	out, err := exec.Command(name, args...).CombinedOutput()
	s := strings.TrimSpace(string(out))
	if err != nil {
		return fmt.Sprintf("unknown (%s: %v)", name, err)
	}
	return strings.Join(strings.Fields(s), " ")
}

func scenarioTitle(s string) string {
	if s == scenarioBad {
		return "bad deploy"
	}
	return "HUPs"
}

func modeTitle(m string) string {
	if m == modeKeep {
		return "keep-alive"
	}
	return "new connection per request"
}

func fmtDur(d time.Duration) string {
	switch {
	case d <= 0:
		return "0"
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
	case d < time.Second:
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
}

func fmtSecs(d time.Duration) string { return fmt.Sprintf("%.2fs", d.Seconds()) }

func fmtRatio(r float64) string {
	if math.IsNaN(r) {
		return "n/a"
	}
	return fmt.Sprintf("%.2f×", r)
}

// Targets baton should meet; checked against the numbers, never tuned.
const (
	targetRatio     = 1.5
	targetReloadMax = 50 * time.Millisecond
)

func renderReport(cfg *config, f facts, results []*runResult, runDir string) string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }

	p("# Reload benchmark: baton vs Gunicorn\n\n")
	p("%s. Same ASGI app, same load, same machine, same run; every run starts fresh servers.\n\n", f.date)
	p("## Setup\n\n")
	p("| | |\n|---|---|\n")
	p("| command | `%s` |\n", cfg.cmdline)
	p("| machine | %s CPUs (`nproc`), %s, %s |\n", f.nproc, f.cpu, f.kernel)
	p("| Go | %s |\n", f.goVersion)
	p("| baton | %s (%s) |\n", f.baton, f.commit)
	p("| Gunicorn | %s, `-k uvicorn.workers.UvicornWorker` |\n", f.gunicorn)
	p("| uvicorn | %s (%s) |\n", f.uvicorn, f.python)
	p("| load | %d req/s constant rate (open loop, vegeta), %s per run, POST with a 4-byte body, %s client timeout, no retries |\n",
		cfg.rate, cfg.duration, cfg.timeout)
	p("| workers | %d per server |\n", cfg.workers)
	at, _ := hupSchedule(cfg.duration, cfg.hups, cfg.window)
	ats := make([]string, len(at))
	for i, t := range at {
		ats[i] = t.String()
	}
	p("| HUPs scenario | redeploy the same good app.py and HUP at %s |\n", strings.Join(ats, ", "))
	p("| bad deploy scenario | replace app.py with one that raises ImportError after 0.5 s and HUP at %s; load continues to the end |\n", badSchedule(cfg.duration))
	p("| reload window | [HUP, HUP + %s], the same fixed window for both servers (the app's import takes 1.5 s); requests that *started* inside a window are \"reload\", all others \"steady\" |\n", cfg.window)
	p("| app | pure ASGI; import sleeps 1.5 s; each request sleeps 3 ms and answers 200 with the worker's pid |\n")
	p("| servers | Gunicorn: `%s` · baton: `%s` |\n",
		strings.Join(serverArgv(cfg, "gunicorn", "APPDIR", 0)[1:], " "), strings.Join(serverArgv(cfg, "baton", "APPDIR", 0)[1:], " "))
	p("| whole benchmark took | %s |\n", f.elapsed.Round(time.Second))
	p("| logs and raw results | `%s/` (one .log and one .csv per run) |\n\n", runDir)
	p("Latency columns are over every request of the row, failed ones included (a refused connection counts with its short time), measured from when the client started the request to when its response was read in full (the load generator check below shows how late requests started against the schedule). " +
		"Failure kinds: refused = `connection refused`, reset = `connection reset`, EOF = `EOF`, timeout = `timeout`/`deadline exceeded`, non-2xx = status ≥ 300 (or 0 with no network error), other = anything else.\n\n")

	for _, sc := range cfg.scenarios {
		rows := filter(results, func(r *runResult) bool { return r.Scenario == sc })
		if sc == scenarioBad {
			p("## Scenario 2: bad deploy\n\n")
		} else {
			p("## Scenario 1: %d HUPs\n\n", cfg.hups)
		}
		p("| server | connections | requests | ok | refused | reset | EOF | timeout | non-2xx | other | p50 | p99 | max | steady p99 | reload p99 | reload p99 ÷ steady p99 | max during reloads | reload results |\n")
		p("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n")
		for _, r := range rows {
			if r.Err != nil {
				p("| %s | %s | setup failed: %s |||||||||||||||\n", r.Server, modeTitle(r.Mode), oneLine(r.Err.Error()))
				continue
			}
			s := r.Stats
			p("| %s | %s | %d | %d | %d | %d | %d | %d | %d | %d | %s | %s | %s | %s | %s | %s | %s | %s |\n",
				r.Server, modeTitle(r.Mode), s.Requests, s.Counts[OK], s.Counts[Refused], s.Counts[Reset], s.Counts[EOF],
				s.Counts[Timeout], s.Counts[Non2xx], s.Counts[Other], fmtDur(s.P50), fmtDur(s.P99), fmtDur(s.Max),
				fmtDur(s.SteadyP99), fmtDur(s.ReloadP99), fmtRatio(s.Ratio), fmtDur(s.ReloadMax), reloadCell(r))
		}
		p("\n")
		for _, r := range rows {
			if r.Err != nil {
				continue
			}
			p("**%s, %s**: ", r.Server, modeTitle(r.Mode))
			var hups []string
			for _, h := range r.HUPs {
				if h.Err != "" {
					hups = append(hups, fmt.Sprintf("%s deploy: HUP not sent (%s)", h.Deploy, h.Err))
				} else {
					hups = append(hups, fmt.Sprintf("%s deploy, HUP at %s", h.Deploy, fmtSecs(h.At)))
				}
			}
			p("%s. ", strings.Join(hups, "; "))
			if r.Server == "baton" {
				if len(r.Reloads) == 0 {
					p("baton logged no reload. ")
				}
				if r.Queued > 0 {
					p("%d HUP(s) arrived while a reload was running and were queued (several coalesce into one reload). ", r.Queued)
				}
				for _, o := range r.Reloads {
					switch o.Result {
					case "":
						p("Generation %s: reload started at %s, no outcome logged. ", o.Generation, fmtSecs(o.Started))
					default:
						p("Generation %s: reload %s after %s (logged at %s)", o.Generation, o.Result, o.Duration, fmtSecs(o.Ended))
						if o.Reason != "" {
							p(", reason: %s", o.Reason)
						}
						if len(o.Stderr) > 0 {
							p(", worker's last stderr line: `%s`", o.Stderr[len(o.Stderr)-1])
						}
						p(". ")
					}
				}
			} else if r.Scenario == scenarioBad {
				if r.MasterExited {
					p("Master exited: **yes**, at %s (%s); %d of the %d requests started after that failed. ",
						fmtSecs(r.MasterExitAt), r.MasterExit, r.Stats.FailedAfter, r.Stats.RequestsAfter)
				} else {
					p("Master exited: no. ")
				}
			}
			p("Distinct worker pids that answered: %d.", r.Stats.PIDs)
			if len(r.Leftovers) > 0 {
				p(" **Processes left behind after stop (killed by the benchmark): %s.**", strings.Join(r.Leftovers, "; "))
			}
			p("\n\n")
			renderFailures(&b, r)
		}
	}

	renderTargets(&b, cfg, results)
	renderLoadCheck(&b, cfg, results)
	renderErrors(&b, results)
	renderSummary(&b, cfg, results)
	return b.String()
}

func oneLine(s string) string { return strings.ReplaceAll(strings.ReplaceAll(s, "\n", " "), "|", "/") }

func reloadCell(r *runResult) string {
	if r.Server == "baton" {
		var parts []string
		ok, failed := 0, 0
		for _, o := range r.Reloads {
			switch o.Result {
			case "succeeded":
				ok++
				parts = append(parts, "ok "+o.Duration)
			case "failed":
				failed++
				parts = append(parts, "failed "+o.Duration)
			default:
				parts = append(parts, "no outcome")
			}
		}
		if len(parts) == 0 {
			return "none logged"
		}
		return fmt.Sprintf("%d succeeded, %d failed (%s)", ok, failed, strings.Join(parts, ", "))
	}
	if r.Scenario == scenarioBad {
		if r.MasterExited {
			return fmt.Sprintf("master exited at %s: yes; %d failed after", fmtSecs(r.MasterExitAt), r.Stats.FailedAfter)
		}
		return "master exited: no"
	}
	return "not reported by Gunicorn"
}

func filter(rs []*runResult, keep func(*runResult) bool) []*runResult {
	var out []*runResult
	for _, r := range rs {
		if keep(r) {
			out = append(out, r)
		}
	}
	return out
}

func metStr(ok bool) string {
	if ok {
		return "met"
	}
	return "**NOT met**"
}

func renderTargets(b *strings.Builder, cfg *config, results []*runResult) {
	rows := filter(results, func(r *runResult) bool { return r.Server == "baton" })
	if len(rows) == 0 {
		return
	}
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	p("## baton's targets\n\n")
	p("Set before the run and checked against the numbers above; the scenarios are not tuned to pass them.\n\n")
	p("| scenario | connections | target | measured | |\n|---|---|---|---|---|\n")
	for _, r := range rows {
		sc := scenarioTitle(r.Scenario)
		if r.Err != nil {
			p("| %s | %s | all | setup failed | **NOT met** |\n", sc, modeTitle(r.Mode))
			continue
		}
		s := r.Stats
		p("| %s | %s | 0 failed requests | %d failed | %s |\n", sc, modeTitle(r.Mode), s.Failed, metStr(s.Failed == 0))
		ratioOK := !math.IsNaN(s.Ratio) && s.Ratio <= targetRatio
		p("| %s | %s | reload p99 ≤ %.1f× steady p99 | %s ÷ %s = %s | %s |\n", sc, modeTitle(r.Mode), targetRatio,
			fmtDur(s.ReloadP99), fmtDur(s.SteadyP99), fmtRatio(s.Ratio), metStr(ratioOK))
		p("| %s | %s | max latency during reloads < %s | %s | %s |\n", sc, modeTitle(r.Mode), fmtDur(targetReloadMax),
			fmtDur(s.ReloadMax), metStr(s.ReloadN > 0 && s.ReloadMax < targetReloadMax))
		if r.Scenario == scenarioBad {
			reported := len(r.Reloads) > 0 && r.Reloads[0].Result == "failed"
			got := "no outcome logged"
			if len(r.Reloads) > 0 && r.Reloads[0].Result != "" {
				got = "reported " + r.Reloads[0].Result
			}
			p("| %s | %s | reload reported failed | %s | %s |\n", sc, modeTitle(r.Mode), got, metStr(reported))
		} else {
			ok := 0
			for _, o := range r.Reloads {
				if o.Result == "succeeded" {
					ok++
				}
			}
			p("| %s | %s | (sanity) every good reload reported succeeded | %d of %d HUPs | %s |\n", sc, modeTitle(r.Mode),
				ok, len(r.Windows), metStr(ok == len(r.Windows) && len(r.Reloads) == len(r.Windows)))
		}
	}
	p("\n")
}

func renderLoadCheck(b *strings.Builder, cfg *config, results []*runResult) {
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	p("## Load generator check\n\n")
	p("An open-loop client must not slow down when the server does. vegeta's constant pacer schedules request n (from 0) at (n+1)/%d s; "+
		"\"lag\" is how late each request actually started against that schedule (a client that coordinated with a stalled server would show lags as long as the stall).\n\n", cfg.rate)
	p("The machine's CPU use during each run's load (servers, client and anything else: other work on the machine shows here), and the load average when the load started and ended.\n\n")
	p("| run | requests (expected %d) | achieved rate | p99 start lag | max start lag | CPU busy: average, busiest second, seconds ≥ 95%% | load average (start → end) | waited for a quiet machine | processes left after TERM |\n|---|--:|--:|--:|--:|--:|--:|--:|---|\n",
		int(float64(cfg.rate)*cfg.duration.Seconds()))
	for _, r := range results {
		if r.Err != nil {
			continue
		}
		left := "none"
		if len(r.Leftovers) > 0 {
			left = strings.Join(r.Leftovers, "; ")
		}
		quiet := r.QuietWait.Round(time.Second).String()
		if !r.Quiet {
			quiet += " (still busy: started anyway)"
		}
		p("| %s · %s · %s | %d | %.1f req/s | %s | %s | %.0f%%, %.0f%%, %d | %s → %s | %s | %s |\n", scenarioTitle(r.Scenario), r.Server, modeTitle(r.Mode),
			r.Stats.Requests, r.Stats.AchievedRate, fmtDur(r.Stats.P99Lag), fmtDur(r.Stats.MaxLag),
			r.CPU.Avg, r.CPU.Peak, r.CPU.Saturated, r.LoadBefore, r.LoadAfter, quiet, left)
	}
	p("\n")
}

func renderErrors(b *strings.Builder, results []*runResult) {
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	any := false
	for _, r := range results {
		if r.Err == nil && (len(r.Stats.Errors) > 0 || len(r.Notable) > 0) {
			any = true
		}
	}
	if !any {
		return
	}
	p("## Errors seen\n\n")
	for _, r := range results {
		if r.Err != nil || (len(r.Stats.Errors) == 0 && len(r.Notable) == 0) {
			continue
		}
		p("**%s · %s · %s**\n\n", scenarioTitle(r.Scenario), r.Server, modeTitle(r.Mode))
		type kv struct {
			k string
			n int
		}
		var errs []kv
		for k, n := range r.Stats.Errors {
			errs = append(errs, kv{k, n})
		}
		slices.SortFunc(errs, func(a, b kv) int { return cmp.Or(-cmp.Compare(a.n, b.n), cmp.Compare(a.k, b.k)) })
		for i, e := range errs {
			if i == 8 {
				p("- … and %d more distinct errors\n", len(errs)-i)
				break
			}
			p("- %d × `%s`\n", e.n, cleanErr(e.k))
		}
		for i, n := range r.Notable {
			if i == 10 {
				p("- … and %d more log lines\n", len(r.Notable)-i)
				break
			}
			p("- log: `%s`\n", strings.ReplaceAll(n, "`", "'"))
		}
		p("\n")
	}
}

// cleanErr bounds an error string's length and keeps it inside a code span.
func cleanErr(s string) string {
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return strings.ReplaceAll(s, "`", "'")
}

func renderSummary(b *strings.Builder, cfg *config, results []*runResult) {
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	p("## Summary\n\n")
	get := func(sc, srv, mode string) *runResult {
		for _, r := range results {
			if r.Scenario == sc && r.Server == srv && r.Mode == mode && r.Err == nil {
				return r
			}
		}
		return nil
	}
	for _, sc := range cfg.scenarios {
		for _, mode := range cfg.modes {
			g, bt := get(sc, "gunicorn", mode), get(sc, "baton", mode)
			p("- **%s, %s.** ", scenarioTitle(sc), modeTitle(mode))
			if g != nil {
				s := g.Stats
				if sc == scenarioBad {
					if g.MasterExited {
						p("Gunicorn's master exited %.1f s after the bad HUP and the site stayed down: %d of the %d requests started after that failed (over the whole run: %s). ",
							(g.MasterExitAt - firstHUP(g)).Seconds(), s.FailedAfter, s.RequestsAfter, kindsText(s))
					} else {
						p("Gunicorn's master survived the bad deploy; %d of %d requests failed (%s). ", s.Failed, s.Requests, kindsText(s))
					}
				} else {
					p("Gunicorn: %d of %d requests failed (%s); during reloads requests waited up to %s (reload p99 %s against %s steady, %s). ",
						s.Failed, s.Requests, kindsText(s), fmtDur(s.ReloadMax), fmtDur(s.ReloadP99), fmtDur(s.SteadyP99), fmtRatio(s.Ratio))
				}
			}
			if bt != nil {
				s := bt.Stats
				ok, failed := 0, 0
				for _, o := range bt.Reloads {
					switch o.Result {
					case "succeeded":
						ok++
					case "failed":
						failed++
					}
				}
				p("baton: %d of %d requests failed (%s); max latency during reloads %s (reload p99 %s against %s steady, %s); it reported %d reload(s) succeeded and %d failed.",
					s.Failed, s.Requests, kindsText(s), fmtDur(s.ReloadMax), fmtDur(s.ReloadP99), fmtDur(s.SteadyP99), fmtRatio(s.Ratio), ok, failed)
			}
			if g != nil && bt != nil {
				gp, bp := steadyP50(g), steadyP50(bt)
				slow, fast, sp, fp := "baton", "Gunicorn", bp, gp
				if gp > bp {
					slow, fast, sp, fp = "Gunicorn", "baton", gp, bp
				}
				if fp > 0 && sp > 3*fp && sp-fp > 10*time.Millisecond {
					p(" Outside reloads, %s is slower than %s in this mode (steady p50 %s against %s), which is not a reload effect: see \"Steady-state latency\" in bench/README.md.",
						slow, fast, fmtDur(sp), fmtDur(fp))
				}
			}
			p("\n")
		}
	}
	minRate, maxLag, p99Lag := math.Inf(1), time.Duration(0), time.Duration(0)
	var maxLoad string
	for _, r := range results {
		if r.Err == nil {
			minRate = min(minRate, r.Stats.AchievedRate)
			maxLag = max(maxLag, r.Stats.MaxLag)
			p99Lag = max(p99Lag, r.Stats.P99Lag)
			for _, l := range []string{r.LoadBefore, r.LoadAfter} {
				if parseLoad(l) > parseLoad(maxLoad) {
					maxLoad = l
				}
			}
		}
	}
	if !math.IsInf(minRate, 1) {
		verdict := "the client kept its schedule (latencies are measured from each request's actual start, so a late start hides at most that much of a server's delay)"
		if maxLag > 100*time.Millisecond || p99Lag > 10*time.Millisecond || minRate < 0.98*float64(cfg.rate) {
			verdict = "**the client fell behind its schedule at times: latencies in those moments understate the server's delays by up to the lag**"
		}
		p("- **Load generator:** lowest achieved rate %.1f req/s of %d, worst p99 start lag %s, worst single start lag %s: %s.\n",
			minRate, cfg.rate, fmtDur(p99Lag), fmtDur(maxLag), verdict)
	}
	var saturated []string
	for _, r := range results {
		if r.Err == nil && r.CPU.Saturated > 0 {
			saturated = append(saturated, fmt.Sprintf("%s · %s · %s (%d s)", scenarioTitle(r.Scenario), r.Server, modeTitle(r.Mode), r.CPU.Saturated))
		}
	}
	if len(saturated) > 0 {
		p("- **Machine:** all %d CPUs were ≥ 95%% busy for whole seconds in: %s. Whatever took the CPU (the servers, the client or other work on the machine), latencies in those runs are partly the machine's; compare them with care, and re-run when the machine is quiet.\n",
			runtime.NumCPU(), strings.Join(saturated, "; "))
	}
	if l := parseLoad(maxLoad); l > float64(runtime.NumCPU()) {
		p("- **Load average** reached %s on %d CPUs during the runs (it counts the servers' own processes, a reload's new workers included, as well as any other work): latencies near a target can move between runs.\n",
			maxLoad, runtime.NumCPU())
	}
	p("\n")
}

func firstHUP(r *runResult) time.Duration {
	for _, h := range r.HUPs {
		if h.Err == "" {
			return h.At
		}
	}
	return 0
}

func kindsText(s stats) string {
	var parts []string
	for k := Refused; k < numKinds; k++ {
		if s.Counts[k] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", s.Counts[k], k))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// renderFailures lists a row's failed requests with what the server had
// logged just before each one ended, so a failure can be traced to a step
// of the reload. Rows with many failures get the first and last few.
func renderFailures(b *strings.Builder, r *runResult) {
	var failed []sample
	for _, s := range r.Samples {
		if s.Kind != OK {
			failed = append(failed, s)
		}
	}
	if len(failed) == 0 {
		return
	}
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	show := failed
	if len(failed) > 12 {
		show = append(append([]sample(nil), failed[:3]...), failed[len(failed)-1])
		p("Failed requests (%d; the first 3 and the last), with the server's last log lines before each one ended:\n\n", len(failed))
	} else {
		p("Failed requests, with the server's last log lines before each one ended:\n\n")
	}
	for i, s := range show {
		if len(failed) > 12 && i == 3 {
			p("- …\n")
		}
		p("- started %s (%s), %s after %s: `%s`", fmtSecs(s.Start), sinceHUP(r, s.Start), s.Kind, fmtDur(s.Latency), cleanErr(normalizeErr(s.Err)))
		var before []timedLine
		for _, l := range r.Lines {
			if l.At <= s.Start+s.Latency {
				before = append(before, l)
			}
		}
		if len(before) > 2 {
			before = before[len(before)-2:]
		}
		for _, l := range before {
			p("; log at %s: `%s`", fmtSecs(l.At), cleanErr(shortLine(l.Text)))
		}
		p("\n")
	}
	p("\n")
}

func sinceHUP(r *runResult, t time.Duration) string {
	best := time.Duration(-1)
	for _, h := range r.HUPs {
		if h.Err == "" && h.At <= t {
			best = h.At
		}
	}
	if best < 0 {
		return "before any HUP"
	}
	return fmt.Sprintf("HUP + %s", fmtSecs(t-best))
}

// shortLine keeps the gist of a log line: for baton's JSON records, the
// message and a few fields.
func shortLine(text string) string {
	if ev, ok := parseBatonLine(text); ok {
		return eventGist(ev)
	}
	text = strings.TrimSpace(text)
	if len(text) > 160 {
		text = text[:160] + "…"
	}
	return text
}

// eventGist is one of baton's records as its message and a few fields.
func eventGist(ev batonEvent) string {
	out := ev.Msg
	for _, k := range []string{"generation", "slot", "pid", "status", "duration", "reason"} {
		if v := ev.str(k); v != "" {
			out += " " + k + "=" + v
		}
	}
	return out
}

// steadyP50 is the median latency of the successful requests outside
// reload windows.
func steadyP50(r *runResult) time.Duration {
	var ds []time.Duration
	for _, s := range r.Samples {
		if s.Kind == OK && !inAny(s.Start, r.Windows) {
			ds = append(ds, s.Latency)
		}
	}
	return percentile(ds, 0.5)
}

func parseLoad(s string) float64 {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return -1
	}
	return f
}
