package main

import (
	"bufio"
	"fmt"
	"math"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// soakSample is the master's footprint after some reloads.
type soakSample struct {
	Reloads    int
	At         time.Duration
	FDs        int
	Threads    int
	RSSKiB     int64
	AnonKiB    int64 // of RSSKiB: the heap and stacks
	Goroutines int   // from baton's own /metrics (go_goroutines); -1 if unread
	Zombies    int   // children of the master that exited and were not reaped yet
}

// sampleMaster records the current master's footprint once the reload
// just done has settled: `baton reload` returns when the new generation
// serves, while the old workers may still be finishing their requests,
// each with its pipe, notify socket and goroutines in the master. Those
// are the reload's, not a leak, so the sample waits (up to 5 s) until only
// the current workers are left.
func (rc *runCtx) sampleMaster(reloads int) {
	deadline := time.Now().Add(5 * time.Second)
	for len(rc.srv.workerPIDs()) > rc.srv.spec.workers && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	pid := rc.srv.master()
	s := soakSample{Reloads: reloads, At: time.Since(rc.start), Goroutines: -1}
	if fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); err == nil {
		s.FDs = len(fds)
	}
	s.Threads = statusField(pid, "Threads:")
	mem := readMem(pid)
	s.RSSKiB, s.AnonKiB = mem.RSS, mem.Anon
	for _, c := range children(pid) {
		if c.state == "Z" {
			s.Zombies++
		}
	}
	if rc.srv.spec.metrics != 0 {
		s.Goroutines = scrapeGauge(fmt.Sprintf("http://127.0.0.1:%d/metrics", rc.srv.spec.metrics), "go_goroutines")
	}
	rc.mu.Lock()
	rc.soak = append(rc.soak, s)
	rc.mu.Unlock()
}

// statusField reads an integer field of /proc/PID/status; 0 if unknown.
func statusField(pid int, name string) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

// scrapeGauge reads one unlabelled gauge from a Prometheus text page; -1
// if it cannot.
func scrapeGauge(url, name string) int {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return -1
			}
			return int(f)
		}
	}
	return -1
}

// soakGrowth compares the start of a soak with its end: the median of
// the first and of the last fifth of the samples (the medians ride out a
// sample that caught a reload's transient fd or goroutine), and the
// least-squares slope per 1,000 reloads over all samples.
type soakGrowth struct {
	Name            string
	First, Last     float64
	PerThousand     float64
	Max             float64
	Limit           float64 // allowed growth first→last
	Unit            string
	OK, Unavailable bool
}

func soakTrends(ss []soakSample) []soakGrowth {
	type metric struct {
		name, unit string
		limit      float64
		get        func(soakSample) float64
	}
	metrics := []metric{
		{"open fds", "", 0, func(s soakSample) float64 { return float64(s.FDs) }},
		{"goroutines", "", 0, func(s soakSample) float64 { return float64(s.Goroutines) }},
		{"threads", "", 2, func(s soakSample) float64 { return float64(s.Threads) }},
		// The Go heap grows and shrinks with the GC's pacing; 1 MiB of
		// RSS between the start and the end is noise, steady growth is not.
		{"RSS", "MiB", 1, func(s soakSample) float64 { return float64(s.RSSKiB) / 1024 }},
		{"RSS, anonymous part", "MiB", 1, func(s soakSample) float64 { return float64(s.AnonKiB) / 1024 }},
		{"zombie children", "", 0, func(s soakSample) float64 { return float64(s.Zombies) }},
	}
	var out []soakGrowth
	for _, m := range metrics {
		g := soakGrowth{Name: m.name, Unit: m.unit, Limit: m.limit}
		var xs, ys []float64
		for _, s := range ss {
			v := m.get(s)
			if v < 0 {
				g.Unavailable = true
			}
			xs, ys = append(xs, float64(s.Reloads)), append(ys, v)
			g.Max = max(g.Max, v)
		}
		if len(ys) < 5 || g.Unavailable {
			g.Unavailable = true
			out = append(out, g)
			continue
		}
		fifth := max(1, len(ys)/5)
		g.First, g.Last = median(ys[:fifth]), median(ys[len(ys)-fifth:])
		g.PerThousand = slope(xs, ys) * 1000
		g.OK = g.Last-g.First <= g.Limit
		if m.name == "zombie children" {
			// A zombie seen mid-reap is fine; one still there at the end is a leak.
			g.OK = ys[len(ys)-1] == 0
		}
		out = append(out, g)
	}
	return out
}

func median(vs []float64) float64 {
	c := slices.Clone(vs)
	slices.Sort(c)
	if len(c)%2 == 1 {
		return c[len(c)/2]
	}
	return (c[len(c)/2-1] + c[len(c)/2]) / 2
}

// slope is the least-squares slope of ys over xs.
func slope(xs, ys []float64) float64 {
	n := float64(len(xs))
	var sx, sy, sxx, sxy float64
	for i := range xs {
		sx += xs[i]
		sy += ys[i]
		sxx += xs[i] * xs[i]
		sxy += xs[i] * ys[i]
	}
	d := n*sxx - sx*sx
	if d == 0 {
		return math.NaN()
	}
	return (n*sxy - sx*sy) / d
}
