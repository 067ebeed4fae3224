package main

import (
	"math"
	"testing"
	"time"
)

func TestStatsWindows(t *testing.T) {
	ms := time.Millisecond
	var ss []sample
	for i := range 100 {
		ss = append(ss, sample{Start: time.Duration(i) * 100 * ms, Latency: 5 * ms, Kind: OK, PID: 1 + i%4})
	}
	// Requests started in [2s, 3s] are slow; one after 8s failed.
	for i := range ss {
		if ss[i].Start >= 2*time.Second && ss[i].Start <= 3*time.Second {
			ss[i].Latency = 50 * ms
		}
	}
	ss[90].Kind, ss[90].Err = Refused, "connect: connection refused"
	st := computeStats(ss, []window{{2 * time.Second, 3 * time.Second}}, 8*time.Second)
	if st.ReloadN != 11 || st.SteadyN != 89 {
		t.Fatalf("reload/steady split %d/%d, want 11/89", st.ReloadN, st.SteadyN)
	}
	if st.SteadyP99 != 5*ms || st.ReloadP99 != 50*ms || st.ReloadMax != 50*ms {
		t.Errorf("steady p99 %s, reload p99 %s, reload max %s", st.SteadyP99, st.ReloadP99, st.ReloadMax)
	}
	if math.Abs(st.Ratio-10) > 1e-9 {
		t.Errorf("ratio %v, want 10", st.Ratio)
	}
	if st.Failed != 1 || st.Counts[Refused] != 1 || st.FailedAfter != 1 || st.RequestsAfter != 20 {
		t.Errorf("failed %d, refused %d, failed after %d of %d", st.Failed, st.Counts[Refused], st.FailedAfter, st.RequestsAfter)
	}
	if st.PIDs != 4 {
		t.Errorf("pids %d, want 4", st.PIDs)
	}
}

func TestHUPSchedule(t *testing.T) {
	at, err := hupSchedule(30*time.Second, 4, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	want := []time.Duration{5 * time.Second, 11 * time.Second, 17 * time.Second, 23 * time.Second}
	for i := range want {
		if at[i] != want[i] {
			t.Fatalf("schedule %v, want %v", at, want)
		}
	}
	if at, err := hupSchedule(12*time.Second, 2, 3*time.Second); err != nil || at[0] != 4*time.Second || at[1] != 8*time.Second {
		t.Fatalf("quick schedule %v, %v", at, err)
	}
	if _, err := hupSchedule(10*time.Second, 8, 3*time.Second); err == nil {
		t.Fatal("8 HUPs in 10s with a 3s window should be refused")
	}
}

func TestParseBatonLine(t *testing.T) {
	ev, ok := parseBatonLine(`INFO:     Started{"time":"2025-01-01T00:00:00Z","level":"INFO","msg":"reload succeeded","generation":2,"duration":"1.6s"}`)
	if !ok || ev.Msg != "reload succeeded" || ev.str("generation") != "2" || ev.str("duration") != "1.6s" {
		t.Fatalf("got %+v, %v", ev, ok)
	}
	if _, ok := parseBatonLine("INFO:     Application startup complete."); ok {
		t.Fatal("a worker's line is not a baton record")
	}
}
