// Package metrics exposes baton's Prometheus metrics and its HTTP health
// endpoints (/metrics, /healthz, /readyz, /status).
//
// It is a leaf package: it knows nothing about the master. The master reports
// events through the methods of Metrics (reload finished, worker restarted,
// ...) and answers scrape-time questions through the Source interface, so the
// master's single goroutine stays the only owner of its state.
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Known label values. They are pre-created at zero so that rate() and
// increase() work from the first scrape instead of only after the first event.
var (
	reloadResults  = []string{"success", "failure"}
	restartReasons = []string{"crash", "boot_failure", "watchdog", "memory", "age"}
)

// reloadBuckets spans a fast reload of a small app (~50 ms) up to a slow
// rolling reload of many workers with long boots (2 min).
var reloadBuckets = []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120}

// bootBuckets covers a Go worker that is ready in milliseconds as well as an
// interpreter-based app that needs a minute or more to load.
var bootBuckets = []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}

// probeTimeout bounds how long a scrape or probe waits for the master's
// goroutine: an answer slower than this means the master loop is stuck.
const probeTimeout = 2 * time.Second

// Metrics holds baton's collectors on a private registry, so that baton never
// leaks metrics into (or picks them up from) the global default registry.
// Its event methods are safe for concurrent use.
type Metrics struct {
	reg            *prometheus.Registry
	reloads        *prometheus.CounterVec
	reloadDuration prometheus.Histogram
	restarts       *prometheus.CounterVec
	bootDuration   prometheus.Histogram
	notifyRejected prometheus.Counter

	// probeTimeout is a field rather than the constant so tests can shorten it.
	probeTimeout time.Duration
}

// New creates the registry with baton's event metrics and the Go runtime and
// process collectors (process_resident_memory_bytes and process_open_fds are
// the master's own RSS and file descriptors).
func New() *Metrics {
	m := &Metrics{
		reg:            prometheus.NewRegistry(),
		reloads:        newReloads(),
		reloadDuration: newHistogram("baton_reload_duration_seconds", "Duration of reloads that started a new generation: until it was ready (success) or given up with the old generation still serving (failure). Rejected configs are not observed.", reloadBuckets),
		restarts:       newRestarts(),
		bootDuration:   newHistogram("baton_worker_boot_seconds", "Time from forking a worker until it reported ready.", bootBuckets),
		notifyRejected: prometheus.NewCounter(prometheus.CounterOpts{Name: "baton_notify_rejected_total", Help: notifyRejectedHelp}),
		probeTimeout:   probeTimeout,
	}
	m.reg.MustRegister(
		m.reloads, m.reloadDuration, m.restarts, m.bootDuration, m.notifyRejected,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

const notifyRejectedHelp = "Messages to workers' notify sockets that were refused because their sender was not a process of the worker (or sent no credentials)."

func newReloads() *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "baton_reloads_total",
		Help: "Reloads attempted, by result. A reload rejected because its config was invalid counts as a failure.",
	}, []string{"result"})
	for _, r := range reloadResults {
		c.WithLabelValues(r)
	}
	return c
}

func newRestarts() *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "baton_worker_restarts_total",
		Help: "Workers replaced by the master, by reason: crash (exited unexpectedly), boot_failure (never became ready), watchdog (missed its WATCHDOG=1 deadline), memory (over the RSS limit), age (reached its maximum lifetime).",
	}, []string{"reason"})
	for _, r := range restartReasons {
		c.WithLabelValues(r)
	}
	return c
}

func newHistogram(name, help string, buckets []float64) prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets})
}

// ReloadFinished records a reload that ran, successfully or not, and how long
// it took.
func (m *Metrics) ReloadFinished(ok bool, d time.Duration) {
	result := "failure"
	if ok {
		result = "success"
	}
	m.reloads.WithLabelValues(result).Inc()
	m.reloadDuration.Observe(d.Seconds())
}

// ReloadRejected records a reload refused before it started because the new
// config was invalid. It is a failure, but it has no meaningful duration, so
// it stays out of the histogram.
func (m *Metrics) ReloadRejected() {
	m.reloads.WithLabelValues("failure").Inc()
}

// WorkerRestarted records that the master replaced a worker. reason is one of
// crash, boot_failure, watchdog, memory, age.
func (m *Metrics) WorkerRestarted(reason string) {
	m.restarts.WithLabelValues(reason).Inc()
}

// WorkerBooted records how long a worker took from fork to ready.
func (m *Metrics) WorkerBooted(d time.Duration) {
	m.bootDuration.Observe(d.Seconds())
}

// NotifyRejected records n messages refused on workers' notify sockets.
func (m *Metrics) NotifyRejected(n int) {
	m.notifyRejected.Add(float64(n))
}
