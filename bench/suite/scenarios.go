package main

import (
	"math/rand/v2"
	"slices"
	"time"
)

// A scenario is what happens to a server while the load runs. Every
// scenario is fixed in advance and never tuned to pass a target.
type scenario struct {
	name    string
	title   string
	servers []string // who takes part, where the peer can do it
	// fixed: the load runs -duration; otherwise it runs until the driver
	// is done, plus tail.
	fixed bool
	tail  time.Duration
	// workers per server; 0 means -workers.
	workers func(cfg *config) int
	// demo: baton serves its bundled Go demo worker instead of the
	// Python app (see the soak).
	demo bool
	// app is the file of -app the servers run ("": app.py).
	app string
	// drive performs the scenario's actions, from the start of the load.
	drive func(rc *runCtx)
	// measure, for a scenario that is not a run under load, measures it
	// on its own, every server in turn.
	measure func(cfg *config, runDir string) measured
	// describe says what the scenario does, for the report.
	describe func(cfg *config) string
}

const (
	scenarioSteady  = "steady"
	scenarioHUPs    = "hups"
	scenarioUpgrade = "upgrade"
	scenarioBad     = "bad"
	scenarioKill    = "kill"
	scenarioStorm   = "storm"
	scenarioScale   = "scale"
	scenarioSoak    = "soak"
	scenarioMemory  = "preload-memory"
	scenarioBoot    = "preload-boot"
)

// preloadServers are the servers the preload scenarios compare: each
// master with and without --preload.
var preloadServers = []string{kindGunicorn, kindGunicornPreload, kindBaton, kindBatonPreload}

var scenarios = []scenario{
	{
		name: scenarioSteady, title: "1. steady load", fixed: true,
		servers: []string{"bare", "gunicorn", "baton"},
		describe: func(cfg *config) string {
			return "no reload: the latency of each server, and of the same uvicorn workers with no master at all (bare: bash starts them on a socket the benchmark bound, then only waits)"
		},
	},
	{
		name: scenarioHUPs, title: "2. four HUPs", fixed: true,
		servers: []string{kindGunicorn, kindBaton, kindBatonPreload},
		drive:   driveHUPs,
		describe: func(cfg *config) string {
			return "redeploy the same good app.py and HUP at " + joinDurations(mustHUPs(cfg)) + " (fire and forget, as `kill -HUP` is)"
		},
	},
	{
		name: scenarioUpgrade, title: "3. binary upgrade", fixed: true,
		servers: []string{"gunicorn", "baton"},
		drive:   driveUpgrades,
		describe: func(cfg *config) string {
			return "replace the master in place at " + joinDurations(mustUpgrades(cfg)) +
				": baton with `baton upgrade` (it waits and reports); Gunicorn with USR2, then, once the new master's workers are all up, TERM to the old master"
		},
	},
	{
		name: scenarioBad, title: "4. bad deploy", fixed: true,
		servers: []string{"gunicorn", "baton"},
		drive:   driveBadDeploy,
		describe: func(cfg *config) string {
			return "replace app.py with one that raises ImportError after 0.5 s and HUP at " + badSchedule(cfg.duration).String() + "; the load goes on to the end"
		},
	},
	{
		name: scenarioKill, title: "5. kill -9 of a random worker every 5 s", fixed: true,
		servers: []string{"gunicorn", "baton"},
		drive:   driveKills,
		describe: func(cfg *config) string {
			return "SIGKILL a worker chosen at random (fixed seed) at " + joinDurations(killSchedule(cfg)) + "; the master replaces it"
		},
	},
	{
		name: scenarioStorm, title: "6. reload storm", tail: 5 * time.Second,
		servers: []string{"gunicorn", "baton"},
		drive:   driveStorm,
		describe: func(cfg *config) string {
			return itoa(cfg.stormReloads) + " reloads back to back from 5 s, each as soon as the previous one took effect: `baton reload` in a loop; for Gunicorn HUP, then wait for all new workers' startup lines; the load goes on 5 s after the last"
		},
	},
	{
		name: scenarioScale, title: "7. scale: many workers reloaded", tail: 5 * time.Second,
		servers: []string{kindGunicorn, kindBaton, kindBatonPreload},
		workers: func(cfg *config) int { return cfg.scaleWorkers },
		drive:   driveOneReload,
		describe: func(cfg *config) string {
			return itoa(cfg.scaleWorkers) + " workers; one reload at 5 s (`baton reload`; Gunicorn HUP, then wait for all new workers' startup lines); the load goes on 5 s after it took effect"
		},
	},
	{
		name: scenarioSoak, title: "8. soak", tail: 2 * time.Second, demo: true,
		servers: []string{"baton"},
		drive:   driveSoak,
		describe: func(cfg *config) string {
			return itoa(cfg.soakReloads) + " `baton reload`s back to back under load, with baton's bundled Go demo worker (it boots in milliseconds, where the Python app's import takes 1.5 s: 1,000 reloads of it would take over half an hour); the master's open fds, RSS, threads, goroutines and zombie children sampled before the first reload and after every " + itoa(cfg.soakEvery)
		},
	},
	{
		name: scenarioMemory, title: "10. preload: memory",
		servers: preloadServers,
		measure: measureMemory,
		describe: func(cfg *config) string {
			return "a Django project (`django-admin startproject proj`, ASGI) with " + itoa(cfg.workers) + " workers, no load: the total PSS of the server's whole process tree once every worker is up, and again after each worker answered `GET /admin/login/` " + itoa(cfg.warmup) + " times (a new connection per request)"
		},
	},
	{
		name: scenarioBoot, title: "11. preload: boot", tail: 3 * time.Second,
		servers: preloadServers,
		workers: func(cfg *config) int { return cfg.bootWorkers },
		app:     appCPU,
		drive:   driveBootReloads,
		describe: func(cfg *config) string {
			return itoa(cfg.bootWorkers) + " workers of an app whose import burns 1 s of CPU; " + itoa(cfg.bootReloads) + " reloads from 5 s, each once the last one's old workers are gone (+2 s): `baton reload`; Gunicorn HUP, then wait for all new workers' startup lines (with --preload, Gunicorn's HUP forks the new workers from its master's import: it does not load new code); the load goes on 3 s after the last"
		},
	},
}

