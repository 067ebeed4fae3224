package main

import (
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Kind is what became of one request.
type Kind int

// The kinds of outcome, in the report's column order.
const (
	OK      Kind = iota // 2xx, no error
	Refused             // "connection refused": nothing was listening
	Reset               // "connection reset": the server side aborted the connection
	EOF                 // "EOF": the connection closed before a whole response
	Timeout             // "timeout" / "deadline exceeded": no answer within the client's timeout
	Non2xx              // status >= 300 (or < 200), or status 0 without a network error
	Other               // any other error
	numKinds
)

var kindNames = [numKinds]string{"ok", "refused", "reset", "EOF", "timeout", "non-2xx", "other"}

func (k Kind) String() string {
	if k < 0 || k >= numKinds {
		return "?"
	}
	return kindNames[k]
}

// Classify sorts one result into a Kind from its status code and error
// string, as vegeta reports them: code 0 means no response was read, and
// for a response outside 1xx–3xx vegeta sets the error to the status line.
func Classify(code uint16, errText string) Kind {
	if code != 0 {
		if code >= 200 && code < 300 {
			if errText == "" {
				return OK
			}
			// A 2xx whose body could not be read: the error says why.
			return classifyError(errText)
		}
		return Non2xx
	}
	if errText == "" {
		return Non2xx
	}
	return classifyError(errText)
}

func classifyError(errText string) Kind {
	e := strings.ToLower(errText)
	switch {
	case strings.Contains(e, "connection refused"):
		return Refused
	case strings.Contains(e, "connection reset"):
		return Reset
	case strings.Contains(e, "eof"):
		return EOF
	case strings.Contains(e, "timeout"), strings.Contains(e, "deadline exceeded"):
		return Timeout
	}
	return Other
}

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

// percentile is the nearest-rank percentile p (0 < p <= 1) of ds; it sorts
// a copy. Zero for no values.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	c := slices.Clone(ds)
	slices.Sort(c)
	i := int(math.Ceil(p*float64(len(c)))) - 1
	i = max(0, min(i, len(c)-1))
	return c[i]
}

var ephemeral = regexp.MustCompile(`(\d+\.\d+\.\d+\.\d+):\d+->`)

// normalizeErr hides the client's ephemeral port in an error string, so
// that the same error on different connections reads alike.
func normalizeErr(e string) string { return ephemeral.ReplaceAllString(e, "$1:*->") }
