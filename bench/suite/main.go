// Command suite is baton's proof: a chaos and performance suite that
// measures what clients see under baton and under Gunicorn, side by side,
// with the same ASGI app and the same load on the same machine in the same
// run. bench/run builds baton and runs it; see bench/README.md.
//
// Each scenario (steady load, HUPs, a binary upgrade, a bad deploy, kill -9
// of workers, a reload storm, many workers, a soak) runs once per server
// and connection mode (a new connection per request; keep-alive) with
// fresh servers, under an open-loop constant-rate POST load (vegeta), and
// every request is classified. It prints a markdown report, writes it and
// the latency plots under -results.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

type config struct {
	rate         int
	duration     time.Duration
	hups         int
	upgrades     int
	killEvery    time.Duration
	stormReloads int
	scaleWorkers int
	bootWorkers  int
	bootReloads  int
	warmup       int
	memoryRounds int
	djangoAdmin  string
	soakReloads  int
	soakEvery    int
	maxRun       time.Duration
	conns        int
	burst        time.Duration
	rounds       int
	quick        bool
	window       time.Duration
	workers      int
	timeout      time.Duration
	baton        string
	gunicorn     string
	uvicorn      string
	python       string
	appDir       string
	resultsDir   string
	modes        []string
	scenarios    []string
	servers      []string
	cmdline      string
	batonFlags   []string
	quietBelow   float64
	quietWait    time.Duration
	// allowOthers runs even with other servers on the machine (others.go).
	allowOthers bool
}

const (
	modeClose = "close"
	modeKeep  = "keepalive"
)

