package main

import (
	"cmp"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/baton-pm/baton/bench/internal/httpload"
	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// attack runs a constant-rate, open-loop attack until stop is closed:
// request n (from 0) is due at start + (n+1)/rate whatever happened to the
// earlier ones, and vegeta starts another worker goroutine whenever all
// are busy (MaxWorkers is unbounded), so a stalled server does not slow
// the client down. It returns every result, with times relative to start
// (taken just before the attack begins, and also the origin of the
// scenario's schedule).
func attack(url string, rate int, timeout time.Duration, keepAlive bool, start time.Time, stop <-chan struct{}) []sample {
	atk := vegeta.NewAttacker(
		vegeta.Client(httpload.NewClient(keepAlive, timeout)),
		vegeta.Workers(64),
		vegeta.MaxWorkers(1<<20),
		vegeta.MaxBody(64),
	)
	go func() {
		<-stop
		atk.Stop()
	}()
	pacer := vegeta.ConstantPacer{Freq: rate, Per: time.Second}
	interval := time.Second / time.Duration(rate)
	var out []sample
	for r := range atk.Attack(postTargeter(url), pacer, 0, "bench") {
		s := sample{
			Seq:     r.Seq,
			Start:   r.Timestamp.Sub(start),
			Latency: r.Latency,
			Code:    r.Code,
			Err:     r.Error,
			Kind:    Classify(r.Code, r.Error),
		}
		// vegeta's ConstantPacer sends hit n at (n+1)/rate.
		s.Lag = s.Start - time.Duration(r.Seq+1)*interval
		if s.Kind == OK {
			s.PID, _ = strconv.Atoi(strings.TrimSpace(string(r.Body)))
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b sample) int { return cmp.Compare(a.Seq, b.Seq) })
	return out
}

// postTargeter is the one request of every benchmark: a POST with a
// 4-byte body (never replayed by Go's client, see noReplay).
func postTargeter(url string) vegeta.Targeter {
	return vegeta.NewStaticTargeter(vegeta.Target{
		Method: http.MethodPost,
		URL:    url,
		Body:   []byte("ping"),
		Header: http.Header{"Content-Type": []string{"text/plain"}},
	})
}

// saturate is a closed-loop load: conns clients, each sending its next
// request as soon as the last was answered, for d. It returns the
// successful responses per second and the failures.
func saturate(url string, conns int, d, timeout time.Duration, keepAlive bool) (perSec float64, failed int) {
	atk := vegeta.NewAttacker(
		vegeta.Client(httpload.NewClient(keepAlive, timeout)),
		vegeta.Workers(uint64(conns)),
		vegeta.MaxWorkers(uint64(conns)),
		vegeta.MaxBody(64),
	)
	ok := 0
	began := time.Now()
	for r := range atk.Attack(postTargeter(url), vegeta.ConstantPacer{}, d, "saturate") {
		if Classify(r.Code, r.Error) == OK {
			ok++
		} else {
			failed++
		}
	}
	return float64(ok) / time.Since(began).Seconds(), failed
}

// probe reports whether the server answers 200 now.
func probe(url string) bool {
	c := httpload.NewClient(false, 2*time.Second)
	resp, err := c.Post(url, "text/plain", strings.NewReader("ping"))
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
