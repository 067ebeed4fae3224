package master

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-pm/baton/internal/control"
	"github.com/baton-pm/baton/internal/metrics"
)

// endpoints are the master's control socket and metrics HTTP endpoint,
// with what each serves on; a nil closer is an endpoint that is not open
// (not asked for, or not taken over yet after an upgrade).
type endpoints struct {
	controlPath, metricsAddr string
	control, metrics         io.Closer
}

// closers lists the open ones.
func (e endpoints) closers() []io.Closer {
	var cs []io.Closer
	for _, c := range []io.Closer{e.metrics, e.control} {
		if c != nil {
			cs = append(cs, c)
		}
	}
	return cs
}

// closeAll closes them and waits: the master is exiting.
func (e endpoints) closeAll() {
	for _, c := range e.closers() {
		c.Close()
	}
}

// controlRetireWait is how long a control socket that moved, or that a
// new master takes over, keeps serving the clients it has: a `baton
// reload` or `baton upgrade` waiting there reads its result.
const controlRetireWait = 5 * time.Second

// controlEndpoint is a control socket server; Close cuts its clients off
// (the master exits), retire lets them finish first.
type controlEndpoint struct{ srv *control.Server }

func (c controlEndpoint) Close() error  { return c.srv.Close() }
func (c controlEndpoint) retire() error { return c.srv.Retire(controlRetireWait) }

// closeLater closes cs off the master's goroutine, where closing may
// wait: a control socket is retired, so its clients read their answers
// first. Run waits for it before it returns.
func (m *Master) closeLater(cs []io.Closer) {
	for _, c := range cs {
		m.closing.Add(1)
		go func() {
			defer m.closing.Done()
			if ce, ok := c.(controlEndpoint); ok {
				ce.retire()
				return
			}
			c.Close()
		}()
	}
}

// openEndpoints opens, at start, the control socket and the metrics
// endpoint the options ask for. A control socket baton picked by default
// is optional: failing to open it is logged, not fatal.
func (m *Master) openEndpoints() error {
	m.endpoints = endpoints{controlPath: m.opts.ControlPath, metricsAddr: m.opts.MetricsAddr}
	m.adoptEndpoints()
	if addr := m.opts.MetricsAddr; addr != "" && m.endpoints.metrics == nil {
		if err := m.openAtStart("metrics endpoint", func() (io.Closer, error) { return m.serveMetrics(addr) },
			func(c io.Closer) { m.endpoints.metrics = c }); err != nil {
			return err
		}
	}
	if path := m.opts.ControlPath; path != "" && m.endpoints.control == nil {
		err := m.openAtStart("control socket", func() (io.Closer, error) { return m.serveControl(path) },
			func(c io.Closer) { m.endpoints.control = c })
		// A default path taken by another user, or a private directory
		// that is not private, is an attack or a mistake to fix: fatal too.
		if err != nil && (m.opts.ControlRequired || errors.Is(err, control.ErrTakenByAnotherUser) ||
			errors.Is(err, control.ErrUnsafeDirectory)) {
			return err
		}
		if err != nil {
			m.log.Warn("no control socket: baton reload/status/stop will not reach this master; set control to another path",
				"err", err)
		}
	}
	return nil
}

// adoptEndpoints takes over the endpoints the previous image of this
// master kept open across an in-place upgrade, when they still serve what
// the configuration asks; the others are closed and opened anew.
func (m *Master) adoptEndpoints() {
	st := m.adopted
	if st == nil {
		return
	}
	if st.ControlFD > 0 {
		if st.ControlPath != m.opts.ControlPath {
			unix.Close(st.ControlFD)
		} else if srv, err := control.Adopt(st.ControlFD, st.ControlPath, m.ControlHandler(), m.log); err != nil {
			m.log.Warn("cannot take over the control socket kept across the upgrade; opening it anew", "err", err)
		} else {
			go srv.Serve()
			m.endpoints.control = controlEndpoint{srv}
			m.log.Info("control socket kept across the upgrade", "path", st.ControlPath)
		}
	}
	if st.MetricsFD > 0 {
		if st.MetricsAddr != m.opts.MetricsAddr {
			unix.Close(st.MetricsFD)
		} else if srv, err := metrics.ServeFD(st.MetricsFD, m.metricsHandler(), m.log); err != nil {
			m.log.Warn("cannot take over the metrics endpoint kept across the upgrade; opening it anew", "err", err)
		} else {
			m.endpoints.metrics = srv
			m.log.Info("metrics endpoint kept across the upgrade", "addr", srv.Addr())
		}
	}
}

