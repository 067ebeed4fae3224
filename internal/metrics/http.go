package metrics

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Handler returns the HTTP API: /metrics, /healthz, /readyz and /status.
// Only GET and HEAD are allowed (405 otherwise); every other path is 404.
// src must not be nil.
func (m *Metrics) Handler(src Source) http.Handler {
	if src == nil {
		panic("metrics: Handler needs a non-nil Source")
	}
	h := handler{m: m, src: src}
	mux := http.NewServeMux()
	// A "GET" pattern also matches HEAD, and ServeMux answers other methods
	// with 405 and an Allow header, and unknown paths with 404.
	mux.HandleFunc("GET /metrics", h.metrics)
	mux.HandleFunc("GET /healthz", h.healthz)
	mux.HandleFunc("GET /readyz", h.readyz)
	mux.HandleFunc("GET /status", h.status)
	return mux
}

type handler struct {
	m   *Metrics
	src Source
}

// probeCtx bounds a call into the master by the probe timeout and by the
// request, whichever ends first.
func (h handler) probeCtx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), h.m.probeTimeout)
}

// metrics serves the registry merged with a per-scrape snapshot collector.
// The collector is registered per request, not once, because Collect has no
// context of its own and must stop waiting when the scrape is abandoned.
func (h handler) metrics(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := h.probeCtx(r)
	defer cancel()
	scrape := prometheus.NewRegistry()
	scrape.MustRegister(snapshotCollector{ctx: ctx, src: h.src})
	promhttp.HandlerFor(prometheus.Gatherers{h.m.reg, scrape}, promhttp.HandlerOpts{}).ServeHTTP(w, r)
}

// healthz is liveness: the master's loop answered in time. It does not care
// about workers, so a host with crashing workers is not killed for it.
func (h handler) healthz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := h.probeCtx(r)
	defer cancel()
	if _, err := h.src.Health(ctx); err != nil {
		plain(w, http.StatusServiceUnavailable, "master not responding: "+err.Error())
		return
	}
	plain(w, http.StatusOK, "ok")
}

// readyz is readiness: whether a load balancer should send traffic here. It
// turns 503 as soon as shutdown starts, before workers stop accepting, so the
// host leaves the pool while requests still succeed.
func (h handler) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := h.probeCtx(r)
	defer cancel()
	s, err := h.src.Health(ctx)
	if err != nil {
		plain(w, http.StatusServiceUnavailable, "master not responding: "+err.Error())
		return
	}
	if reason := notReady(s); reason != "" {
		plain(w, http.StatusServiceUnavailable, reason)
		return
	}
	if len(s.Degraded) > 0 {
		// Still serving: a load balancer should keep it; a human should look.
		plain(w, http.StatusOK, "ready (degraded: "+strings.Join(s.Degraded, "; ")+")")
		return
	}
	plain(w, http.StatusOK, "ready")
}

// notReady returns why s should not get traffic, or "" if it should.
func notReady(s Snapshot) string {
	if s.ShuttingDown && s.LameDuckLeft > 0 {
		return fmt.Sprintf("shutting down (lame duck: the workers serve for %s more)", s.LameDuckLeft.Round(100*time.Millisecond))
	}
	if s.ShuttingDown {
		return "shutting down"
	}
	if len(s.ListenersDown) > 0 {
		return strings.Join(s.ListenersDown, "; ")
	}
	for _, wk := range s.Workers {
		if wk.State == StateReady {
			return ""
		}
	}
	return "no ready worker"
}

func (h handler) status(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := h.probeCtx(r)
	defer cancel()
	body, err := h.src.StatusJSON(ctx)
	if err != nil {
		plain(w, http.StatusServiceUnavailable, "status unavailable: "+err.Error())
		return
	}
	noCache(w)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	w.Write(body) //nolint:errcheck // the client went away; nothing to do
}

// plain writes a one-line text answer. Probes must never be served from a
// cache, or a load balancer could keep seeing "ready" during shutdown.
func plain(w http.ResponseWriter, code int, msg string) {
	noCache(w)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	fmt.Fprintln(w, msg)
}

func noCache(w http.ResponseWriter) {
	w.Header().Set("Cache-Control", "no-store")
}
