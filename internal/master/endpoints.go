package master

import (
	"context"
	"encoding/json"

	"github.com/baton-pm/baton/internal/control"
	"github.com/baton-pm/baton/internal/metrics"
)

// openEndpoints starts the control socket and, if configured, the metrics
// HTTP endpoint. It returns a function that closes them, to run last as the
// master exits: `baton stop` waits for the control socket to close, and a
// load balancer polls /readyz while the workers drain.
func (m *Master) openEndpoints() (closeAll func(), err error) {
	var closers []func()
	closeAll = func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	if m.opts.MetricsAddr != "" {
		mx := metrics.New()
		srv, err := metrics.Serve(m.opts.MetricsAddr, mx.Handler(metricsSource{m}), m.log)
		if err != nil {
			return closeAll, err
		}
		m.metrics = mx
		closers = append(closers, func() { srv.Close() })
		m.log.Info("metrics endpoint listening", "addr", srv.Addr())
	}
	if m.opts.ControlPath != "" {
		srv, err := control.Listen(m.opts.ControlPath, m.ControlHandler(), m.log)
		switch {
		case err != nil && m.opts.ControlRequired:
			closeAll()
			return func() {}, err
		case err != nil:
			m.log.Warn("no control socket: baton reload/status/stop will not reach this master; set control to another path",
				"err", err)
		default:
			go srv.Serve()
			closers = append(closers, func() { srv.Close() })
			m.log.Info("control socket listening", "path", m.opts.ControlPath)
		}
	}
	return closeAll, nil
}

// metricsSource answers the metrics endpoint from the master's goroutine.
type metricsSource struct{ m *Master }

func (s metricsSource) Snapshot(ctx context.Context) (metrics.Snapshot, error) {
	st, err := s.m.Status(ctx)
	if err != nil {
		return metrics.Snapshot{}, err
	}
	snap := metrics.Snapshot{ShuttingDown: st.ShuttingDown, Generation: st.Generation}
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