// openAtStart opens one endpoint and hands it to keep. A master started by
// an upgrade finds the old master still holding it, so it keeps trying in
// the background until the old master lets go at the hand-over, however
// long a manual hand-over takes.
func (m *Master) openAtStart(what string, open func() (io.Closer, error), keep func(io.Closer)) error {
	c, err := open()
	if err == nil {
		keep(c)
		return nil
	}
	if m.upgradePipe == nil || errors.Is(err, control.ErrTakenByAnotherUser) || errors.Is(err, control.ErrUnsafeDirectory) {
		return err
	}
	m.log.Info(what+" still held by the old master; taking it over at the hand-over", "err", err)
	go func() {
		for {
			select {
			case <-m.quit:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if c, err := open(); err == nil {
				m.post(func() { keep(c) })
				return
			}
		}
	}()
	return nil
}

// prepareEndpoints opens the endpoints of o that differ from the open
// ones, for a reload; unchanged ones are kept. It returns the endpoints o
// asks for, and the closers of those it opened, to be closed if the
// reload does not commit. Nothing is left open when it fails.
func (m *Master) prepareEndpoints(o MasterOptions) (next endpoints, opened []io.Closer, err error) {
	cur := m.endpoints
	next = endpoints{controlPath: o.ControlPath, metricsAddr: o.MetricsAddr, control: cur.control, metrics: cur.metrics}
	if o.MetricsAddr != cur.metricsAddr {
		next.metrics = nil
		if o.MetricsAddr != "" {
			if next.metrics, err = m.serveMetrics(o.MetricsAddr); err != nil {
				return endpoints{}, nil, err
			}
			opened = append(opened, next.metrics)
		}
	}
	if o.ControlPath != cur.controlPath {
		next.control = nil
		if o.ControlPath != "" {
			if next.control, err = m.serveControl(o.ControlPath); err != nil {
				m.closeLater(opened)
				return endpoints{}, nil, err
			}
			opened = append(opened, next.control)
		}
	}
	return next, opened, nil
}

// commitEndpoints makes next the master's endpoints and closes the ones
// it replaced.
func (m *Master) commitEndpoints(next endpoints) {
	var stale []io.Closer
	if m.endpoints.metrics != next.metrics && m.endpoints.metrics != nil {
		stale = append(stale, m.endpoints.metrics)
		m.log.Info("metrics endpoint moved", "from", m.endpoints.metricsAddr, "to", next.metricsAddr)
	}
	if m.endpoints.control != next.control && m.endpoints.control != nil {
		stale = append(stale, m.endpoints.control)
		m.log.Info("control socket moved", "from", m.endpoints.controlPath, "to", next.controlPath)
	}
	m.endpoints = next
	m.closeLater(stale)
}

// releaseEndpoints lets go of the control socket and metrics endpoint, so
// that a new master that took over the service can open them.
func (m *Master) releaseEndpoints() {
	m.closeLater(m.endpoints.closers())
	m.endpoints.control, m.endpoints.metrics = nil, nil
}

// metricsHandler serves /metrics, /healthz, /readyz and /status. The
// counters live as long as the master, whichever address serves them.
func (m *Master) metricsHandler() http.Handler {
	if m.registry == nil {
		m.registry = metrics.New()
		m.metrics = m.registry
	}
	return m.registry.Handler(metricsSource{m})
}

// serveMetrics serves the metrics endpoint on addr.
func (m *Master) serveMetrics(addr string) (io.Closer, error) {
	srv, err := metrics.Serve(addr, m.metricsHandler(), m.log)
	if err != nil {
		return nil, err
	}
	m.log.Info("metrics endpoint listening", "addr", srv.Addr())
	return srv, nil
}

// serveControl serves the control socket at path.
func (m *Master) serveControl(path string) (io.Closer, error) {
	srv, err := control.Listen(path, m.ControlHandler(), m.log)
	if err != nil {
		return nil, err
	}
	go srv.Serve()
	m.log.Info("control socket listening", "path", path)
	return controlEndpoint{srv}, nil
}

// metricsSource answers the metrics endpoint from the master's goroutine.
type metricsSource struct{ m *Master }

// Snapshot is for /metrics: the state with each worker's memory.
func (s metricsSource) Snapshot(ctx context.Context) (metrics.Snapshot, error) {
	st, err := s.m.Status(ctx)
	return toSnapshot(st), err
}

// Health is for /healthz and /readyz, which a load balancer polls every
// few seconds: the state alone, without reading /proc.
func (s metricsSource) Health(ctx context.Context) (metrics.Snapshot, error) {
	var st control.Status
	// On an error the loop may still run the closure later: st is not
	// to be read then.
	if err := s.m.call(ctx, func() { st = s.m.status() }); err != nil {
		return metrics.Snapshot{}, err
	}
	return toSnapshot(st), nil
}

func toSnapshot(st control.Status) metrics.Snapshot {
	snap := metrics.Snapshot{ShuttingDown: st.ShuttingDown, Generation: st.Generation, Degraded: st.Degraded}
	if st.LameDuck != nil {
		snap.LameDuckLeft = time.Duration(st.LameDuck.Left * float64(time.Second))
	}
	for _, l := range st.Listeners {
		if l.State == "down" {
			snap.ListenersDown = append(snap.ListenersDown, "listener "+l.Name+" ("+l.Addr+") is down: "+l.Error)
		}
	}
	for _, w := range st.WorkerList {
		snap.Workers = append(snap.Workers, metrics.Worker{Generation: w.Generation, State: w.State, RSS: w.RSS})
	}
	return snap
}

func (s metricsSource) StatusJSON(ctx context.Context) ([]byte, error) {
	st, err := s.m.Status(ctx)
	if err != nil {
		return nil, err
	}
	return json.Marshal(st)
}
