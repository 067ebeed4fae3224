// Command reload measures what clients see while a pre-fork server
// reloads (HUP) under constant load: baton against Gunicorn, the same ASGI
// app, the same load, on the same machine in the same run. bench/run builds
// baton and runs it; see bench/README.md.
//
// For every scenario (four HUPs of a good deploy; one HUP of a deploy
// that fails to import), server (Gunicorn with uvicorn workers; baton with
// uvicorn) and connection mode (a new connection per request; keep-alive),
// it starts fresh servers, drives an open-loop constant-rate POST load with
// vegeta, deploys and HUPs on a fixed schedule, and classifies every
// request. It prints a markdown report and writes it under -results.
package main

import (
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
	rate       int
	duration   time.Duration
	hups       int
	quick      bool
	window     time.Duration
	workers    int
	timeout    time.Duration
	baton      string
	gunicorn   string
	uvicorn    string
	python     string
	appDir     string
	resultsDir string
	modes      []string
	scenarios  []string
	servers    []string
	cmdline    string
	batonFlags []string
	quietBelow float64
	quietWait  time.Duration
}

const (
	scenarioHUPs = "hups"
	scenarioBad  = "bad"
	modeClose    = "close"
	modeKeep     = "keepalive"
)

func parseFlags(args []string) (*config, error) {
	cfg := &config{}
	fs := flag.NewFlagSet("reload", flag.ContinueOnError)
	fs.IntVar(&cfg.rate, "rate", 400, "requests per second (constant, open loop)")
	fs.DurationVar(&cfg.duration, "duration", 30*time.Second, "load duration of each run")
	fs.IntVar(&cfg.hups, "hups", 4, "HUPs in the \"four HUPs\" scenario, evenly spaced")
	fs.BoolVar(&cfg.quick, "quick", false, "fast check: -rate 200 -duration 12s -hups 2 (explicit flags still win)")
	fs.DurationVar(&cfg.window, "window", 3*time.Second, "reload window after each HUP: requests started in [HUP, HUP+window] are \"during a reload\"")
	fs.IntVar(&cfg.workers, "workers", 4, "workers of each server")
	fs.DurationVar(&cfg.timeout, "timeout", 10*time.Second, "client timeout of one request")
	fs.StringVar(&cfg.baton, "baton", "", "path of the baton binary to measure (bench/run builds it)")
	fs.StringVar(&cfg.gunicorn, "gunicorn", "/usr/bin/gunicorn", "path of gunicorn")
	fs.StringVar(&cfg.uvicorn, "uvicorn", "/usr/bin/uvicorn", "path of uvicorn")
	fs.StringVar(&cfg.python, "python", "/usr/bin/python3", "python that runs gunicorn and uvicorn (for their versions)")
	fs.StringVar(&cfg.appDir, "app", "bench/app", "directory with app.py and app_broken.py")
	fs.StringVar(&cfg.resultsDir, "results", "bench/results", "where the report, logs and raw results go")
	modes := fs.String("modes", "close,keepalive", "connection modes: close (new connection per request), keepalive")
	scenarios := fs.String("scenarios", "hups,bad", "scenarios: hups (good deploys), bad (a deploy that fails to import)")
	servers := fs.String("servers", "gunicorn,baton", "servers to measure")
	fs.Float64Var(&cfg.quietBelow, "quiet-below", 30, "before each run, wait for a second with the machine's CPUs less than this percent busy (0: don't wait)")
	fs.DurationVar(&cfg.quietWait, "quiet-wait", 2*time.Minute, "wait at most this long for a quiet machine, then start anyway")
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
		if !set["rate"] {
			cfg.rate = 200
		}
		if !set["duration"] {
			cfg.duration = 12 * time.Second
		}
		if !set["hups"] {
			cfg.hups = 2
		}
	}
	cfg.modes = splitList(*modes)
	cfg.scenarios = splitList(*scenarios)
	cfg.servers = splitList(*servers)
	cfg.batonFlags = strings.Fields(*batonFlags)
	if cfg.cmdline == "" {
		cfg.cmdline = strings.Join(os.Args, " ")
	}
	return cfg, cfg.validate()
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
	if cfg.baton == "" && slices.Contains(cfg.servers, "baton") {
		errs = append(errs, errors.New("-baton: the path of the baton binary is required"))
	}
	if cfg.rate <= 0 || cfg.workers <= 0 || cfg.hups <= 0 {
		errs = append(errs, errors.New("-rate, -workers and -hups must be positive"))
	}
	for _, m := range cfg.modes {
		if m != modeClose && m != modeKeep {
			errs = append(errs, fmt.Errorf("-modes: unknown mode %q", m))
		}
	}
	for _, s := range cfg.scenarios {
		if s != scenarioHUPs && s != scenarioBad {
			errs = append(errs, fmt.Errorf("-scenarios: unknown scenario %q", s))
		}
	}
	for _, s := range cfg.servers {
		if s != "gunicorn" && s != "baton" {
			errs = append(errs, fmt.Errorf("-servers: unknown server %q", s))
		}
	}
	if _, err := hupSchedule(cfg.duration, cfg.hups, cfg.window); err != nil {
		errs = append(errs, err)
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
		return nil, fmt.Errorf("%d HUPs in %s are %s apart, not more than the %s reload window: use a longer -duration or fewer -hups", n, duration, spacing, window)
	}
	if last := at[len(at)-1]; last+window > duration {
		return nil, fmt.Errorf("the last HUP at %s plus the %s reload window ends after the %s load: use a longer -duration", last, window, duration)
	}
	return at, nil
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
		fmt.Fprintln(os.Stderr, "reload:", err)
		os.Exit(2)
	}
	code, err := run(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "reload:", err)
	}
	os.Exit(code)
}

