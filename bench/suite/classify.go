package main

import (
	"math"
	"regexp"
	"strconv"
	"time"

	"github.com/baton-pm/baton/bench/internal/httpload"
)

// Kind is what became of one request; the classification is shared with
// the fleet rollout (bench/fleet) in httpload.
type Kind = httpload.Kind

// The kinds of outcome, in the report's column order.
const (
	OK       = httpload.OK
	Refused  = httpload.Refused
	Reset    = httpload.Reset
	EOF      = httpload.EOF
	Timeout  = httpload.Timeout
	Non2xx   = httpload.Non2xx
	Other    = httpload.Other
	numKinds = httpload.NumKinds
)

// Classify sorts one result into a Kind (see httpload.Classify).
func Classify(code uint16, errText string) Kind { return httpload.Classify(code, errText) }

// sample is one request as the benchmark keeps it.
type sample struct {
	Seq     uint64
	Start   time.Duration // when the request started, since the load started
	Lag     time.Duration // how late it started against the constant-rate schedule
	Latency time.Duration
	Code    uint16
	Err     string
	PID     int // the worker that answered, from the body; 0 if none
	Kind    Kind
}

// window is a span of the run, since the load started: [From, To].
type window struct{ From, To time.Duration }

func inAny(t time.Duration, ws []window) bool {
	for _, w := range ws {
		if t >= w.From && t <= w.To {
			return true
		}
	}
	return false
}

// stats are the numbers of one table row.
type stats struct {
	Requests      int
	Counts        [numKinds]int
	Failed        int
	P50, P99, Max time.Duration
	SteadyP99     time.Duration
	ReloadP99     time.Duration
	ReloadMax     time.Duration
	SteadyN       int
	ReloadN       int
	Ratio         float64 // ReloadP99 / SteadyP99; NaN without both
	Errors        map[string]int
	PIDs          int
	MaxLag        time.Duration
	P99Lag        time.Duration
	FirstStart    time.Duration
	LastStart     time.Duration
	AchievedRate  float64
	FailedAfter   int // requests started after a given time that failed (see computeStats)
	RequestsAfter int
}

// computeStats summarizes samples; reload windows split steady from
// reload latencies, and failures are also counted for requests that
// started at or after `after` (if after >= 0).
func computeStats(ss []sample, reloads []window, after time.Duration) stats {
	st := stats{Requests: len(ss), Errors: map[string]int{}, Ratio: math.NaN()}
	if len(ss) == 0 {
		return st
	}
	var all, steady, reload, lags []time.Duration
	pids := map[int]bool{}
	st.FirstStart, st.LastStart = ss[0].Start, ss[0].Start
	for _, s := range ss {
		st.Counts[s.Kind]++
		if s.Kind != OK {
			st.Failed++
			key := s.Kind.String() + ": " + normalizeErr(s.Err)
			if s.Err == "" {
				key = s.Kind.String() + ": status " + strconv.Itoa(int(s.Code))
			}
			st.Errors[key]++
		}
		if s.PID != 0 {
			pids[s.PID] = true
		}
		all = append(all, s.Latency)
		lags = append(lags, s.Lag)
		if inAny(s.Start, reloads) {
			reload = append(reload, s.Latency)
		} else {
			steady = append(steady, s.Latency)
		}
		if after >= 0 && s.Start >= after {
			st.RequestsAfter++
			if s.Kind != OK {
				st.FailedAfter++
			}
		}
		st.FirstStart = min(st.FirstStart, s.Start)
		st.LastStart = max(st.LastStart, s.Start)
	}
	st.PIDs = len(pids)
	st.P50, st.P99, st.Max = percentile(all, 0.50), percentile(all, 0.99), percentile(all, 1)
	st.SteadyN, st.ReloadN = len(steady), len(reload)
	st.SteadyP99 = percentile(steady, 0.99)
	st.ReloadP99 = percentile(reload, 0.99)
	st.ReloadMax = percentile(reload, 1)
	if len(steady) > 0 && len(reload) > 0 && st.SteadyP99 > 0 {
		st.Ratio = float64(st.ReloadP99) / float64(st.SteadyP99)
	}
	st.P99Lag, st.MaxLag = percentile(lags, 0.99), percentile(lags, 1)
	if span := st.LastStart - st.FirstStart; span > 0 && len(ss) > 1 {
		st.AchievedRate = float64(len(ss)-1) / span.Seconds()
	}
	return st
}

// percentile is the nearest-rank percentile p (0 < p <= 1) of ds (see
// httpload.Percentile).
func percentile(ds []time.Duration, p float64) time.Duration { return httpload.Percentile(ds, p) }

var ephemeral = regexp.MustCompile(`(\d+\.\d+\.\d+\.\d+):\d+->`)

// normalizeErr hides the client's ephemeral port in an error string, so
// that the same error on different connections reads alike.
func normalizeErr(e string) string { return ephemeral.ReplaceAllString(e, "$1:*->") }
