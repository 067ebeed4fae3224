package main

import (
	"net/http"
	"slices"
	"time"

	"github.com/baton-pm/baton/bench/internal/httpload"
	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// sample is one request of the load.
type sample struct {
	Start   time.Time
	Latency time.Duration
	Code    uint16
	Err     string
	Kind    httpload.Kind
	Host    string // who answered (from the body); "" if it failed
}

// loadGen is a constant-rate, open-loop load through HAProxy: a new
// connection per request (and HAProxy a new one per request to the host),
// no retry anywhere, so every failure is counted.
type loadGen struct {
	atk     *vegeta.Attacker
	results chan []sample
}

// startLoad starts rate requests per second to url until stop is called.
// Request n is due at (n+1)/rate from the start whatever happened to the
// earlier ones; vegeta starts more goroutines when all are busy, so a
// stalled host does not slow the client down.
func startLoad(url string, rate int) *loadGen {
	l := &loadGen{
		atk: vegeta.NewAttacker(
			vegeta.Client(httpload.NewClient(false, 10*time.Second)),
			vegeta.Workers(64),
			vegeta.MaxWorkers(1<<20),
			vegeta.MaxBody(256),
		),
		results: make(chan []sample, 1),
	}
	// A POST with a body: Go's client never replays it (httpload.NewClient).
	target := vegeta.NewStaticTargeter(vegeta.Target{
		Method: http.MethodPost, URL: url, Body: []byte("ping"),
		Header: http.Header{"Content-Type": []string{"text/plain"}},
	})
	go func() {
		var out []sample
		pacer := vegeta.ConstantPacer{Freq: rate, Per: time.Second}
		for r := range l.atk.Attack(target, pacer, 0, "fleet") {
			s := sample{Start: r.Timestamp, Latency: r.Latency, Code: r.Code, Err: r.Error,
				Kind: httpload.Classify(r.Code, r.Error)}
			if s.Kind == httpload.OK {
				if id, err := parseIdentity(string(r.Body)); err == nil {
					s.Host = id.Host
				} else {
					// A 200 that is not the app's answer is a failure too.
					s.Kind, s.Err = httpload.Other, err.Error()
				}
			}
			out = append(out, s)
		}
		slices.SortFunc(out, func(a, b sample) int { return a.Start.Compare(b.Start) })
		l.results <- out
	}()
	return l
}

// stop ends the load, waits for the requests in flight and returns every
// request, in the order they started.
func (l *loadGen) stop() []sample {
	l.atk.Stop()
	return <-l.results
}

// between returns the samples that started in [from, to).
func between(ss []sample, from, to time.Time) []sample {
	i, _ := slices.BinarySearchFunc(ss, from, func(s sample, t time.Time) int { return s.Start.Compare(t) })
	j, _ := slices.BinarySearchFunc(ss, to, func(s sample, t time.Time) int { return s.Start.Compare(t) })
	return ss[i:j]
}
