package main

import "testing"

func zombieTrend(t *testing.T, zombies []int) soakGrowth {
	t.Helper()
	var ss []soakSample
	for i, z := range zombies {
		ss = append(ss, soakSample{Reloads: i * 10, FDs: 20, Threads: 8, RSSKiB: 6000, AnonKiB: 2000, Goroutines: 12, Zombies: z})
	}
	for _, g := range soakTrends(ss) {
		if g.Name == "zombie children" {
			return g
		}
	}
	t.Fatal("soakTrends reports no zombie children")
	return soakGrowth{}
}

func TestSoakZombies(t *testing.T) {
	if g := zombieTrend(t, []int{0, 0, 1, 0, 0, 0, 1, 0, 0, 0}); !g.OK {
		t.Errorf("zombies seen mid-reap but none at the end: want OK, got %+v", g)
	}
	// The median of the last fifth is 0 here: only the last sample tells.
	if g := zombieTrend(t, []int{0, 0, 0, 0, 0, 0, 0, 0, 0, 1}); g.OK {
		t.Errorf("a zombie left at the end: want NOT OK, got %+v", g)
	}
}

func TestSoakGrowth(t *testing.T) {
	var ss []soakSample
	for i := range 20 {
		ss = append(ss, soakSample{Reloads: i * 10, FDs: 20 + i/5, Threads: 8, RSSKiB: 6000, AnonKiB: 2000, Goroutines: 12})
	}
	for _, g := range soakTrends(ss) {
		if want := g.Name != "open fds"; g.OK != want {
			t.Errorf("%s: OK = %v, want %v (%+v)", g.Name, g.OK, want, g)
		}
	}
}
