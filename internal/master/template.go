package master

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/baton-pm/baton/internal/control"
	"github.com/baton-pm/baton/internal/proc"
)

// Preload mode (GenerationOptions.Preload): each generation has one
// template, a process that imports the app once and forks the
// generation's workers on request (see package forkserver and
// docs/forkserver.md). A forked worker becomes the master's own child (the
// master is a child subreaper; the template double-forks), is moved into
// its cgroup, and only then told to go on: from there it is a worker like
// any other. A reload starts a new template, which imports the new code;
// a template that cannot import it fails the reload with its traceback
// before any worker exists.

// templateState is where a template is in its life.
type templateState int

const (
	templateImporting templateState = iota // until "ready" or "error"
	templateReady                          // forks on request
	templateFailed                         // sent "error": exits by itself
)

// template is one generation's preload template.
type template struct {
	gen     *generation
	pid     int
	proc    process
	conn    templateConn
	state   templateState
	started time.Time
	// initial: the template of the first generation at start; its
	// failure is a failure to start.
	initial bool
	// retired: the generation is gone; its control socket was closed.
	retired bool
	// importTime is what importing took, as the template measured it.
	importTime time.Duration
	// niced: importing at a lower CPU priority (nice.go).
	niced   bool
	nextID  int
	forks   map[int]*forking // requests sent, by id
	waiting []*slot          // slots to fork for once ready
}

// forking is a slot's worker being forked: waiting for its template to
// be ready (req nil), or asked for (req set).
type forking struct {
	slot   *slot
	id     int
	notify notifySocket
	req    forkRequest
}

// templateMsg is one message from a template (docs/forkserver.md).
type templateMsg struct {
	Type          string // ready, error, forked, fork_failed
	ID            int
	Pid           int
	Error         string
	Traceback     string
	Preloaded     []string
	ImportSeconds float64
}

// strayLimit bounds the exits of unknown children the master remembers:
// a forked worker can be reaped before the template's "forked" names it.
const strayLimit = 256

// spawnForked gets s a worker from its generation's template, starting
// the template first when there is none.
func (m *Master) spawnForked(s *slot) {
	if s.forking != nil {
		return
	}
	t := s.gen.tmpl
	if t == nil {
		var err error
		if t, err = m.startTemplate(s.gen); err != nil {
			m.log.Error("cannot start the preload template", "generation", s.gen.num, "err", err)
			m.failBoot(s, "cannot start the preload template: "+err.Error())
			return
		}
	}
	if t.state == templateImporting {
		s.forking = &forking{slot: s}
		t.waiting = append(t.waiting, s)
		return
	}
	m.requestFork(t, s)
}

// startTemplate starts g's template.
func (m *Master) startTemplate(g *generation) (*template, error) {
	spec := m.templateSpec(g)
	pid, p, conn, err := m.world.procs.StartTemplate(spec, g.opts.Preload)
	if err != nil {
		return nil, err
	}
	t := &template{gen: g, pid: pid, proc: p, conn: conn, started: time.Now(), forks: map[int]*forking{},
		initial: g == m.current && m.reload == nil && m.lastReload == nil && len(m.workers) == 0}
	g.tmpl = t
	m.templates[pid] = t
	m.lowerImportPriority(t)
	m.log.Info("preload template started", "generation", g.num, "pid", pid, "preload", strings.Join(g.opts.Preload, ","),
		"niced", t.niced)
	go conn.Receive(func(msg templateMsg) { m.post(func() { m.onTemplateMessage(t, msg) }) })
	m.templateAfter(t, g.opts.BootTimeout, func() {
		if t.state == templateImporting {
			m.log.Error("preload template did not finish importing within boot_timeout; killing it",
				"generation", g.num, "pid", t.pid, "boot_timeout", g.opts.BootTimeout.String())
			m.failTemplate(t, "the preload template did not finish importing within boot_timeout ("+g.opts.BootTimeout.String()+")", nil)
			m.killTemplate(t)
		}
	})
	return t, nil
}

// templateAfter runs f on the master's goroutine after d, unless t has
// exited by then (workerAfter's counterpart for templates).
func (m *Master) templateAfter(t *template, d time.Duration, f func()) {
	m.after(d, func() {
		if m.templates[t.pid] == t {
			f()
		}
	})
}

// templateSpec is how to start g's template: like one of g's workers,
// with the template's environment (no worker's own variables).
func (m *Master) templateSpec(g *generation) proc.Spec {
	fds := make([]int, len(m.listeners))
	for i, l := range m.listeners {
		fds[i] = l.FD()
	}
	return proc.Spec{
		Shim:       "/proc/self/exe",
		Path:       g.opts.CommandPath,
		Args:       g.opts.Command,
		Dir:        g.opts.Dir,
		Env:        append(m.baseEnv(g), proc.MasterPidEnv+"="+fmt.Sprint(m.pid)),
		Listeners:  fds,
		Stdout:     1,
		Stderr:     os.Stderr,
		Credential: g.opts.RunAs,
	}
}

