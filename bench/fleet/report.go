package main

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/baton-pm/baton/bench/internal/httpload"
)

// phaseStats is one row of the report.
type phaseStats struct {
	Requests, Failed int
	ByKind           map[string]int // "503", "502", "reset", "refused", ...
	LBStates         map[string]int // HAProxy's termination state of its failed requests: "SC", "SH", ...
	Hosts            map[string]int // who answered
	P50, P99         time.Duration
}

// failureKey names a failed request's kind: its status code when the
// client got an answer (HAProxy's 502/503), else what the connection did.
func failureKey(s sample) string {
	if s.Kind == httpload.Non2xx && s.Code != 0 {
		return fmt.Sprint(s.Code)
	}
	return s.Kind.String()
}

func statsOf(ss []sample, lb []lbEvent) phaseStats {
	st := phaseStats{Requests: len(ss), ByKind: map[string]int{}, LBStates: map[string]int{}, Hosts: map[string]int{}}
	lat := make([]time.Duration, 0, len(ss))
	for _, s := range ss {
		lat = append(lat, s.Latency)
		if s.Kind != httpload.OK {
			st.Failed++
			st.ByKind[failureKey(s)]++
			continue
		}
		st.Hosts[s.Host]++
	}
	for _, e := range lb {
		if e.Change == "" && e.Status != 200 {
			st.LBStates[fmt.Sprintf("%s %d", e.State, e.Status)]++
		}
	}
	st.P50, st.P99 = httpload.Percentile(lat, 0.5), httpload.Percentile(lat, 0.99)
	return st
}

// counts formats a tally, largest first: "503 ×12, reset ×1"; "—" if empty.
func counts(m map[string]int) string {
	if len(m) == 0 {
		return "—"
	}
	keys := slices.Collect(maps.Keys(m))
	slices.SortFunc(keys, func(a, b string) int { return cmp.Or(cmp.Compare(m[b], m[a]), cmp.Compare(a, b)) })
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s ×%d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

// since formats t relative to from: "+1.8s"; "—" when t is zero.
func since(from, t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return fmt.Sprintf("+%.1fs", t.Sub(from).Seconds())
}

type report struct {
	text   string
	passed bool
}

// report renders the markdown report and decides the verdict: every gated
// phase without a failed request and every step done.
func (r *rollout) report(samples []sample) report {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	passed := true
	end := r.t0
	if len(r.phases) > 0 {
		end = r.phases[len(r.phases)-1].To
	}
	p("## Fleet rollout: 3 hosts × 2 uvicorn workers behind HAProxy")
	p("")
	p("%d req/s through HAProxy, a new connection per request, for %.1f s: %d requests. HAProxy checks `/readyz` every %s (fall 2, rise 2), `retries 0`, no `option redispatch`.",
		r.cfg.rate, end.Sub(r.t0).Seconds(), len(samples), r.cfg.inter)
	p("")
	p("| phase | shutdown_delay | gated | duration | requests | failed | failures by kind | HAProxy: failed requests' state | p50 | p99 |")
	p("|---|---|---|---|---|---|---|---|---|---|")
	for _, ph := range r.phases {
		st := statsOf(between(samples, ph.From, ph.To), r.lb.eventsBetween(ph.From, ph.To))
		gate := "yes"
		if !ph.Gate {
			gate = "no (report only)"
		}
		if ph.Gate && st.Failed > 0 {
			passed = false
			gate = "yes: **FAILED**"
		}
		p("| %s | %s | %s | %.1f s | %d | %d | %s | %s | %s | %s |", ph.Name, ph.Delay, gate, ph.To.Sub(ph.From).Seconds(),
			st.Requests, st.Failed, counts(st.ByKind), counts(st.LBStates), ms(st.P50), ms(st.P99))
	}
	p("")
	p("Each host's steps (times from the signal or command; DOWN/UP: HAProxy's log):")
	p("")
	for _, ph := range r.phases {
		for _, s := range ph.Steps {
			line := fmt.Sprintf("- %s, %s: %s", ph.Name, s.Host, s.Action)
			if !s.Exited.IsZero() {
				line += ": " + restartTimeline(s)
			}
			if !s.Returned.IsZero() {
				line += fmt.Sprintf(": returned %s", since(s.At, s.Returned))
			}
			if !s.At.IsZero() {
				line += fmt.Sprintf("; step over %s", since(s.At, s.Done))
			}
			if s.Check != "" {
				line += "; " + s.Check
			}
			if s.Note != "" {
				line += "; " + s.Note
			}
			if s.Err != nil {
				line += "; **FAILED: " + s.Err.Error() + "**"
				passed = false
			}
			p("%s", line)
		}
	}
	hosts := map[string]int{}
	for _, s := range samples {
		if s.Kind == httpload.OK {
			hosts[s.Host]++
		}
	}
	p("")
	p("Answered by: %s.", counts(hosts))
	p("")
	if passed {
		p("Verdict: PASS (no request failed in the gated phases, every step happened).")
	} else {
		p("Verdict: FAIL.")
	}
	return report{text: b.String(), passed: passed}
}

// restartTimeline says, from the TERM on, when HAProxy took the host out
// and when baton exited, in the order they happened.
func restartTimeline(s step) string {
	exited := "exited " + since(s.At, s.Exited)
	switch {
	case s.Down.IsZero():
		return exited + "; HAProxy never took it out (the new master was ready before its checks failed twice)"
	case s.Down.After(s.Exited):
		return fmt.Sprintf("%s; HAProxy took it out only %s, UP again %s", exited, since(s.At, s.Down), since(s.At, s.Up))
	}
	return fmt.Sprintf("HAProxy DOWN %s, %s, HAProxy UP again %s", since(s.At, s.Down), exited, since(s.At, s.Up))
}
