package main

import (
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

const rollupSample = `557f30512000-7ffcffc32000 ---p 00000000 00:00 0                          [rollup]
Rss:                1752 kB
Pss:                 269 kB
Pss_Dirty:           112 kB
Pss_Anon:            112 kB
Shared_Clean:       1600 kB
Private_Clean:        40 kB
Private_Dirty:       112 kB
Swap:                 10 kB
SwapPss:               7 kB
`

func TestParseRollupSumsPSSWithSwapAndUSS(t *testing.T) {
	pss, uss, rss, err := parseRollup(strings.NewReader(rollupSample))
	if err != nil {
		t.Fatal(err)
	}
	// Pss_Dirty and Pss_Anon are parts of Pss, not more of it.
	if pss != 269+7 || uss != 40+112 || rss != 1752 {
		t.Errorf("pss %d, uss %d, rss %d; want 276, 152, 1752", pss, uss, rss)
	}
	if _, _, _, err := parseRollup(strings.NewReader("Rss: 10 kB\n")); err == nil {
		t.Error("a rollup without Pss parsed without an error")
	}
}

func TestDescendantsAndRollupOfARealChild(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatalf("start sleep: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	self := cmd.Process.Pid
	tree := descendants(self)
	if !slices.Equal(tree, []int{self}) {
		t.Errorf("descendants of a leaf %d = %v", self, tree)
	}
	p, err := readRollup(self)
	if err != nil {
		t.Fatalf("readRollup: %v (reading smaps_rollup needs Linux 4.14+ and the right to ptrace the process)", err)
	}
	if p.PSS <= 0 || p.USS <= 0 || p.RSS < p.USS || p.Comm != "sleep" {
		t.Errorf("rollup of sleep %d = %+v, want positive PSS and USS, RSS ≥ USS, comm sleep", self, p)
	}
}

func TestServerArgvPreloadVariants(t *testing.T) {
	cfg := &config{baton: "/b/baton", gunicorn: "/usr/bin/gunicorn", uvicorn: "/usr/bin/uvicorn", python: "/usr/bin/python3"}
	argv := func(kind string, app appSpec) string {
		return strings.Join(serverArgv(cfg, serverSpec{kind: kind, workers: 4, app: app}, "/d", 8000), " ")
	}
	cases := []struct {
		kind string
		app  appSpec
		want []string // substrings, in order
		not  string
	}{
		{kindGunicorn, appSpec{}, []string{"-w 4", "app:app"}, "--preload"},
		{kindGunicornPreload, appSpec{}, []string{"-w 4", "--preload app:app"}, ""},
		{kindBaton, appSpec{}, []string{"--pid /d/baton.pid", "-- /usr/bin/uvicorn --fd 3 --no-access-log app:app"}, "--preload"},
		{kindBatonPreload, appSpec{}, []string{"--pid /d/baton.pid", "--preload app --", "/usr/bin/uvicorn --fd 3"}, ""},
		{kindBatonPreload, djangoApp, []string{"--preload proj.asgi --", "/usr/bin/python3 -m uvicorn --fd 3 --no-access-log proj.asgi:application"}, ""},
		{kindGunicornPreload, djangoApp, []string{"--preload proj.asgi:application"}, ""},
	}
	for _, c := range cases {
		got := argv(c.kind, c.app)
		rest := got
		for _, w := range c.want {
			i := strings.Index(rest, w)
			if i < 0 {
				t.Errorf("%s %+v: %q lacks %q (in order)", c.kind, c.app, got, w)
				break
			}
			rest = rest[i+len(w):]
		}
		if c.not != "" && strings.Contains(got, c.not) {
			t.Errorf("%s: %q has %q", c.kind, got, c.not)
		}
	}
	if family(kindBatonPreload) != kindBaton || family(kindGunicornPreload) != kindGunicorn || preloads(kindBaton) || !preloads(kindBatonPreload) {
		t.Error("family/preloads disagree with the kind names")
	}
}

func TestPlanRunsEachScenarioWithItsServersOnly(t *testing.T) {
	cfg, err := parseFlags([]string{"-baton", "/b", "-scenarios", "hups,preload-memory,preload-boot", "-modes", "close"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range plan(cfg) {
		got = append(got, s.Scenario+"/"+s.Server)
	}
	want := []string{"hups/gunicorn", "hups/baton", "hups/baton-preload",
		"preload-boot/gunicorn", "preload-boot/gunicorn-preload", "preload-boot/baton", "preload-boot/baton-preload"}
	if !slices.Equal(got, want) {
		t.Errorf("plan = %v, want %v (preload-memory is measured on its own)", got, want)
	}
	cfg, err = parseFlags([]string{"-baton", "/b", "-scenarios", "scale", "-servers", "baton,baton-preload", "-modes", "close"})
	if err != nil {
		t.Fatal(err)
	}
	if p := plan(cfg); len(p) != 2 || p[0].Server != kindBaton || p[1].Server != kindBatonPreload {
		t.Errorf("plan with -servers baton,baton-preload = %v", p)
	}
	cfg, err = parseFlags([]string{"-baton", "/b", "-scenarios", "hups,preload"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"hups", "preload-memory", "preload-boot", "scale"}; !slices.Equal(cfg.scenarios, want) {
		t.Errorf("-scenarios hups,preload = %v, want %v", cfg.scenarios, want)
	}
	if _, err := parseFlags([]string{"-baton", "/b", "-servers", "baton-prelaod"}); err == nil {
		t.Error("an unknown server was accepted")
	}
}

func TestAllNewAnsweredIsWhenTheLastNewWorkerFirstAnswered(t *testing.T) {
	ms := time.Millisecond
	ok := func(start, lat time.Duration, pid int) sample {
		return sample{Start: start, Latency: lat, PID: pid, Kind: OK}
	}
	r := &runResult{Workers: 2, Actions: []action{
		{Kind: "reload", At: 1000 * ms, Done: 1500 * ms, Before: []int{10, 11}},
		{Kind: "reload", At: 5000 * ms, Done: 5500 * ms, Before: []int{20, 21}},
	}, Samples: []sample{
		ok(900*ms, 5*ms, 20), // before the reload: not counted
		ok(1100*ms, 5*ms, 10),
		ok(1200*ms, 10*ms, 20),
		ok(1300*ms, 5*ms, 11),
		{Start: 1400 * ms, Latency: ms, PID: 21, Kind: Refused}, // failed: does not count
		ok(1600*ms, 20*ms, 20),
		ok(1700*ms, 40*ms, 21), // the last new worker: 1740 ms
		ok(5100*ms, 5*ms, 30),  // after the next reload
	}}
	d, seen := allNewAnswered(r, 0)
	if !seen || d != 740*ms {
		t.Errorf("allNewAnswered = %s, %v; want 740ms, true", d, seen)
	}
	if _, seen := allNewAnswered(r, 1); seen {
		t.Error("the second reload's one new worker was taken for both")
	}
}

func TestMemoryReportTakesEachServersMedianRound(t *testing.T) {
	snap := func(kib ...int64) memSnapshot {
		var s memSnapshot
		for i, k := range kib {
			role := "worker"
			if i == 0 {
				role = "master"
			}
			s.Procs = append(s.Procs, memProc{PID: 100 + i, Role: role, PSS: k, USS: k / 2})
		}
		return s
	}
	run := func(kind string, round int, total int64) *memoryRun {
		return &memoryRun{Server: kind, Round: round, Workers: 1, Fresh: snap(total/2, total/2), Warm: snap(total/2, total/2)}
	}
	rep := &memoryReport{cfg: &config{workers: 1, warmup: 1, memoryRounds: 3}, runs: []*memoryRun{
		run(kindGunicornPreload, 1, 100<<10), run(kindBatonPreload, 1, 90<<10),
		run(kindBatonPreload, 2, 130<<10), run(kindGunicornPreload, 2, 120<<10),
		run(kindGunicornPreload, 3, 110<<10), {Server: kindBatonPreload, Round: 3, Err: errors.New("boom")},
		run(kindBatonPreload, 4, 105<<10),
	}}
	if m := rep.median(kindGunicornPreload); m == nil || m.Round != 3 {
		t.Fatalf("gunicorn-preload's median round = %+v, want round 3 (110 MiB of 100, 110, 120)", m)
	}
	if m := rep.median(kindBatonPreload); m == nil || m.Round != 4 {
		t.Fatalf("baton-preload's median round = %+v, want round 4 (105 MiB of 90, 105, 130; the failed round left out)", m)
	}
	var b strings.Builder
	rep.targets(&b)
	if !strings.Contains(b.String(), "105.0 MiB ÷ 110.0 MiB") || !strings.Contains(b.String(), "| met |") {
		t.Errorf("target row = %q, want 105.0 ÷ 110.0 MiB, met", b.String())
	}
	b.Reset()
	rep.render(&b)
	for _, want := range []string{"90.0, 130.0, failed, 105.0 MiB", "round 3: **boom**"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("the memory section lacks %q:\n%s", want, b.String())
		}
	}
	if !rep.failed() {
		t.Error("a failed round does not make the scenario report a failure")
	}
}

// The preload-boot app is app.py with its simulated import time spent on
// the CPU; an app.py without the line is an error, not a silent sleep.
func TestCPUImportTurnsTheSleepIntoABusyLoop(t *testing.T) {
	apps, err := readApps("../app")
	if err != nil {
		t.Fatal(err)
	}
	cpu := string(apps[appCPU])
	if strings.Contains(cpu, "time.sleep(1.5)") || !strings.Contains(cpu, "time.process_time() < _deadline") {
		t.Errorf("the CPU app still sleeps or does not burn CPU:\n%s", cpu)
	}
	if _, err := cpuImport([]byte("import time\n")); err == nil {
		t.Error("an app without the sleep line was turned into a CPU app")
	}
}