// requestFork asks t for s's worker.
func (m *Master) requestFork(t *template, s *slot) {
	s.forking = nil
	notify, err := m.world.notify.Open(notifyOwner(s.gen.opts.RunAs))
	if err != nil {
		m.log.Error("cannot open a notify socket for a worker", "slot", s.id, "err", err)
		m.scheduleRestart(s, "crash")
		return
	}
	t.nextID++
	f := &forking{slot: s, id: t.nextID, notify: notify}
	req, err := t.conn.Fork(f.id, m.workerEnv(s, notify.Addr()))
	if err != nil {
		notify.Close()
		m.log.Error("cannot ask the preload template for a worker", "slot", s.id, "template", t.pid, "err", err)
		m.failBoot(s, "cannot ask the preload template for a worker: "+err.Error())
		return
	}
	f.req = req
	t.forks[f.id] = f
	s.forking = f
	m.templateAfter(t, s.gen.opts.BootTimeout, func() {
		if t.forks[f.id] == f {
			m.dropFork(t, f)
			m.failBoot(s, "the preload template did not fork a worker within boot_timeout")
		}
	})
}

// dropFork forgets f: its worker, if forked, exits as soon as its go pipe
// is closed.
func (m *Master) dropFork(t *template, f *forking) {
	delete(t.forks, f.id)
	if f.slot.forking == f {
		f.slot.forking = nil
	}
	if f.req != nil {
		f.req.Abort()
	}
	if f.notify != nil {
		f.notify.Close()
	}
}

// cancelFork stops a slot's worker from being forked: the slot is
// retired, or its generation failed.
func (m *Master) cancelFork(s *slot) {
	f := s.forking
	if f == nil {
		return
	}
	s.forking = nil
	if t := s.gen.tmpl; t != nil {
		t.waiting = removeSlot(t.waiting, s)
		if t.forks[f.id] == f {
			m.dropFork(t, f)
		}
	}
}

func removeSlot(list []*slot, s *slot) []*slot {
	out := list[:0]
	for _, x := range list {
		if x != s {
			out = append(out, x)
		}
	}
	return out
}

func (m *Master) onTemplateMessage(t *template, msg templateMsg) {
	if m.templates[t.pid] != t {
		return
	}
	switch msg.Type {
	case "ready":
		m.onTemplateReady(t, msg)
	case "error":
		reason := "the preload template cannot import the app: " + msg.Error
		m.log.Error("preload failed", "generation", t.gen.num, "pid", t.pid, "error", msg.Error)
		m.failTemplate(t, reason, tracebackLines(msg.Traceback))
	case "forked":
		if f, ok := t.forks[msg.ID]; ok {
			delete(t.forks, msg.ID)
			m.adoptForked(t, f, msg.Pid)
		}
	case "fork_failed":
		if f, ok := t.forks[msg.ID]; ok {
			s := f.slot
			m.dropFork(t, f)
			m.log.Error("the preload template could not fork a worker", "slot", s.id, "generation", t.gen.num, "err", msg.Error)
			m.failBoot(s, "the preload template could not fork a worker: "+msg.Error)
		}
	default:
		m.log.Warn("unknown message from the preload template", "pid", t.pid, "type", msg.Type)
	}
}

func (m *Master) onTemplateReady(t *template, msg templateMsg) {
	if t.state != templateImporting {
		return
	}
	t.state = templateReady
	t.importTime = time.Duration(msg.ImportSeconds * float64(time.Second))
	m.restoreImportPriority(t)
	m.log.Info("preload template ready", "generation", t.gen.num, "pid", t.pid,
		"preloaded", strings.Join(msg.Preloaded, ","), "import_time", fmt.Sprintf("%.3fs", msg.ImportSeconds))
	waiting := t.waiting
	t.waiting = nil
	for _, s := range waiting {
		if s.forking != nil && s.forking.req == nil {
			m.requestFork(t, s)
		}
	}
}

// tracebackLines is a traceback as lines, the way a crash report shows a
// worker's stderr.
func tracebackLines(tb string) []string {
	tb = strings.TrimRight(tb, "\n")
	if tb == "" {
		return nil
	}
	return strings.Split(tb, "\n")
}

// failTemplate handles a template that cannot import the app: the slots
// waiting for it fail to boot; a reload fails with the traceback, and a
// start fails with it.
func (m *Master) failTemplate(t *template, reason string, traceback []string) {
	if t.state == templateFailed {
		return
	}
	t.state = templateFailed
	if t.gen.tmpl == t {
		t.gen.tmpl = nil
	}
	waiting := t.waiting
	t.waiting = nil
	for _, s := range waiting {
		s.forking = nil
	}
	switch {
	case m.isNew(t.gen):
		m.failReloadReport(reason, traceback)
	case t.initial && m.shutdown == running:
		m.fatal = &StartError{Err: fmt.Errorf("%s\n%s", reason, strings.Join(traceback, "\n"))}
		m.beginShutdown(quick, 0)
	default:
		for _, s := range waiting {
			m.scheduleRestart(s, "boot_failure")
		}
	}
}