func parseFlags(args []string) (*config, error) {
	cfg := &config{}
	fs := flag.NewFlagSet("suite", flag.ContinueOnError)
	fs.IntVar(&cfg.rate, "rate", 400, "requests per second (constant, open loop)")
	fs.DurationVar(&cfg.duration, "duration", 30*time.Second, "load duration of each fixed-length run (steady, hups, upgrade, bad, kill)")
	fs.IntVar(&cfg.hups, "hups", 4, "HUPs in the hups scenario, evenly spaced")
	fs.IntVar(&cfg.upgrades, "upgrades", 2, "binary upgrades in the upgrade scenario, evenly spaced")
	fs.DurationVar(&cfg.killEvery, "kill-every", 5*time.Second, "kill scenario: SIGKILL a random worker this often")
	fs.IntVar(&cfg.stormReloads, "storm", 100, "storm scenario: reloads back to back")
	fs.IntVar(&cfg.scaleWorkers, "scale-workers", 64, "scale scenario: workers per server")
	fs.IntVar(&cfg.bootWorkers, "boot-workers", 8, "preload-boot scenario: workers per server")
	fs.IntVar(&cfg.bootReloads, "boot-reloads", 3, "preload-boot scenario: reloads, one after the other")
	fs.IntVar(&cfg.warmup, "warmup", 300, "preload-memory scenario: requests each worker answers before memory is measured")
	fs.IntVar(&cfg.memoryRounds, "memory-rounds", 3, "preload-memory scenario: measurements per server, in a rotating order (the median counts)")
	fs.StringVar(&cfg.djangoAdmin, "django-admin", "/usr/bin/django-admin", "preload-memory scenario: django-admin that creates the Django project (Debian's python3-django)")
	fs.IntVar(&cfg.soakReloads, "soak", 1000, "soak scenario: reloads back to back (each connection mode)")
	fs.IntVar(&cfg.soakEvery, "soak-every", 10, "soak scenario: sample the master after every N reloads")
	fs.DurationVar(&cfg.maxRun, "max-run", 20*time.Minute, "stop any run's load after this long")
	fs.IntVar(&cfg.conns, "conns", 32, "steady scenario, throughput part: concurrent closed-loop clients")
	fs.DurationVar(&cfg.burst, "burst", 5*time.Second, "steady scenario, throughput part: length of each server's turn")
	fs.IntVar(&cfg.rounds, "rounds", 5, "steady scenario, throughput part: turns per server (the median counts)")
	fs.BoolVar(&cfg.quick, "quick", false, "fast check of the suite itself: -rate 200 -duration 12s -hups 2 -upgrades 1 -storm 10 -scale-workers 16 -soak 100 -rounds 2 -burst 3s -boot-reloads 2 -warmup 100 -memory-rounds 1 (explicit flags still win)")
	fs.DurationVar(&cfg.window, "window", 3*time.Second, "reload window after each action: requests started in [action, action+window] (or until it took effect and the workers from before it exited, if later) are \"during a reload\"")
	fs.IntVar(&cfg.workers, "workers", 4, "workers of each server")
	fs.DurationVar(&cfg.timeout, "timeout", 10*time.Second, "client timeout of one request")
	fs.StringVar(&cfg.baton, "baton", "", "path of the baton binary to measure (bench/run builds it)")
	fs.StringVar(&cfg.gunicorn, "gunicorn", "/usr/bin/gunicorn", "path of gunicorn")
	fs.StringVar(&cfg.uvicorn, "uvicorn", "/usr/bin/uvicorn", "path of uvicorn")
	fs.StringVar(&cfg.python, "python", "/usr/bin/python3", "python that runs gunicorn and uvicorn (for their versions)")
	fs.StringVar(&cfg.appDir, "app", "bench/app", "directory with app.py and app_broken.py")
	fs.StringVar(&cfg.resultsDir, "results", "bench/results", "where the report, plots, logs and raw results go")
	modes := fs.String("modes", "close,keepalive", "connection modes: close (new connection per request), keepalive")
	names := make([]string, len(scenarios))
	for i, sc := range scenarios {
		names[i] = sc.name
	}
	scenarioList := fs.String("scenarios", strings.Join(names, ","), "scenarios to run, in this order; \"preload\" stands for "+strings.Join(preloadGroup, ","))
	servers := fs.String("servers", strings.Join(serverKinds, ","), "servers to measure, where a scenario has them (bare: the workers with no master, steady scenario only; gunicorn-preload and baton-preload: with --preload)")
	fs.Float64Var(&cfg.quietBelow, "quiet-below", 30, "before each run, wait for a second with the machine's CPUs less than this percent busy (0: don't wait)")
	fs.DurationVar(&cfg.quietWait, "quiet-wait", 2*time.Minute, "wait at most this long for a quiet machine, then start anyway")
	fs.BoolVar(&cfg.allowOthers, "allow-other-servers", false, "run even when baton, gunicorn or uvicorn processes not the suite's are running (they compete for the CPUs and share the interpreter's pages with the trees measured)")
	batonFlags := fs.String("baton-flags", "", "extra flags for `baton run`, space-separated (say \"--reload-strategy rolling\"); the report shows them")
	fs.StringVar(&cfg.cmdline, "cmdline", "", "the command line to record in the report (default: this program's)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if cfg.quick {
		quick := map[string]func(){
			"rate": func() { cfg.rate = 200 }, "duration": func() { cfg.duration = 12 * time.Second },
			"hups": func() { cfg.hups = 2 }, "upgrades": func() { cfg.upgrades = 1 }, "storm": func() { cfg.stormReloads = 10 },
			"scale-workers": func() { cfg.scaleWorkers = 16 }, "soak": func() { cfg.soakReloads = 100 },
			"boot-reloads": func() { cfg.bootReloads = 2 }, "warmup": func() { cfg.warmup = 100 },
			"memory-rounds": func() { cfg.memoryRounds = 1 },
			"rounds":        func() { cfg.rounds = 2 }, "burst": func() { cfg.burst = 3 * time.Second },
		}
		for name, apply := range quick {
			if !set[name] {
				apply()
			}
		}
	}
	cfg.modes = splitList(*modes)
	cfg.scenarios = expandScenarios(splitList(*scenarioList))
	cfg.servers = splitList(*servers)
	cfg.batonFlags = strings.Fields(*batonFlags)
	if cfg.cmdline == "" {
		cfg.cmdline = strings.Join(os.Args, " ")
	}
	return cfg, cfg.validate()
}

// preloadGroup is what -scenarios preload runs: issue 15's benchmarks,
// each with every server it compares.
var preloadGroup = []string{scenarioMemory, scenarioBoot, scenarioScale, scenarioHUPs}

