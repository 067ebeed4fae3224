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

func oneLine(s string) string { return strings.ReplaceAll(strings.ReplaceAll(s, "\n", " "), "|", "/") }

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

func renderLoadCheck(b *strings.Builder, cfg *config, results []*runResult) {
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	p("## Load generator check\n\n")
	p("An open-loop client must not slow down when the server does. vegeta's constant pacer schedules request n (from 0) at (n+1)/%d s; "+
		"\"lag\" is how late each request actually started against that schedule (a client that coordinated with a stalled server would show lags as long as the stall).\n\n", cfg.rate)
	p("The machine's CPU use during each run's load (servers, client and anything else: other work on the machine shows here), and the load average when the load started and ended.\n\n")
	p("| run | requests (expected) | achieved rate | p99 start lag | max start lag | CPU busy: average, busiest second, seconds ≥ 95%% | load average (start → end) | waited for a quiet machine | processes left after TERM |\n|---|--:|--:|--:|--:|--:|--:|--:|---|\n")
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
		p("| %s · %s · %s | %d (%d) | %.1f req/s | %s | %s | %.0f%%, %.0f%%, %d | %s → %s | %s | %s |\n", scenarioTitle(r.Scenario), r.Server, modeTitle(r.Mode),
			r.Stats.Requests, int(float64(cfg.rate)*r.LoadFor.Seconds()), r.Stats.AchievedRate, fmtDur(r.Stats.P99Lag), fmtDur(r.Stats.MaxLag),
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
		p("- started %s (%s), %s after %s: `%s`", fmtSecs(s.Start), sinceAction(r, s.Start), s.Kind, fmtDur(s.Latency), cleanErr(normalizeErr(s.Err)))
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

// sinceAction places t after the scenario's last action before it.
func sinceAction(r *runResult, t time.Duration) string {
	best := -1
	for i, a := range r.Actions {
		if a.Err == "" && a.At <= t {
			best = i
		}
	}
	if best < 0 {
		return "before any action"
	}
	return fmt.Sprintf("%s + %s", r.Actions[best].Kind, fmtSecs(t-r.Actions[best].At))
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

func parseLoad(s string) float64 {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return -1
	}
	return f
}
