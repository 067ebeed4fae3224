package metrics

import (
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// MaxConns is how many connections the endpoint holds at once. Each is a
// file descriptor of the master's, which also needs descriptors for every
// worker it starts: without a cap, idle connections alone could use up the
// master's RLIMIT_NOFILE and make a worker's restart fail. A Prometheus
// server, a load balancer's probes and a few humans need far fewer.
const MaxConns = 64

// shedLogInterval is the least time between two warnings about connections
// shed at the cap, so that a flood costs one log line per interval.
const shedLogInterval = 10 * time.Second

// limitListener accepts at most max connections at once. When a new one
// arrives at the cap, the connection that has waited longest between
// requests (one that sent nothing yet, or a keep-alive one between two
// requests) is closed to make room; if every connection is in a request, the
// new one is closed at once instead. Either way the descriptor is released
// immediately: nothing waits in the kernel's accept queue for a slot, and
// the accept loop only ever turns once per connection that arrived.
//
// Evicting the longest-idle connection, rather than refusing the newcomer,
// keeps the endpoint answering a load balancer's probe while someone holds
// many idle connections open: the flood churns among itself. Connections'
// states come from the server's ConnState hook (connState), which must be
// installed: without it every connection looks idle and may be evicted.
type limitListener struct {
	net.Listener
	max int
	log *slog.Logger

	mu    sync.Mutex
	conns map[*limitConn]struct{}
	// Shed since the last warning, and when that was.
	refused, evicted int
	lastWarn         time.Time
}

func newLimitListener(ln net.Listener, max int, log *slog.Logger) *limitListener {
	return &limitListener{Listener: ln, max: max, log: log, conns: make(map[*limitConn]struct{}, max)}
}

// limitConn is an accepted connection that holds a slot until it is closed.
type limitConn struct {
	net.Conn
	l *limitListener
	// Guarded by l.mu.
	busy  bool      // in a request: never evicted
	since time.Time // accepted, or last went idle between requests
}

// Accept returns the next connection that got a slot. Errors are the
// underlying listener's, so http.Server's own backoff on, say, EMFILE
// applies.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		lc := &limitConn{Conn: c, l: l, since: time.Now()}
		victim, ok, report := l.admit(lc)
		if victim != nil {
			victim.Conn.Close() // its server goroutine sees the error and ends
		}
		if !ok {
			refuse(c)
		}
		if report != nil {
			report()
		}
		if ok {
			return lc, nil
		}
	}
}

// admit gives lc a slot, evicting the longest-idle connection if there is
// no free one. It returns the evicted connection, to be closed outside the
// lock, whether lc was admitted, and a warning to log (outside the lock)
// if one is due.
func (l *limitListener) admit(lc *limitConn) (victim *limitConn, ok bool, report func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.conns) >= l.max {
		for c := range l.conns {
			if !c.busy && (victim == nil || c.since.Before(victim.since)) {
				victim = c
			}
		}
		if victim == nil {
			l.refused++
			return nil, false, l.reportLocked()
		}
		delete(l.conns, victim)
		l.evicted++
		report = l.reportLocked()
	}
	l.conns[lc] = struct{}{}
	return victim, true, report
}

// reportLocked returns a warning about the connections shed so far, at
// most once per shedLogInterval, and nil in between.
func (l *limitListener) reportLocked() func() {
	now := time.Now()
	if !l.lastWarn.IsZero() && now.Sub(l.lastWarn) < shedLogInterval {
		return nil
	}
	evicted, refused := l.evicted, l.refused
	l.lastWarn = now
	l.refused, l.evicted = 0, 0
	return func() {
		l.log.Warn("metrics endpoint: connection limit reached; closing the longest-idle connections (or new ones while all are in a request)",
			"max", l.max, "evicted", evicted, "refused", refused, "next_report_within", shedLogInterval.String())
	}
}

// connState is the http.Server's ConnState hook: it tells admit which
// connections are in a request.
func (l *limitListener) connState(c net.Conn, state http.ConnState) {
	lc, ok := c.(*limitConn)
	if !ok {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch state {
	case http.StateActive, http.StateHijacked:
		lc.busy = true
	case http.StateIdle:
		lc.busy = false
		lc.since = time.Now()
	}
}

// open is how many connections hold a slot.
func (l *limitListener) open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// Close frees the connection's slot (once, and not at all if it was
// evicted and its slot given away) and closes it.
func (c *limitConn) Close() error {
	c.l.mu.Lock()
	delete(c.l.conns, c)
	c.l.mu.Unlock()
	return c.Conn.Close()
}

// refuse closes a connection that gets no slot with an RST rather than a
// FIN: the client learns at once, and no TIME_WAIT entry is left behind for
// every connection of a flood.
func refuse(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	c.Close()
}
