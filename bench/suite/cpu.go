package main

import (
	"os"
	"strconv"
	"strings"
	"time"
)

// cpuTimes reads the machine's busy and total CPU time (in clock ticks)
// from the first line of /proc/stat.
func cpuTimes() (busy, total uint64, ok bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return 0, 0, false
	}
	for i, s := range f[1:] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, 0, false
		}
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total, true
}

// cpuUse is how busy the whole machine was during a run's load: the
// servers, the client and anything else running. A run whose peak second
// is near 100% was short of CPU, whoever took it.
type cpuUse struct {
	Avg, Peak float64 // percent of all CPUs: over the run, and its busiest second
	Saturated int     // seconds at 95% or more
}

// sampleCPU samples once a second until stop is closed.
func sampleCPU(stop <-chan struct{}) <-chan cpuUse {
	out := make(chan cpuUse, 1)
	go func() {
		var u cpuUse
		b0, t0, ok := cpuTimes()
		first, firstT := b0, t0
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for ok {
			select {
			case <-stop:
				if b, t, ok2 := cpuTimes(); ok2 && t > firstT {
					u.Avg = 100 * float64(b-first) / float64(t-firstT)
				}
				out <- u
				return
			case <-tick.C:
			}
			b, t, ok2 := cpuTimes()
			if !ok2 || t <= t0 {
				continue
			}
			pct := 100 * float64(b-b0) / float64(t-t0)
			u.Peak = max(u.Peak, pct)
			if pct >= 95 {
				u.Saturated++
			}
			b0, t0 = b, t
		}
		<-stop
		out <- u
	}()
	return out
}

// waitQuiet waits, up to limit, for a second in which the machine's CPUs
// are less than threshold percent busy, so that a run does not start in
// the middle of someone else's build or test suite. It returns how long it
// waited and whether the machine became quiet.
func waitQuiet(threshold float64, limit time.Duration) (time.Duration, bool) {
	began := time.Now()
	for {
		b0, t0, ok := cpuTimes()
		time.Sleep(time.Second)
		b1, t1, ok2 := cpuTimes()
		if !ok || !ok2 || t1 <= t0 {
			return time.Since(began), false
		}
		if 100*float64(b1-b0)/float64(t1-t0) < threshold {
			return time.Since(began) - time.Second, true
		}
		if time.Since(began) >= limit {
			return time.Since(began), false
		}
	}
}
