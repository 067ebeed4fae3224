package config

import (
	"strconv"
	"strings"

	"github.com/baton-pm/baton/internal/control"
)

// maxWorkers is control.MaxWorkers for the flags' help.
var maxWorkers = strconv.Itoa(control.MaxWorkers)

// A key is one setting as the user writes it: in the file, as a flag, or
// both. The keys table drives RegisterFlags, Load, TOML and the lifetimes
// (KeyLifetimes, StartOnlySettings).
type key struct {
	name  string // TOML key; the flag is the same with '-' for '_'
	short string // one-letter flag, or ""
	flag  flagKind
	// usage is the flag's --help line; the `quoted` word names its argument.
	usage string
	// def is the default, written as the flag's argument; "" for the field's
	// zero value (an empty string, no env, no command).
	def string
	// lifetime says whether a reload applies a change to the key, and how;
	// every key must have one (the zero value is not one).
	lifetime Lifetime
	// setting binds the key to its field in c.
	setting func(c *Config) setting
	// boolean keys' flags may be given without a value: --listen-env means
	// --listen-env=true.
	boolean bool
	// check, if set, checks the effective value against the system (does the
	// directory exist?) and fills fields derived from it; it runs once all
	// layers are merged, so a bad value overridden by a flag is not reported.
	check func(c *Config) error
	// needs lists the keys check reads besides this one: a problem with
	// any of them would make check's verdict wrong, so it is skipped.
	needs []string
}

// flagKind says whether a key has a flag and how often it may be given.
type flagKind int

const (
	flagOnce   flagKind = iota // --key VALUE; given twice, the last wins
	flagRepeat                 // --key VALUE, as many times as wanted
	flagNone                   // no flag: file only (or, for command, after "--")
)

// commandKey is the key the command after "--" sets.
const commandKey = "command"