// adoptForked makes the process a template forked for f a worker of f's
// slot, then lets it run.
func (m *Master) adoptForked(t *template, f *forking, pid int) {
	s := f.slot
	s.forking = nil
	if e, gone := m.strays[pid]; gone {
		delete(m.strays, pid)
		f.req.Abort()
		f.notify.Close()
		m.failBoot(s, "the forked worker exited before it ran: "+proc.Describe(e.Status))
		return
	}
	p, err := m.world.procs.AdoptForked(pid, f.req)
	if err != nil {
		f.req.Abort()
		f.notify.Close()
		m.log.Error("cannot take over a forked worker", "slot", s.id, "pid", pid, "err", err)
		m.failBoot(s, "cannot take over the forked worker: "+err.Error())
		return
	}
	w := &worker{pid: pid, started: time.Now(), proc: p, gen: s.gen, slot: s.id, notify: f.notify, template: t.pid}
	s.worker = w
	m.workers[pid] = w
	m.lowerBootPriority(w)
	m.log.Info("worker started", "slot", s.id, "pid", pid, "generation", s.gen.num, "niced", w.niced, "forked_by", t.pid)
	m.watchReadiness(w)
	if err := f.req.Go(); err != nil {
		m.log.Warn("cannot tell the forked worker to run; it will exit", "slot", s.id, "pid", pid, "err", err)
	}
}

// onTemplateExit handles a reaped template.
func (m *Master) onTemplateExit(t *template, e proc.Exit) {
	delete(m.templates, t.pid)
	t.conn.Close()
	if t.gen.tmpl == t {
		t.gen.tmpl = nil
	}
	status := proc.Describe(e.Status)
	level := slog.LevelWarn
	if t.retired || m.shutdown != running {
		level = slog.LevelInfo
	}
	m.log.Log(context.Background(), level, "preload template exited", "generation", t.gen.num, "pid", t.pid, "status", status)
	m.treeKills++
	p, skip := t.proc, m.childrenBut(t.pid)
	offLoop(m, func() int {
		n := p.KillTree(skip, true)
		p.Release()
		return n
	}, func(int) { m.treeKills-- })
	forks := t.forks
	t.forks = map[int]*forking{}
	if t.state == templateImporting {
		m.withStderrLines(t.proc, func(lines []string) {
			m.failTemplate(t, "the preload template exited while importing the app: "+status, lines)
		})
	}
	for _, f := range forks {
		s := f.slot
		m.dropFork(t, f)
		if m.shutdown < graceful { // a lame duck's slots still serve
			m.failBoot(s, "the preload template exited before it forked the worker: "+status)
		}
	}
}

// retireTemplates closes the control socket of every template whose
// generation is gone and has no worker and no fork left: it exits by
// itself, and is killed if it has not after its graceful timeout.
func (m *Master) retireTemplates() {
	for _, t := range m.templates {
		if t.retired || (m.isLive(t.gen) && m.shutdown < graceful) || m.generationBusy(t) {
			continue
		}
		m.retireTemplate(t)
	}
}

func (m *Master) retireTemplate(t *template) {
	t.retired = true
	if t.gen.tmpl == t {
		t.gen.tmpl = nil
	}
	for _, f := range t.forks {
		m.dropFork(t, f)
	}
	for _, s := range t.waiting {
		s.forking = nil
	}
	t.waiting = nil
	t.conn.Close()
	timeout := t.gen.opts.GracefulTimeout
	m.templateAfter(t, timeout, func() {
		m.log.Warn("preload template did not exit within graceful_timeout; killing it", "pid", t.pid)
		m.killTemplate(t)
	})
}

// generationBusy reports whether t's generation still has workers or
// forks under way.
func (m *Master) generationBusy(t *template) bool {
	if len(t.forks) > 0 {
		return true
	}
	for _, w := range m.workers {
		if w.gen == t.gen {
			return true
		}
	}
	return false
}

// killTemplate kills t's whole tree, off the master's goroutine.
func (m *Master) killTemplate(t *template) {
	p, skip := t.proc, m.childrenBut(t.pid)
	go p.KillTree(skip, false)
}

// rememberStray keeps the exit of a child the master does not know yet,
// while templates may be forking.
func (m *Master) rememberStray(e proc.Exit) {
	if len(m.templates) == 0 {
		return
	}
	if len(m.strays) >= strayLimit {
		clear(m.strays)
	}
	m.strays[e.Pid] = e
}

// templateStatus describes the templates for status, oldest generation
// last, as workers are listed.
func (m *Master) templateStatus() []control.Template {
	var out []control.Template
	for pid, t := range m.templates {
		state := [...]string{"importing", "ready", "failed"}[t.state]
		if t.retired {
			state = "retiring"
		}
		out = append(out, control.Template{Generation: t.gen.num, Pid: pid, State: state,
			Preload: t.gen.opts.Preload, Started: t.started, ImportTime: t.importTime.Seconds()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Generation > out[j].Generation })
	return out
}
