package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// throughputResult is scenario 1's closed-loop part in one connection
// mode: how many requests per second each server answers when clients
// send as fast as it answers.
type throughputResult struct {
	Mode   string
	Rounds map[string][]float64 // server → req/s of each round
	Failed map[string]int
	Err    error
}

func (t throughputResult) median(server string) float64 {
	rs := slices.Clone(t.Rounds[server])
	if len(rs) == 0 {
		return 0
	}
	slices.Sort(rs)
	if len(rs)%2 == 1 {
		return rs[len(rs)/2]
	}
	return (rs[len(rs)/2-1] + rs[len(rs)/2]) / 2
}

// measureThroughput starts every server at once (idle servers cost
// nothing) and, per connection mode, saturates them in turns: round after
// round, each server for -burst, in a rotating order, so that the machine
// drifting (heat, another process) hits all of them alike; the median
// round is the server's throughput.
func measureThroughput(cfg *config, good []byte, runDir string) []throughputResult {
	var servers []*server
	defer func() {
		for _, s := range servers {
			s.stop(45 * time.Second)
		}
	}()
	fail := func(err error) []throughputResult {
		var out []throughputResult
		for _, m := range cfg.modes {
			out = append(out, throughputResult{Mode: m, Err: err})
		}
		return out
	}
	if cfg.quietBelow > 0 {
		waitQuiet(cfg.quietBelow, cfg.quietWait)
	}
	for _, kind := range []string{"bare", "gunicorn", "baton"} {
		if kind != "bare" && !slices.Contains(cfg.servers, kind) {
			continue
		}
		dir, err := os.MkdirTemp("", "baton-bench-app-")
		if err != nil {
			return fail(err)
		}
		defer os.RemoveAll(dir)
		if err := deploy(dir, good); err != nil {
			return fail(err)
		}
		s, err := startServer(cfg, serverSpec{kind: kind, workers: cfg.workers}, dir, filepath.Join(runDir, "throughput-"+kind+".log"))
		if err != nil {
			return fail(err)
		}
		servers = append(servers, s)
		if _, _, err := s.waitReady(3 * time.Minute); err != nil {
			return fail(err)
		}
	}
	time.Sleep(time.Second)
	var out []throughputResult
	for _, mode := range cfg.modes {
		t := throughputResult{Mode: mode, Rounds: map[string][]float64{}, Failed: map[string]int{}}
		for round := range cfg.rounds {
			for i := range servers {
				s := servers[(i+round)%len(servers)]
				perSec, failed := saturate(s.url(), cfg.conns, cfg.burst, cfg.timeout, mode == modeKeep)
				t.Rounds[s.spec.kind] = append(t.Rounds[s.spec.kind], perSec)
				t.Failed[s.spec.kind] += failed
				fmt.Fprintf(os.Stderr, "      %s · %s · round %d: %.0f req/s\n", modeTitle(mode), s.spec.kind, round+1, perSec)
			}
		}
		out = append(out, t)
	}
	return out
}
