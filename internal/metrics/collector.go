package metrics

import (
	"context"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Snapshot is the master's state at scrape time.
type Snapshot struct {
	Workers      []Worker // every live worker process
	ShuttingDown bool
	// LameDuckLeft, during a shutdown's shutdown_delay, is how long the
	// workers still serve; 0 otherwise.
	LameDuckLeft time.Duration
	Generation   int // current generation
	// Degraded describes crash-looping slots; the host still serves.
	Degraded []string
	// ListenersDown describes listeners that accept no connection: the
	// host does not serve them.
	ListenersDown []string
}

// Worker is one live worker process as seen by the master.
type Worker struct {
	Generation int
	State      string // starting, ready, draining
	RSS        uint64 // resident set size in bytes
}

// Worker states the master reports.
const (
	StateStarting = "starting"
	StateReady    = "ready"
	StateDraining = "draining"
)

// Source is implemented by the master. Calls may block briefly, because they
// ask the master's goroutine, and must return when ctx is done.
type Source interface {
	// Snapshot is the state with each worker's memory, for /metrics.
	Snapshot(ctx context.Context) (Snapshot, error)
	// Health is the state without memory readings, which cost a walk of
	// /proc: /healthz and /readyz are polled every few seconds.
	Health(ctx context.Context) (Snapshot, error)
	// StatusJSON returns the same JSON as `baton status --json`.
	StatusJSON(ctx context.Context) ([]byte, error)
}

var (
	workersDesc = prometheus.NewDesc("baton_workers",
		"Live worker processes, by state (starting, ready, draining) and generation.",
		[]string{"state", "generation"}, nil)
	generationDesc = prometheus.NewDesc("baton_generation",
		"Current generation: incremented by every reload that starts new workers.", nil, nil)
	shuttingDownDesc = prometheus.NewDesc("baton_shutting_down",
		"1 while the master is shutting down (draining workers before exit), else 0.", nil, nil)
	workerRSSDesc = prometheus.NewDesc("baton_worker_rss_bytes",
		"Sum of the resident set size of all live workers, in bytes (the master's own RSS is process_resident_memory_bytes).", nil, nil)
)

// snapshotCollector asks the master for its state during a scrape. It is built
// per scrape so that it can carry that request's context: a client that gives
// up, or a master that stops answering, never holds a scrape open for long.
type snapshotCollector struct {
	ctx context.Context
	src Source
}

func (c snapshotCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- workersDesc
	ch <- generationDesc
	ch <- shuttingDownDesc
	ch <- workerRSSDesc
}

// Collect exports nothing if the master does not answer: the scrape then still
// carries the event and process metrics, which matter most while the master
// is exiting, instead of failing as a whole.
func (c snapshotCollector) Collect(ch chan<- prometheus.Metric) {
	s, err := c.src.Snapshot(c.ctx)
	if err != nil {
		return
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for k, n := range countWorkers(s) {
		gauge(workersDesc, float64(n), k.state, strconv.Itoa(k.generation))
	}
	gauge(generationDesc, float64(s.Generation))
	gauge(shuttingDownDesc, boolToFloat(s.ShuttingDown))
	gauge(workerRSSDesc, float64(totalRSS(s.Workers)))
}

type workerKey struct {
	state      string
	generation int
}

// countWorkers counts workers per state and generation. The current
// generation always gets a (possibly zero) series for each known state, so
// an alert such as `baton_workers{state="ready"} == 0` has a series to fire
// on instead of seeing an absent one.
func countWorkers(s Snapshot) map[workerKey]int {
	counts := make(map[workerKey]int, 3)
	for _, st := range []string{StateStarting, StateReady, StateDraining} {
		counts[workerKey{st, s.Generation}] = 0
	}
	for _, w := range s.Workers {
		counts[workerKey{w.State, w.Generation}]++
	}
	return counts
}

func totalRSS(ws []Worker) uint64 {
	var sum uint64
	for _, w := range ws {
		sum += w.RSS
	}
	return sum
}

func boolToFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
