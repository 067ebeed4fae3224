package master

import (
	"maps"
	"slices"
	"syscall"
	"time"

	"github.com/baton-pm/baton/internal/listener"
)

// Options is what a master runs with. cmd/baton builds it from the
// configuration at start and again on every reload. The two halves have
// different lifetimes: a reload starts a generation with the new
// Generation options, and applies the new Master options to the running
// master (reapplyMasterOptions) or refuses the reload.
type Options struct {
	Master     MasterOptions
	Generation GenerationOptions
}

// MasterOptions live as long as the master.
type MasterOptions struct {
	// Listeners are opened once, at start.
	Listeners  []listener.Spec
	PidFile    string
	ConfigFile string // "" when there is none
	// LogFile is baton's own log file, "" for stderr: dev mode's watch
	// ignores it.
	LogFile string
	// Cgroup is "auto" (a cgroup per worker where baton may create them),
	// "off", or the cgroup path of baton's tree.
	Cgroup string
	// StartOnly holds the settings a running master cannot change (bind,
	// backlog, pid, log_file, ...), by configuration key, each as written
	// in the file: a reload that changes one is refused, naming it.
	StartOnly map[string]string

	// A reload re-applies these.

	// ControlPath is the control socket; ControlRequired makes a failure
	// to open it fatal (it was asked for), else it is logged and skipped.
	ControlPath     string
	ControlRequired bool
	MetricsAddr     string // "" for no HTTP endpoint
	// Watch (dev mode) reloads when files under these paths change, but
	// for names matching WatchIgnore.
	Watch, WatchIgnore []string
	// BootNice boots, and drains replaced, workers at a lower CPU
	// priority while others serve.
	BootNice bool
	// Subreaper makes baton reap orphaned descendants; always on as PID 1.
	Subreaper bool
	Handover  string // upgrade_handover: "auto" or "manual"
	// UpgradeMode is upgrade_mode: "reexec" (the default; "" too) or
	// "new-master".
	UpgradeMode string
	LogLevel    string // "" leaves the logger's level alone
	// ShutdownDelay (shutdown_delay) is how long a graceful shutdown
	// keeps the workers serving after /readyz turned 503; 0 for none.
	ShutdownDelay time.Duration

	// Executable, Args and StartDir start a new master on upgrade: the
	// binary path and arguments baton was started with, and its
	// directory. They, and Version, come from the process, not the
	// configuration.
	Executable string
	Args       []string
	StartDir   string
	Version    string
}

// GenerationOptions are one generation's: a reload applies new ones to
// the workers it starts, and the old generation keeps its own until it is
// gone.
type GenerationOptions struct {
	Workers     int
	Command     []string // argv of the worker command
	CommandPath string   // Command[0] resolved to an executable
	Dir         string
	Env         map[string]string
	// ListenEnv sets LISTEN_FDS and LISTEN_FDNAMES (and so, via the shim,
	// LISTEN_PID); the fds themselves are passed either way.
	ListenEnv       bool
	StopSignal      syscall.Signal
	GracefulTimeout time.Duration
	// WorkerTimeout (timeout): a worker that sent WATCHDOG=1 must keep
	// sending it this often; 0 turns the worker watchdog off.
	WorkerTimeout time.Duration
	Ready         ReadyMode
	BootTimeout   time.Duration
	Strategy      Strategy
	MaxSurge      int // rolling: at most Workers+MaxSurge processes alive
	// DrainUnlisten makes a worker that is being replaced stop accepting
	// (see package unlisten) before it gets its stop signal.
	DrainUnlisten bool
	// MaxWorkerMemory (bytes of RSS of a worker's process group) and
	// MaxWorkerAge (plus up to MaxWorkerAgeJitter) replace a worker; 0 is
	// no limit.
	MaxWorkerMemory    uint64
	MaxWorkerAge       time.Duration
	MaxWorkerAgeJitter time.Duration
	// RunAs, if set, is the user and group workers run as.
	RunAs *syscall.Credential
	// Preload, if set, are the Python modules a template imports once,
	// to fork the generation's workers from (template.go).
	Preload []string
}

// ReadyMode says how baton learns that a worker accepts connections.
type ReadyMode struct {
	Kind  ReadyKind
	Delay time.Duration // for ReadyDelay
}

// ReadyKind is one of the readiness modes.
type ReadyKind string

// The readiness modes.
const (
	ReadyAuto   ReadyKind = "auto"   // seen waiting on a listener in /proc
	ReadyNotify ReadyKind = "notify" // READY=1 on its NOTIFY_SOCKET
	ReadyDelay  ReadyKind = "delay"  // a fixed time after start
)

func (r ReadyMode) String() string {
	if r.Kind == ReadyDelay {
		return "delay:" + r.Delay.String()
	}
	return string(r.Kind)
}

// Strategy is how a reload replaces the workers.
type Strategy string

// The reload strategies.
const (
	Surge   Strategy = "surge"   // start the whole new generation at once
	Rolling Strategy = "rolling" // at most MaxSurge extra processes at a time
)

// startOnlyChanges lists the start-only settings that differ between the
// master's options and a reload's, as "key: old -> new", in key order.
func startOnlyChanges(running, next MasterOptions) []string {
	var changed []string
	keys := slices.Sorted(maps.Keys(running.StartOnly))
	for k := range next.StartOnly {
		if _, ok := running.StartOnly[k]; !ok {
			keys = append(keys, k)
		}
	}
	for _, k := range keys {
		old, now := running.StartOnly[k], next.StartOnly[k]
		if old != now {
			changed = append(changed, k+": "+orUnset(old)+" -> "+orUnset(now))
		}
	}
	return changed
}

func orUnset(v string) string {
	if v == "" {
		return "(unset)"
	}
	return v
}
