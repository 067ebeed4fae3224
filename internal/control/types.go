// Package control is baton's control socket: a unix socket, mode 0600,
// served only to the master's own uid and root, speaking line-delimited
// JSON. The CLI's reload, upgrade, scale, stop and status commands are its
// clients. The server calls a Handler and never imports the master.
package control

import (
	"context"
	"time"
)

// Version is the protocol version; a request with another is refused.
const Version = 1

// MaxWorkers is the most workers a master runs: the ceiling of the workers
// setting, of max_surge and of a scale request. It is here, in a leaf that
// the config, the master and the CLI all import, so that every one of them
// enforces the same number. Each worker costs the master a few file
// descriptors (notify socket, pidfd, stderr pipe) and, with cgroups, a
// cgroup; far more workers than a pre-fork server ever needs on one host
// (Gunicorn suggests 2-4 per core), it still stops a typo such as 100000
// from forking the machine to a halt.
const MaxWorkers = 1024

// Commands.
const (
	CmdStatus  = "status"
	CmdReload  = "reload"
	CmdUpgrade = "upgrade"
	CmdScale   = "scale"
	CmdStop    = "stop"
)

// Response types: a request gets zero or more progress lines and then
// exactly one done or error line.
const (
	TypeProgress = "progress"
	TypeDone     = "done"
	TypeError    = "error"
)

// Request is one line a client sends.
type Request struct {
	V       int    `json:"v"`
	Cmd     string `json:"cmd"`
	Wait    bool   `json:"wait,omitempty"`    // reload, upgrade: stream progress until the end
	Workers int    `json:"workers,omitempty"` // scale
	Quick   bool   `json:"quick,omitempty"`   // stop
}

// Response is one line the server sends.
type Response struct {
	V        int           `json:"v"`
	Type     string        `json:"type"`
	Progress *Progress     `json:"progress,omitempty"`
	Reload   *ReloadResult `json:"reload,omitempty"`
	Status   *Status       `json:"status,omitempty"`
	Error    string        `json:"error,omitempty"`
}

// Progress is the state of a reload in progress.
type Progress struct {
	Generation int    `json:"generation"`
	Workers    int    `json:"workers"`          // size of the new generation
	Starting   int    `json:"starting"`         // new workers booting
	Ready      int    `json:"ready"`            // new workers ready
	OldServing int    `json:"old_serving"`      // old workers still serving
	Draining   int    `json:"draining"`         // workers finishing their requests
	Phase      string `json:"phase"`            // "queued", "starting", "handing over"
	Master     int    `json:"master,omitempty"` // upgrade: the new master's pid
}

// ReloadResult is how a reload ended.
type ReloadResult struct {
	Generation int       `json:"generation"`
	OK         bool      `json:"ok"`
	Reason     string    `json:"reason,omitempty"`
	Stderr     []string  `json:"stderr,omitempty"`     // the failing worker's last lines
	MasterPid  int       `json:"master_pid,omitempty"` // upgrade: the new master
	Version    string    `json:"version,omitempty"`    // upgrade: the new master's version
	Started    time.Time `json:"started"`
	Duration   float64   `json:"duration_seconds"`
}

// The master's states (Status.State): how it serves, in one word.
const (
	// StateStarting: the first generation boots; no slot crash-loops yet.
	StateStarting = "starting"
	// StateServing: every slot has a ready worker.
	StateServing = "serving"
	// StateDegraded: some workers serve, while other slots crash-loop or
	// have no ready worker.
	StateDegraded = "degraded"
	// StateDown: no worker is ready, so no connection is answered (they
	// queue in the listeners' backlog).
	StateDown = "down"
	// StateReloading: a reload (or an in-place upgrade's) is under way,
	// with at least one worker ready.
	StateReloading = "reloading"
	// StateUpgrading: a new master is starting its workers.
	StateUpgrading = "upgrading"
	// StateStopped: WINCH stopped every worker on purpose; the listeners
	// stay open.
	StateStopped = "stopped"
	// StateStopping: shutting down (TERM, INT, QUIT, baton stop).
	StateStopping = "stopping"
)