// expandScenarios replaces "preload" with its scenarios, once each.
func expandScenarios(names []string) []string {
	var out []string
	for _, n := range names {
		group := []string{n}
		if n == "preload" {
			group = preloadGroup
		}
		for _, g := range group {
			if !slices.Contains(out, g) {
				out = append(out, g)
			}
		}
	}
	return out
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func (cfg *config) validate() error {
	var errs []error
	if cfg.baton == "" && slices.ContainsFunc(cfg.servers, func(s string) bool { return family(s) == kindBaton }) {
		errs = append(errs, errors.New("-baton: the path of the baton binary is required"))
	}
	for name, v := range map[string]int{"-rate": cfg.rate, "-workers": cfg.workers, "-hups": cfg.hups, "-upgrades": cfg.upgrades,
		"-storm": cfg.stormReloads, "-scale-workers": cfg.scaleWorkers, "-soak": cfg.soakReloads, "-soak-every": cfg.soakEvery,
		"-boot-workers": cfg.bootWorkers, "-boot-reloads": cfg.bootReloads, "-warmup": cfg.warmup, "-memory-rounds": cfg.memoryRounds,
		"-conns": cfg.conns, "-rounds": cfg.rounds} {
		if v <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, not %d", name, v))
		}
	}
	if cfg.killEvery <= 0 || cfg.burst <= 0 || cfg.maxRun <= 0 {
		errs = append(errs, errors.New("-kill-every, -burst and -max-run must be positive"))
	}
	for _, m := range cfg.modes {
		if m != modeClose && m != modeKeep {
			errs = append(errs, fmt.Errorf("-modes: unknown mode %q (want close or keepalive)", m))
		}
	}
	for _, s := range cfg.scenarios {
		if _, ok := scenarioByName(s); !ok {
			errs = append(errs, fmt.Errorf("-scenarios: unknown scenario %q", s))
		}
	}
	for _, s := range cfg.servers {
		if !slices.Contains(serverKinds, s) {
			errs = append(errs, fmt.Errorf("-servers: unknown server %q (want one of %s)", s, strings.Join(serverKinds, ", ")))
		}
	}
	if _, err := hupSchedule(cfg.duration, cfg.hups, cfg.window); err != nil {
		errs = append(errs, fmt.Errorf("-hups: %w", err))
	}
	if _, err := hupSchedule(cfg.duration, cfg.upgrades, cfg.window); err != nil {
		errs = append(errs, fmt.Errorf("-upgrades: %w", err))
	}
	return errors.Join(errs...)
}

// hupSchedule spaces n HUPs evenly: the first at 5 s (earlier for a short
// run), then every (duration-first)/n, in whole seconds when that is at
// least a second; every reload window must end before the load does and
// windows must not overlap.
func hupSchedule(duration time.Duration, n int, window time.Duration) ([]time.Duration, error) {
	first := min(5*time.Second, duration/time.Duration(n+1))
	spacing := (duration - first) / time.Duration(n)
	if spacing >= time.Second {
		spacing = spacing.Truncate(time.Second)
	}
	var at []time.Duration
	for i := range n {
		at = append(at, first+time.Duration(i)*spacing)
	}
	if n > 1 && spacing <= window {
		return nil, fmt.Errorf("%d actions in %s are %s apart, not more than the %s reload window: use a longer -duration or fewer of them", n, duration, spacing, window)
	}
	if last := at[len(at)-1]; last+window > duration {
		return nil, fmt.Errorf("the last action at %s plus the %s reload window ends after the %s load: use a longer -duration", last, window, duration)
	}
	return at, nil
}

func joinDurations(ds []time.Duration) string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.String()
	}
	return strings.Join(out, ", ")
}

func itoa(n int) string { return fmt.Sprint(n) }

// The app files in -app: the good app and the broken deploy; appCPU is
// the good app whose import burns CPU (the preload-boot scenario), made
// from app.py by cpuImport.
const (
	appGood   = "app.py"
	appBroken = "app_broken.py"
	appCPU    = "app_cpu.py"
)

func readApps(dir string) (map[string][]byte, error) {
	apps := map[string][]byte{}
	for _, name := range []string{appGood, appBroken} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, err
		}
		apps[name] = b
	}
	cpu, err := cpuImport(apps[appGood])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, appGood), err)
	}
	apps[appCPU] = cpu
	return apps, nil
}

// The line of app.py that simulates its import time, and what the
// preload-boot scenario's app does instead: burn 1 s of this process's CPU
// time (not the wall clock), as a large project's import does. Every
// process that imports it needs a CPU for a second; a preload template
// imports it once and forks the workers.
const (
	sleepImport = "time.sleep(1.5)  # simulated import time\n"
	burnImport  = "_deadline = time.process_time() + 1.0\n" +
		"while time.process_time() < _deadline:  # 1 s of CPU, not of the wall clock\n" +
		"    pass\n"
)

// cpuImport is app.py with its simulated import time spent on the CPU.
func cpuImport(app []byte) ([]byte, error) {
	if !bytes.Contains(app, []byte(sleepImport)) {
		return nil, fmt.Errorf("no line %q to turn into a CPU-bound import", strings.TrimSpace(sleepImport))
	}
	return bytes.Replace(app, []byte(sleepImport), []byte(burnImport), 1), nil
}