func run(cfg *config) (int, error) {
	began := time.Now()
	good, err := os.ReadFile(filepath.Join(cfg.appDir, "app.py"))
	if err != nil {
		return 1, err
	}
	broken, err := os.ReadFile(filepath.Join(cfg.appDir, "app_broken.py"))
	if err != nil {
		return 1, err
	}
	if err := becomeSubreaper(); err != nil {
		return 1, fmt.Errorf("cannot become a child subreaper (needed to find every process a server leaves): %w", err)
	}
	stopOnInterrupt()
	facts := machineFacts(cfg)
	stamp := began.Format("2006-01-02-150405")
	runDir := filepath.Join(cfg.resultsDir, "reload-"+stamp)
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return 1, err
	}

	var specs []runSpec
	for _, sc := range cfg.scenarios {
		for _, mode := range cfg.modes {
			for _, srv := range cfg.servers {
				specs = append(specs, runSpec{Scenario: sc, Server: srv, Mode: mode})
			}
		}
	}
	var results []*runResult
	failedSetup := false
	for i, spec := range specs {
		fmt.Fprintf(os.Stderr, "[%d/%d] %s · %s · %s ...\n", i+1, len(specs), scenarioTitle(spec.Scenario), spec.Server, modeTitle(spec.Mode))
		res := runOne(cfg, spec, good, broken, runDir)
		if res.Err != nil {
			failedSetup = true
			fmt.Fprintf(os.Stderr, "      setup failed: %v\n", res.Err)
		} else {
			fmt.Fprintf(os.Stderr, "      %d requests, %d failed, p99 %s, max during reloads %s\n",
				res.Stats.Requests, res.Stats.Failed, fmtDur(res.Stats.P99), fmtDur(res.Stats.ReloadMax))
		}
		if len(res.Leftovers) > 0 {
			fmt.Fprintf(os.Stderr, "      processes left behind (killed): %s\n", strings.Join(res.Leftovers, "; "))
		}
		results = append(results, res)
	}
	facts.elapsed = time.Since(began)
	report := renderReport(cfg, facts, results, runDir)
	fmt.Print(report)
	path := filepath.Join(cfg.resultsDir, "reload-"+stamp+".md")
	if err := os.WriteFile(path, []byte(report), 0o644); err != nil {
		return 1, err
	}
	fmt.Fprintf(os.Stderr, "report: %s (logs and raw results: %s/)\n", path, runDir)
	if failedSetup {
		return 1, errors.New("some runs could not be set up; see the report")
	}
	return 0, nil
}
