// Package config is baton's configuration model.
//
// A configuration comes from four layers, each overriding the one before:
//
//  1. the defaults,
//  2. the TOML file named by -c/--config, whose keys are the long flag names
//     with '_' for '-' (workers, graceful_timeout, ...),
//  3. the flags given on the command line (only those actually given),
//  4. the worker command given after "--", which replaces the file's command.
//
// Repeatable flags merge in their own way: --bind replaces the file's whole
// list, --env adds to (or overrides entries of) the file's env table.
//
// One table, keys in keys.go, describes every setting once: its TOML key, its
// flag, its default, its Lifetime (what a reload does with a change) and the
// Config field it fills. RegisterFlags, Load, TOML, KeyLifetimes and
// StartOnlySettings all walk that table. So, in this package, a new setting
// is an entry there and a field in Config; plus, if no existing setting kind
// (setting.go, lists.go, size.go, ...) parses its values, a new one, and a
// check (check.go) if its value must be checked against the system. Tests
// name every key on purpose (the defaults and TOML text in config_test.go,
// the lifetimes in lifetime_test.go). Outside this package, cmd/baton's
// masterOptions must pass the field on to the master, and README's
// Configuration table needs a row for it, which a test enforces.
//
// Load checks everything and reports every problem it finds at once, as
// Problems, each naming the file and line or the flag, the key, what was
// expected and what was given. A Config returned by Load is valid: its fields
// are already parsed (Binds, UnixMode, StopSignal, GracefulTimeout) and
// resolved (CommandPath), so nothing downstream parses strings again.
package config

import (
	"os"
	"syscall"
	"time"
)

// Config is the effective, checked configuration. The fields hold parsed
// values; TOML writes them back in the file's syntax.
type Config struct {
	Binds    []Bind      // bind: the listeners, in order (fd 3, 4, ... in the workers)
	Backlog  int         // backlog: listen(2) backlog of each socket
	UnixMode os.FileMode // unix_mode: permission bits of unix sockets

	Workers int      // workers: number of worker processes
	Command []string // command: the worker command; Command[0] is the program as given
	// CommandPath is Command[0] resolved as execvp(3) would, against Chdir
	// and the workers' PATH: an absolute path to an executable file.
	CommandPath string
	Chdir       string            // chdir: workers' working directory; "" is baton's own
	Env         map[string]string // env: added to baton's environment for workers; never nil
	ListenEnv   bool              // listen_env: set LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES for workers

	StopSignal      syscall.Signal // stop_signal: asks a worker to stop gracefully
	GracefulTimeout time.Duration  // graceful_timeout: how long a stopping worker may take
	// ShutdownDelay (shutdown_delay): on TERM, how long the workers keep
	// serving after /readyz turned 503, before they are told to stop.
	ShutdownDelay time.Duration

	Timeout        time.Duration // timeout: worker watchdog interval, 0 for off
	Ready          Readiness     // ready: how a worker is seen to be ready
	BootTimeout    time.Duration // boot_timeout: a reload fails if a new worker is not ready by then
	ReloadStrategy string        // reload_strategy: "surge" or "rolling"
	MaxSurge       int           // max_surge: rolling reloads' extra processes
	DrainUnlisten  bool          // drain_unlisten: make a replaced worker stop accepting before it is stopped
	BootNice       bool          // boot_nice: boot and drain workers at nice +10 while others serve
	Subreaper      bool          // subreaper: reap orphaned descendants (always as PID 1)
	Cgroup         string        // cgroup: "auto", "off" or the cgroup path of baton's tree
	Watch          []string      // watch: dev mode, reload when files under these change
	Preload        []string      // preload: Python modules a template imports to fork workers from
	WatchIgnore    []string      // watch_ignore: base-name patterns --watch ignores
	// max_worker_memory (bytes), max_worker_age and its jitter: 0 is none.
	MaxWorkerMemory    uint64
	MaxWorkerAge       time.Duration
	MaxWorkerAgeJitter time.Duration
	User               string // user: run workers as this user ("" for baton's own)
	Group              string // group: their primary group ("" for the user's)
	UnixOwner          string // unix_owner: USER[:GROUP] of unix socket files
	// RunAsUID/RunAsGID resolve user and group (-1: not set); UnixUID and
	// UnixGID resolve unix_owner (-1: unchanged).
	RunAsUID, RunAsGID int
	UnixUID, UnixGID   int
	// UpgradeMode is "reexec" or "new-master": how an upgrade replaces the
	// master.
	UpgradeMode string
	// UpgradeHandover is "auto" or "manual": what the old master does once
	// an upgrade's new master is ready.
	UpgradeHandover string

	PIDFile     string // pid: pidfile path, "" for none
	Control     string // control: control socket path, "" for the default
	MetricsBind string // metrics_bind: HTTP address of /metrics etc., "" for none
	LogLevel    string // log_level: "debug", "info", "warn" or "error"
	LogFormat   string // log_format: "text" or "json"
	LogFile     string // log_file: "" for stderr

	source string // the config file read, "" if none
	// warnings are valid settings known to go wrong (Warnings).
	warnings Problems
}

// Source returns the path of the config file this Config was read from, as
// given to -c, or "" if there was none. A reload reads it again.
func (c *Config) Source() string { return c.source }
