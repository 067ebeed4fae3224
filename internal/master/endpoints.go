package master

import (
	"context"
	"encoding/json"
	"time"

	"github.com/baton-pm/baton/internal/control"
	"github.com/baton-pm/baton/internal/metrics"
)

// openEndpoints starts the control socket and, if configured, the metrics
// HTTP endpoint. It returns a function that closes them, to run last as the
// master exits: `baton stop` waits for the control socket to close, and a
// load balancer polls /readyz while the workers drain.
func (m *Master) openEndpoints() error {
	if m.opts.MetricsAddr != "" {
		mx := metrics.New()
		m.metrics = mx
		serve := func() (func(), error) {
			srv, err := metrics.Serve(m.opts.MetricsAddr, mx.Handler(metricsSource{m}), m.log)
			if err != nil {
				return nil, err
			}
			m.log.Info("metrics endpoint listening", "addr", srv.Addr())
			return func() { srv.Close() }, nil
		}
		if err := m.openEndpoint("metrics endpoint", serve); err != nil {
			return err
		}
	}
	if m.opts.ControlPath != "" {
		serve := func() (func(), error) {
			srv, err := control.Listen(m.opts.ControlPath, m.ControlHandler(), m.log)
			if err != nil {
				return nil, err
			}
			go srv.Serve()
			m.log.Info("control socket listening", "path", m.opts.ControlPath)
			return func() { srv.Close() }, nil
		}
		err := m.openEndpoint("control socket", serve)
		if err != nil && m.opts.ControlRequired {
			return err
		}
		if err != nil {
			m.log.Warn("no control socket: baton reload/status/stop will not reach this master; set control to another path",
				"err", err)
		}
	}
	return nil
}

// openEndpoint opens one endpoint. A master started by an upgrade finds
// the old master still holding it, so it keeps trying in the background
// until the old master lets go at the hand-over.
func (m *Master) openEndpoint(what string, serve func() (func(), error)) error {
	closer, err := serve()
	if err == nil {
		m.endpointClosers = append(m.endpointClosers, closer)
		return nil
	}
	if m.upgradePipe == nil {
		return err
	}
	m.log.Info(what+" still held by the old master; taking it over at the hand-over", "err", err)
	// The old master lets go once this one is ready, however long a
	// manual hand-over takes.
	go func() {
		for {
			select {
			case <-m.quit:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if closer, err := serve(); err == nil {
				m.post(func() { m.endpointClosers = append(m.endpointClosers, closer) })
				return
			}
		}
	}()
	return nil
}

// closeEndpointsNow closes the control socket and metrics endpoint.
func (m *Master) closeEndpointsNow() {
	for i := len(m.endpointClosers) - 1; i >= 0; i-- {
		m.endpointClosers[i]()
	}
	m.endpointClosers = nil
}

// metricsSource answers the metrics endpoint from the master's goroutine.
type metricsSource struct{ m *Master }

func (s metricsSource) Snapshot(ctx context.Context) (metrics.Snapshot, error) {
	st, err := s.m.Status(ctx)
	if err != nil {
		return metrics.Snapshot{}, err
	}
	snap := metrics.Snapshot{ShuttingDown: st.ShuttingDown, Generation: st.Generation, Degraded: st.Degraded}
	for _, w := range st.WorkerList {
		snap.Workers = append(snap.Workers, metrics.Worker{Generation: w.Generation, State: w.State, RSS: w.RSS})
	}
	return snap, nil
}

func (s metricsSource) StatusJSON(ctx context.Context) ([]byte, error) {
	st, err := s.m.Status(ctx)
	if err != nil {
		return nil, err
	}
	return json.Marshal(st)
}