var keys = []key{
	{
		name: "bind", short: "b", flag: flagRepeat, def: "127.0.0.1:8000",
		usage:    "listen on `ADDR`: HOST:PORT, [V6]:PORT, :PORT, unix:PATH, fd://N, systemd or systemd:NAME, optionally NAME=ADDR; repeat for more (replaces the file's list)",
		lifetime: StartOnly,
		setting:  func(c *Config) setting { return bindsSetting{&c.Binds} },
	},
	{
		name: "backlog", def: "2048",
		usage:    "listen backlog `N` of each socket",
		lifetime: StartOnly,
		setting:  func(c *Config) setting { return intSetting(&c.Backlog, 1) },
	},
	{
		name: "unix_mode", def: "0660",
		usage:    "permission bits `MODE` (octal) of unix sockets",
		lifetime: StartOnly,
		setting:  func(c *Config) setting { return modeSetting(&c.UnixMode) },
	},
	{
		name: "workers", short: "w", def: "1",
		usage:    "run `N` worker processes (at most " + maxWorkers + ")",
		lifetime: PerGeneration,
		setting:  func(c *Config) setting { return workerCountSetting(&c.Workers, 1) },
	},
	{
		name: commandKey, flag: flagNone,
		lifetime: PerGeneration,
		setting:  func(c *Config) setting { return commandSetting{&c.Command} },
		check:    resolveCommand, // as the workers' user: reads user and group too
		needs:    []string{"chdir", "env"},
	},
	{
		name:     "chdir",
		usage:    "run workers in `DIR` (default: baton's working directory)",
		lifetime: PerGeneration,
		setting:  func(c *Config) setting { return textSetting(&c.Chdir) },
		check:    checkChdir, // as the workers' user: reads user and group too
	},
	{
		name: "env", short: "e", flag: flagRepeat,
		usage:    "set `NAME=VALUE` in the workers' environment; repeat for more (adds to the file's env)",
		lifetime: PerGeneration,
		setting:  func(c *Config) setting { return envSetting{&c.Env} },
	},
	{
		name: "listen_env", def: "true", boolean: true,
		usage:    "`BOOL`: set LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES for workers; false for an app that takes the fds from its own flags and would take them twice (gunicorn 20 with --bind fd://3)",
		lifetime: PerGeneration,
		setting:  func(c *Config) setting { return boolSetting(&c.ListenEnv) },
	},
	{
		name: "stop_signal", def: "TERM",
		usage:    "`SIGNAL` that asks a worker to stop gracefully: " + signalNames(),
		lifetime: PerGeneration,
		setting:  func(c *Config) setting { return signalSetting(&c.StopSignal) },
	},
	{
		name: "graceful_timeout", def: "30s",
		usage:    "how long a stopping worker may take before it is killed: a `DURATION` (1m30s) or seconds, > 0",
		lifetime: PerGeneration,
		setting:  func(c *Config) setting { return positiveDurationSetting(&c.GracefulTimeout) },
	},
	{
		name: "shutdown_delay", def: "0s",
		usage:    "on TERM, turn /readyz to 503 at once but keep the workers serving for `DURATION` (lame duck) before stopping them gracefully, so load balancers take the host out first (0: stop at once)",
		lifetime: Reapplied,
		setting:  func(c *Config) setting { return durationSetting(&c.ShutdownDelay) },
	},
	{
		name: "timeout", def: "30s",
		usage:    "a worker that sent WATCHDOG=1 must send it again within `DURATION`, or it is killed and replaced (0: off; workers that never ping are not watched)",
		lifetime: PerGeneration,
		setting:  func(c *Config) setting { return durationSetting(&c.Timeout) },
	},
	{
		name: "ready", def: "auto",
		usage:    "readiness `MODE`: auto (seen waiting on a listener), notify (sends READY=1 to NOTIFY_SOCKET) or delay:DURATION",
		lifetime: PerGeneration,
		setting:  func(c *Config) setting { return readySetting(&c.Ready) },
	},
	{
		name: "boot_timeout", def: "60s",
		usage:    "a reload fails if a new worker is not ready within `DURATION` (> 0)",
		lifetime: PerGeneration,
		setting:  func(c *Config) setting { return positiveDurationSetting(&c.BootTimeout) },
	},
	{
		name: "reload_strategy", def: "surge",
		usage:    "`STRATEGY` of a reload: surge (start the whole new generation at once) or rolling (at most max_surge extra workers)",
		lifetime: PerGeneration,
		setting:  func(c *Config) setting { return choiceSetting(&c.ReloadStrategy, "surge", "rolling") },
	},
	{
		name: "max_surge", def: "1",
		usage:    "rolling reloads keep at most workers + `N` worker processes alive (N at most " + maxWorkers + ")",
		lifetime: PerGeneration,
		setting:  func(c *Config) setting { return workerCountSetting(&c.MaxSurge, 1) },
	},
	{
		name: "drain_unlisten", def: "true", boolean: true,
		usage:    "`BOOL`: before stopping a worker that a reload replaces, take the listeners out of its epoll sets so it accepts no new connection (protects servers whose shutdown drops just-accepted connections)",
		lifetime: PerGeneration,
		setting:  func(c *Config) setting { return boolSetting(&c.DrainUnlisten) },
	},
	{
		name: "boot_nice", def: "true", boolean: true,
		usage:    "`BOOL`: a worker that boots while others serve runs at nice +10 until it is ready, and a replaced worker drains at nice +10 once it stops accepting, so neither slows the serving workers (needs root or RLIMIT_NICE to undo; skipped otherwise)",
		lifetime: Reapplied,
		setting:  func(c *Config) setting { return boolSetting(&c.BootNice) },
	},
	{
		name: "max_worker_memory", def: "0",
		usage:    "replace a worker whose process group's RSS exceeds `SIZE` (512MiB, 1GiB; 0: no limit), successor first",
		lifetime: PerGeneration,
		setting:  func(c *Config) setting { return sizeSetting(&c.MaxWorkerMemory) },
	},
	{
		name: "max_worker_age", def: "0s",
		usage:    "replace a worker older than `DURATION` (0: no limit), successor first",
		lifetime: PerGeneration,
		setting:  func(c *Config) setting { return durationSetting(&c.MaxWorkerAge) },
	},
	{
		name: "max_worker_age_jitter", def: "0s",
		usage:    "add up to `DURATION` at random to max_worker_age, so workers are not all replaced at once",
		lifetime: PerGeneration,
		setting:  func(c *Config) setting { return durationSetting(&c.MaxWorkerAgeJitter) },
	},
	{
		name:     "user",
		usage:    "run workers as `USER` (name or uid) with no supplementary groups; baton itself stays root to bind and manage them",
		lifetime: PerGeneration,
		setting:  func(c *Config) setting { return textSetting(&c.User) },
		check:    resolveRunAs,
	},
	{
		name:     "group",
		usage:    "run workers with primary `GROUP` (name or gid); default: the user's",
		lifetime: PerGeneration,
		setting:  func(c *Config) setting { return textSetting(&c.Group) },
	},
	{
		name:     "unix_owner",
		usage:    "give unix socket files to `USER[:GROUP]` (names or ids), e.g. so nginx's group can connect",
		lifetime: StartOnly,
		setting:  func(c *Config) setting { return textSetting(&c.UnixOwner) },
		check:    resolveUnixOwner,
	},
	{
		name: "watch", flag: flagRepeat,
		usage:    "dev mode: reload when a file under `PATH` changes (repeat for more), with the same readiness gating, so a broken edit never stops the dev server",
		lifetime: Reapplied,
		setting:  func(c *Config) setting { return pathsSetting{&c.Watch} },
	},
	{
		name: "watch_ignore", flag: flagRepeat,
		usage:    "file name `PATTERN` that --watch ignores (repeat for more); given, the patterns replace the defaults .git, __pycache__, *.pyc, *.swp, *~, .#* and *.log (repeat those you want to keep). baton's own log file and output files are ignored either way",
		lifetime: Reapplied,
		setting:  func(c *Config) setting { return pathsSetting{&c.WatchIgnore} },
	},
	{
		name: "subreaper", def: "true", boolean: true,
		usage:    "`BOOL`: adopt and reap orphaned descendants of workers (a child subreaper), so that without cgroups the processes a worker left are still found; always on when baton is PID 1",
		lifetime: Reapplied,
		setting:  func(c *Config) setting { return boolSetting(&c.Subreaper) },
	},
	{
		name: "preload", flag: flagRepeat,
		usage:    "Python `MODULE` to import once in a template process that forks the workers (repeat for more): shared memory and fast boots, and a reload still loads new code; the command must be a Python program",
		lifetime: PerGeneration,
		setting:  func(c *Config) setting { return pathsSetting{&c.Preload} },
		check:    checkPreload,
		needs:    []string{commandKey, "subreaper"},
	},
	{
		name: "cgroup", def: "auto",
		usage:    "`MODE`: auto (each worker in a cgroup of its own where baton may create them, else without), off, or the cgroup v2 PATH of baton's tree (an error at start if it cannot be used)",
		lifetime: StartOnly,
		setting:  func(c *Config) setting { return cgroupSetting(&c.Cgroup) },
	},
	{
		name: "upgrade_mode", def: "reexec",
		usage:    "how baton upgrade replaces the master: `MODE` reexec (the same pid executes the new binary and rolls the workers like a reload) or new-master (Gunicorn's way: a second master, then the old one steps down)",
		lifetime: Reapplied,
		setting:  func(c *Config) setting { return choiceSetting(&c.UpgradeMode, "reexec", "new-master") },
	},
	{
		name: "upgrade_handover", def: "auto",
		usage:    "after an upgrade's new master is ready: `MODE` auto (the old master drains and exits) or manual (it waits for WINCH, then TERM)",
		lifetime: Reapplied,
		setting:  func(c *Config) setting { return choiceSetting(&c.UpgradeHandover, "auto", "manual") },
	},
	{
		name:     "pid",
		usage:    "write the master's pid to `FILE`",
		lifetime: StartOnly,
		setting:  func(c *Config) setting { return textSetting(&c.PIDFile) },
		check:    func(c *Config) error { return checkParentDir(c.PIDFile) },
	},
	{
		name:     "control",
		usage:    "control socket `PATH` for baton reload/status/scale/stop (default: beside the pidfile, else $XDG_RUNTIME_DIR/baton.sock, else /run/baton/baton.sock for root and $TMPDIR/baton-UID/baton.sock for others)",
		lifetime: Reapplied,
		setting:  func(c *Config) setting { return textSetting(&c.Control) },
		check:    func(c *Config) error { return checkParentDir(c.Control) },
	},
	{
		name:     "metrics_bind",
		usage:    "serve /metrics, /healthz, /readyz and /status on `ADDR` (HOST:PORT; keep it on loopback or a private network)",
		lifetime: Reapplied,
		setting:  func(c *Config) setting { return textSetting(&c.MetricsBind) },
		check:    func(c *Config) error { return checkHostPort(c.MetricsBind) },
	},
	{
		name: "log_level", def: "info",
		usage:    "log `LEVEL`: debug, info, warn or error",
		lifetime: Reapplied,
		setting:  func(c *Config) setting { return choiceSetting(&c.LogLevel, "debug", "info", "warn", "error") },
	},
	{
		name: "log_format", def: "text",
		usage:    "log `FORMAT`: text or json",
		lifetime: StartOnly,
		setting:  func(c *Config) setting { return choiceSetting(&c.LogFormat, "text", "json") },
	},
	{
		name:     "log_file",
		usage:    "write baton's own log to `FILE` instead of stderr (the workers' output still goes to baton's stdout and stderr)",
		lifetime: StartOnly,
		setting:  func(c *Config) setting { return textSetting(&c.LogFile) },
		check:    checkLogFile,
	},
}

// flagName is the key's long flag, without "--".
func (k *key) flagName() string { return strings.ReplaceAll(k.name, "_", "-") }

// defaults is the key's default as flag values.
func (k *key) defaults() []string {
	if k.def == "" && k.flag != flagOnce {
		return nil
	}
	return []string{k.def}
}

// lookupKey returns the key named name, or nil.
func lookupKey(name string) *key {
	for i := range keys {
		if keys[i].name == name {
			return &keys[i]
		}
	}
	return nil
}

// keyNames lists every key, for suggestions.
func keyNames() []string {
	names := make([]string, len(keys))
	for i, k := range keys {
		names[i] = k.name
	}
	return names
}