// Status describes the master and its workers.
type Status struct {
	Pid        int       `json:"pid"`
	Version    string    `json:"version"`
	Started    time.Time `json:"started"`
	Uptime     float64   `json:"uptime_seconds"`
	ConfigFile string    `json:"config_file,omitempty"`
	// Containment says how the master holds its workers' processes: "cgroup PATH" or "process tree".
	Containment string     `json:"containment"`
	Listeners   []Listener `json:"listeners"`
	Generation  int        `json:"generation"`
	Workers     int        `json:"workers"` // the target count
	// State is one of the State* words; ReadyWorkers counts the workers
	// that serve, of any generation.
	State        string `json:"state"`
	ReadyWorkers int    `json:"ready_workers"`
	Reloading    bool   `json:"reloading"`
	ShuttingDown bool   `json:"shutting_down"`
	// LameDuck is set while a graceful shutdown waits out shutdown_delay:
	// /readyz says 503 and the workers still serve.
	LameDuck   *LameDuck     `json:"lame_duck,omitempty"`
	LastReload *ReloadResult `json:"last_reload,omitempty"`
	// Degraded lists the slots that keep crashing ("slot 2: 5 crashes in
	// a row"); the others serve.
	Degraded []string `json:"degraded,omitempty"`
	// Templates are the preload templates (preload), one per generation
	// that has one.
	Templates  []Template `json:"templates,omitempty"`
	WorkerList []Worker   `json:"worker_list"`
}

// Template is a generation's preload template, which forks its workers.
type Template struct {
	Generation int `json:"generation"`
	Pid        int `json:"pid"`
	// State is "importing", "ready", "failed" or "retiring".
	State   string    `json:"state"`
	Preload []string  `json:"preload"`
	Started time.Time `json:"started"`
	// ImportTime is how long importing the preload modules took.
	ImportTime float64 `json:"import_seconds,omitempty"`
	RSS        uint64  `json:"rss_bytes"`
}

// LameDuck is the lame-duck delay of a shutdown in progress.
type LameDuck struct {
	Delay float64 `json:"delay_seconds"` // shutdown_delay
	Left  float64 `json:"left_seconds"`  // until the workers are told to stop
}

// Listener is one open listening socket.
type Listener struct {
	Name string `json:"name"`
	Addr string `json:"addr"`
	// State is "listening", or "down" when a worker shut it down and it
	// could not be re-armed; Error then says what is wrong.
	State string `json:"state"`
	Error string `json:"error,omitempty"`
}

// Worker is one worker process.
type Worker struct {
	Slot       int       `json:"slot"`
	Pid        int       `json:"pid"`
	Generation int       `json:"generation"`
	State      string    `json:"state"` // starting, ready, draining
	Started    time.Time `json:"started"`
	Uptime     float64   `json:"uptime_seconds"`
	RSS        uint64    `json:"rss_bytes"` // its cgroup's memory, or its processes' resident memory (forked from a template: their private memory)
	Procs      int       `json:"processes"` // in its cgroup, or in its process tree
	Restarts   int       `json:"restarts"`  // of its slot
	Status     string    `json:"status,omitempty"`
	// Watchdog: it pings WATCHDOG=1, so it is replaced when it falls
	// silent for timeout.
	Watchdog bool `json:"watchdog,omitempty"`
	// Template is the pid of the preload template that forked it, 0
	// for a worker baton started itself.
	Template int `json:"template,omitempty"`
	// ForeignListeners are the TCP addresses its processes listen on
	// besides baton's listeners ("0.0.0.0:9292"): a server that binds
	// its own socket instead of using the one it inherited.
	ForeignListeners []string `json:"foreign_listeners,omitempty"`
}

// Handler carries out requests; the master implements it. Every method may
// be called from many goroutines at once and must honour ctx.
type Handler interface {
	Status(ctx context.Context) (Status, error)
	// Reload starts a reload, or queues one behind the reload in progress
	// (concurrent callers share it), reports its progress to progress (nil
	// for none) and returns how it ended.
	Reload(ctx context.Context, progress func(Progress)) (ReloadResult, error)
	// TriggerReload starts or queues a reload and returns at once, like HUP.
	TriggerReload(ctx context.Context) error
	// Upgrade and TriggerUpgrade are the same for a binary upgrade.
	Upgrade(ctx context.Context, progress func(Progress)) (ReloadResult, error)
	TriggerUpgrade(ctx context.Context) error
	Scale(ctx context.Context, workers int) error
	// Stop begins a shutdown and returns at once; the master closes the
	// control socket when it exits.
	Stop(ctx context.Context, quick bool) error
}