// badSchedule is when the broken deploy is HUPed: at 5 s, or a third of a
// short run.
func badSchedule(duration time.Duration) time.Duration {
	return min(5*time.Second, duration/3)
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "suite:", err)
		os.Exit(2)
	}
	code, err := run(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "suite:", err)
	}
	os.Exit(code)
}

// plan lists every run, scenario by scenario in the order asked, each
// with the servers that take part in it.
func plan(cfg *config) []runSpec {
	var specs []runSpec
	for _, name := range cfg.scenarios {
		sc, _ := scenarioByName(name)
		if sc.measure != nil {
			continue // not a run under load: measured on its own
		}
		for _, mode := range cfg.modes {
			for _, srv := range sc.servers {
				if slices.Contains(cfg.servers, srv) {
					specs = append(specs, runSpec{Scenario: name, Server: srv, Mode: mode})
				}
			}
		}
	}
	return specs
}

func run(cfg *config) (int, error) {
	began := time.Now()
	if others := otherServers(); len(others) > 0 {
		if !cfg.allowOthers {
			return 2, fmt.Errorf("other servers are running on this machine; they compete for the CPUs and share "+
				"the interpreter's pages with the trees measured, so stop them (or pass -allow-other-servers):\n  %s",
				strings.Join(others, "\n  "))
		}
		fmt.Fprintf(os.Stderr, "suite: running with other servers on the machine (-allow-other-servers):\n  %s\n", strings.Join(others, "\n  "))
	}
	apps, err := readApps(cfg.appDir)
	if err != nil {
		return 1, err
	}
	good := apps[appGood]
	if err := becomeSubreaper(); err != nil {
		return 1, fmt.Errorf("cannot become a child subreaper (needed to find every process a server leaves): %w", err)
	}
	stopOnInterrupt()
	facts := machineFacts(cfg)
	stamp := began.Format("2006-01-02-150405")
	runDir := filepath.Join(cfg.resultsDir, "suite-"+stamp)
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return 1, err
	}

	var throughput []throughputResult
	if slices.Contains(cfg.scenarios, scenarioSteady) {
		fmt.Fprintf(os.Stderr, "[throughput] %d closed-loop clients, %d rounds of %s per server ...\n", cfg.conns, cfg.rounds, cfg.burst)
		throughput = measureThroughput(cfg, good, runDir)
	}
	specs := plan(cfg)
	var results []*runResult
	failedSetup := false
	for i, spec := range specs {
		fmt.Fprintf(os.Stderr, "[%d/%d] %s · %s · %s ...\n", i+1, len(specs), scenarioTitle(spec.Scenario), spec.Server, modeTitle(spec.Mode))
		res := runOne(cfg, spec, apps, runDir)
		if res.Err != nil {
			failedSetup = true
			fmt.Fprintf(os.Stderr, "      setup failed: %v\n", res.Err)
		} else {
			fmt.Fprintf(os.Stderr, "      %d requests, %d failed, p99 %s, max during reloads %s, %d actions\n",
				res.Stats.Requests, res.Stats.Failed, fmtDur(res.Stats.P99), fmtDur(res.Stats.ReloadMax), len(res.Actions))
		}
		if len(res.Leftovers) > 0 {
			fmt.Fprintf(os.Stderr, "      processes left behind (killed): %s\n", strings.Join(res.Leftovers, "; "))
		}
		results = append(results, res)
	}
	var extra []measured
	for _, name := range cfg.scenarios {
		if sc, _ := scenarioByName(name); sc.measure != nil {
			fmt.Fprintf(os.Stderr, "[%s] ...\n", sc.title)
			m := sc.measure(cfg, runDir)
			if m.failed() {
				failedSetup = true
			}
			extra = append(extra, m)
		}
	}
	plots := writePlots(cfg, results, runDir)
	facts.elapsed = time.Since(began)
	report := renderReport(cfg, facts, results, throughput, extra, plots, runDir)
	fmt.Print(report)
	path := filepath.Join(cfg.resultsDir, "suite-"+stamp+".md")
	if err := os.WriteFile(path, []byte(report), 0o644); err != nil {
		return 1, err
	}
	fmt.Fprintf(os.Stderr, "report: %s (plots, logs and raw results: %s/)\n", path, runDir)
	for _, t := range throughput {
		if t.Err != nil {
			failedSetup = true
		}
	}
	if failedSetup {
		return 1, errors.New("some runs could not be set up; see the report")
	}
	return 0, nil
}