func scenarioByName(name string) (scenario, bool) {
	for _, sc := range scenarios {
		if sc.name == name {
			return sc, true
		}
	}
	return scenario{}, false
}

func scenarioTitle(name string) string {
	if sc, ok := scenarioByName(name); ok {
		return sc.title
	}
	return name
}

func (sc scenario) workerCount(cfg *config) int {
	if sc.workers != nil {
		return sc.workers(cfg)
	}
	return cfg.workers
}

// driveHUPs redeploys the good app and HUPs on the fixed schedule.
func driveHUPs(rc *runCtx) {
	for _, at := range mustHUPs(rc.cfg) {
		rc.sleepUntil(at)
		rc.deployAndHUP("good", rc.good)
	}
}

// driveBadDeploy puts the broken app in place and HUPs once.
func driveBadDeploy(rc *runCtx) {
	rc.sleepUntil(badSchedule(rc.cfg.duration))
	rc.deployAndHUP("broken", rc.broken)
}

// driveUpgrades upgrades the master on the fixed schedule.
func driveUpgrades(rc *runCtx) {
	for _, at := range mustUpgrades(rc.cfg) {
		rc.sleepUntil(at)
		before := rc.srv.workerPIDs()
		res, err := rc.srv.upgradeWait(60 * time.Second)
		rc.recordOp("upgrade", before, res, err)
	}
}

// driveKills kills a random worker every 5 s.
func driveKills(rc *runCtx) {
	rng := rand.New(rand.NewPCG(7, 7)) // the same choices every run
	for _, at := range killSchedule(rc.cfg) {
		rc.sleepUntil(at)
		pid, when, err := rc.srv.killRandomWorker(rng)
		a := action{Kind: "kill -9", Deploy: "pid " + itoa(pid)}
		if err != nil {
			a.Err = err.Error()
		} else {
			a.At = when.Sub(rc.start)
		}
		rc.record(a)
	}
}

// driveStorm reloads back to back, each as soon as the previous one took
// effect.
func driveStorm(rc *runCtx) {
	rc.sleepUntil(5 * time.Second)
	for range rc.cfg.stormReloads {
		if !rc.srv.alive() {
			return
		}
		before := rc.srv.workerPIDs()
		res, err := rc.srv.reloadWait(60 * time.Second)
		rc.recordOp("reload", before, res, err)
	}
}

// driveOneReload reloads once at 5 s and waits for it to take effect.
func driveOneReload(rc *runCtx) {
	rc.sleepUntil(5 * time.Second)
	before := rc.srv.workerPIDs()
	res, err := rc.srv.reloadWait(3 * time.Minute)
	rc.recordOp("reload", before, res, err)
}

// driveBootReloads redeploys the same app and reloads, waiting for each
// reload and for the workers from before it to be gone (so that one
// reload's boots do not overlap the next), plus 2 s.
func driveBootReloads(rc *runCtx) {
	rc.sleepUntil(5 * time.Second)
	for range rc.cfg.bootReloads {
		if !rc.srv.alive() {
			return
		}
		before := rc.srv.workerPIDs()
		if err := deploy(rc.appDir, rc.good); err != nil {
			rc.record(action{Kind: "reload", Err: "deploy: " + err.Error()})
			return
		}
		res, err := rc.srv.reloadWait(2 * time.Minute)
		rc.recordOp("reload", before, res, err)
		waitGone(before, time.Minute)
		time.Sleep(2 * time.Second)
	}
}

// waitGone waits until every one of pids has exited, or limit.
func waitGone(pids []int, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for slices.ContainsFunc(pids, func(pid int) bool { return !processGone(pid) }) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
}

// driveSoak reloads back to back and samples the master between reloads.
func driveSoak(rc *runCtx) {
	rc.sleepUntil(2 * time.Second)
	rc.sampleMaster(0)
	for i := 1; i <= rc.cfg.soakReloads; i++ {
		if !rc.srv.alive() {
			return
		}
		before := rc.srv.workerPIDs()
		res, err := rc.srv.reloadWait(60 * time.Second)
		rc.recordOp("reload", before, res, err)
		if i%rc.cfg.soakEvery == 0 {
			rc.sampleMaster(i)
		}
	}
}

func mustHUPs(cfg *config) []time.Duration {
	at, _ := hupSchedule(cfg.duration, cfg.hups, cfg.window) // validated
	return at
}

func mustUpgrades(cfg *config) []time.Duration {
	at, _ := hupSchedule(cfg.duration, cfg.upgrades, cfg.window) // validated
	return at
}

// killSchedule is every 5 s from 5 s, while a whole reload window still
// fits before the load ends.
func killSchedule(cfg *config) []time.Duration {
	var at []time.Duration
	for t := 5 * time.Second; t+cfg.window <= cfg.duration; t += cfg.killEvery {
		at = append(at, t)
	}
	return at
}
