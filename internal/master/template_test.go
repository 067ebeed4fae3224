package master

import (
	"errors"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/baton-pm/baton/internal/proc"
	"golang.org/x/sys/unix"
)

// The fake world's preload templates: a test says what a template
// answers (tb.templateSays, tb.forkAll) and sees what the master asked.

// fakeTemplate is a template's control socket.
type fakeTemplate struct {
	w       *fakeWorld
	pid     int
	preload []string
	msgs    chan templateMsg
	closed  chan struct{}
	once    sync.Once
	forks   []*fakeFork // every request, in order
}

// fakeFork is one worker asked of a template.
type fakeFork struct {
	id       int
	env      []string
	answered bool // forked (or failed) was sent
	pid      int  // the forked worker
	went     bool
	aborted  bool
}

func (f *fakeWorld) StartTemplate(spec proc.Spec, preload []string) (int, process, templateConn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.startErr; err != nil {
		f.startErr = nil
		return 0, nil, nil, err
	}
	p := f.newProc("template")
	p.spec = spec
	t := &fakeTemplate{w: f, pid: p.pid, preload: preload, msgs: make(chan templateMsg, 64), closed: make(chan struct{})}
	if f.templates == nil {
		f.templates = map[int]*fakeTemplate{}
	}
	f.templates[p.pid] = t
	return p.pid, p, t, nil
}

func (f *fakeWorld) Close() {}

func (f *fakeWorld) AdoptForked(pid int, req forkRequest) (process, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	// A pid reaped already may name another process by now: pidfd_open
	// would succeed, so only the master's own records can tell.
	p := f.procs[pid]
	if p == nil {
		return nil, errors.New("forked worker is gone")
	}
	return p, nil
}

func (t *fakeTemplate) Receive(handle func(templateMsg)) {
	for {
		select {
		case msg := <-t.msgs:
			handle(msg)
		case <-t.closed:
			return
		}
	}
}

func (t *fakeTemplate) Fork(id int, env []string) (forkRequest, error) {
	t.w.mu.Lock()
	defer t.w.mu.Unlock()
	ff := &fakeFork{id: id, env: slices.Clone(env)}
	t.forks = append(t.forks, ff)
	return &fakeForkReq{t.w, ff}, nil
}

// Close: the template sees EOF and exits 0, as the real one does.
func (t *fakeTemplate) Close() error {
	t.once.Do(func() {
		close(t.closed)
		t.w.mu.Lock()
		defer t.w.mu.Unlock()
		if p := t.w.procs[t.pid]; !p.exited {
			p.exitLocked(0)
		}
	})
	return nil
}

func (t *fakeTemplate) isClosed() bool {
	select {
	case <-t.closed:
		return true
	default:
		return false
	}
}

type fakeForkReq struct {
	w *fakeWorld
	f *fakeFork
}

func (r *fakeForkReq) Go() error {
	r.w.mu.Lock()
	defer r.w.mu.Unlock()
	r.f.went = true
	return nil
}

func (r *fakeForkReq) Abort() {
	r.w.mu.Lock()
	defer r.w.mu.Unlock()
	r.f.aborted = true
}

// template returns the fake template pid.
func (tb *testbed) template(pid int) *fakeTemplate {
	tb.t.Helper()
	tb.w.mu.Lock()
	defer tb.w.mu.Unlock()
	t := tb.w.templates[pid]
	if t == nil {
		tb.t.Fatalf("no template %d was started", pid)
	}
	return t
}

// templateSays delivers msg from template pid.
func (tb *testbed) templateSays(pid int, msg templateMsg) {
	tb.template(pid).msgs <- msg
	tb.settle()
}

// requests are the fork requests template pid got so far.
func (tb *testbed) requests(pid int) []fakeFork {
	t := tb.template(pid)
	tb.w.mu.Lock()
	defer tb.w.mu.Unlock()
	var out []fakeFork
	for _, f := range t.forks {
		out = append(out, *f)
	}
	return out
}

// forkAll answers every unanswered request of template pid with a new
// worker process, and returns their pids.
func (tb *testbed) forkAll(pid int) []int {
	t := tb.template(pid)
	var pids []int
	tb.w.mu.Lock()
	var msgs []templateMsg
	for _, f := range t.forks {
		if f.answered || f.aborted {
			continue
		}
		p := tb.w.newProc("worker")
		p.spec = proc.Spec{Env: f.env}
		f.answered, f.pid = true, p.pid
		pids = append(pids, p.pid)
		msgs = append(msgs, templateMsg{Type: "forked", ID: f.id, Pid: p.pid})
	}
	tb.w.mu.Unlock()
	for _, msg := range msgs {
		t.msgs <- msg
	}
	tb.settle()
	return pids
}

func preloadGen(n int) GenerationOptions {
	g := gen(n)
	g.Preload = []string{"app"}
	return g
}

func envOf(env []string, name string) (string, bool) {
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && k == name {
			return v, true
		}
	}
	return "", false
}

// servingPreloaded starts a preload master and makes its first
// generation ready; f gets the template's pid.
func servingPreloaded(t *testing.T, opts Options, f func(t *testing.T, tb *testbed, tmpl int)) {
	inBubble(t, opts, func(t *testing.T, tb *testbed) {
		tmpls := tb.started("template")
		if len(tmpls) != 1 {
			t.Fatalf("%d templates started, want 1", len(tmpls))
		}
		tb.templateSays(tmpls[0], templateMsg{Type: "ready", Preloaded: []string{"app"}})
		tb.ready(tb.forkAll(tmpls[0])...)
		if n := tb.count(1, "ready"); n != opts.Generation.Workers {
			t.Fatalf("%d workers ready, want %d", n, opts.Generation.Workers)
		}
		f(t, tb, tmpls[0])
	})
}

func TestPreloadForksEveryWorkerFromOneTemplateOnceItHasImported(t *testing.T) {
	inBubble(t, options(preloadGen(3)), func(t *testing.T, tb *testbed) {
		tmpls := tb.started("template")
		if len(tmpls) != 1 || len(tb.started("worker")) != 0 {
			t.Fatalf("started %d templates and %d workers, want 1 and 0", len(tmpls), len(tb.started("worker")))
		}
		tmpl := tmpls[0]
		spec := tb.proc(tmpl).spec
		for _, name := range []string{"NOTIFY_SOCKET", "LISTEN_FDS", "BATON_WORKER_ID"} {
			if v, ok := envOf(spec.Env, name); ok {
				t.Errorf("the template's environment has %s=%s, a worker's own variable", name, v)
			}
		}
		if v, _ := envOf(spec.Env, proc.MasterPidEnv); v == "" {
			t.Errorf("the template's environment lacks %s (the shim needs it)", proc.MasterPidEnv)
		}
		if n := len(tb.requests(tmpl)); n != 0 {
			t.Fatalf("%d forks asked before the template imported the app", n)
		}

		tb.templateSays(tmpl, templateMsg{Type: "ready", Preloaded: []string{"app"}})
		reqs := tb.requests(tmpl)
		if len(reqs) != 3 {
			t.Fatalf("%d forks asked once the template is ready, want 3", len(reqs))
		}
		var ids []string
		for _, r := range reqs {
			id, _ := envOf(r.env, "BATON_WORKER_ID")
			ids = append(ids, id)
			if v, _ := envOf(r.env, "NOTIFY_SOCKET"); v == "" {
				t.Errorf("fork request %d has no NOTIFY_SOCKET", r.id)
			}
		}
		slices.Sort(ids)
		if !slices.Equal(ids, []string{"1", "2", "3"}) {
			t.Errorf("fork requests for worker ids %v, want 1, 2, 3", ids)
		}
		pids := tb.forkAll(tmpl)
		for _, r := range tb.requests(tmpl) {
			if !r.went {
				t.Errorf("forked worker %d was never told to run", r.pid)
			}
		}
		tb.ready(pids...)
		if n := tb.count(1, "ready"); n != 3 {
			t.Fatalf("%d forked workers ready, want 3", n)
		}
		if len(tb.started("template")) != 1 {
			t.Errorf("%d templates started, want 1", len(tb.started("template")))
		}
	})
}

func TestPreloadImportErrorFailsTheReloadWithItsTracebackWhileTheOldGenerationServes(t *testing.T) {
	servingPreloaded(t, options(preloadGen(2)), func(t *testing.T, tb *testbed, tmpl int) {
		old := tb.workers(1, "ready")
		res := tb.reloadAsync()
		tmpls := tb.started("template")
		if len(tmpls) != 2 {
			t.Fatalf("%d templates after the reload started, want 2 (one per generation)", len(tmpls))
		}
		next := tmpls[1]
		tb.noResult(res)
		tb.templateSays(next, templateMsg{Type: "error", Error: "ZeroDivisionError: division by zero",
			Traceback: "Traceback (most recent call last):\n  File \"app.py\", line 1\nZeroDivisionError: division by zero\n"})
		r := tb.result(res)
		if r.OK || !strings.Contains(r.Reason, "ZeroDivisionError") {
			t.Errorf("reload result %+v, want a failure naming the import error", r)
		}
		if len(r.Stderr) != 3 || r.Stderr[0] != "Traceback (most recent call last):" {
			t.Errorf("reload stderr %q, want the traceback", r.Stderr)
		}
		if n := len(tb.requests(next)); n != 0 {
			t.Errorf("the failed template was asked for %d workers", n)
		}
		if got := tb.workers(1, "ready"); !slices.Equal(got, old) {
			t.Errorf("ready workers %v after the failed reload, want the old ones %v", got, old)
		}
		if tb.template(tmpl).isClosed() {
			t.Error("the serving generation's template was closed")
		}
		tb.wait(time.Minute)
		if tb.alive(next) {
			t.Error("the failed template still runs")
		}
		if len(tb.started("template")) != 2 {
			t.Errorf("a template was started again after the failed one exited")
		}
	})
}

func TestPreloadTemplateExitingWhileImportingFailsTheReloadWithItsStderr(t *testing.T) {
	servingPreloaded(t, options(preloadGen(1)), func(t *testing.T, tb *testbed, tmpl int) {
		res := tb.reloadAsync()
		next := tb.started("template")[1]
		tb.exit(next, 1, "Segmentation fault in a C extension")
		tb.wait(time.Second)
		r := tb.result(res)
		if r.OK || !strings.Contains(r.Reason, "exited while importing") || !slices.Contains(r.Stderr, "Segmentation fault in a C extension") {
			t.Errorf("reload result %+v, want a failure with the template's last words", r)
		}
		if tb.count(1, "ready") != 1 {
			t.Error("the old worker is not serving")
		}
	})
}

func TestPreloadImportErrorAtStartFailsTheStart(t *testing.T) {
	inBubble(t, options(preloadGen(2)), func(t *testing.T, tb *testbed) {
		tmpl := tb.started("template")[0]
		tb.templateSays(tmpl, templateMsg{Type: "error", Error: "ModuleNotFoundError: No module named 'app'",
			Traceback: "Traceback (most recent call last):\nModuleNotFoundError: No module named 'app'\n"})
		tb.wait(time.Minute)
		select {
		case <-tb.done:
		default:
			t.Fatal("the master still runs after its first template could not import the app")
		}
		var se *StartError
		if !errors.As(tb.m.fatal, &se) || !strings.Contains(se.Error(), "No module named 'app'") {
			t.Errorf("start error %v, want one naming the import error", tb.m.fatal)
		}
		if n := len(tb.started("worker")); n != 0 {
			t.Errorf("%d workers started", n)
		}
	})
}

func TestPreloadCrashedWorkerIsForkedAgainFromItsGenerationsTemplate(t *testing.T) {
	servingPreloaded(t, options(preloadGen(2)), func(t *testing.T, tb *testbed, tmpl int) {
		victim := tb.workers(1, "ready")[0]
		tb.exit(victim, 1, "boom")
		tb.wait(time.Second) // the backoff
		if n := len(tb.started("template")); n != 1 {
			t.Fatalf("%d templates, want the same one to fork again", n)
		}
		reqs := tb.requests(tmpl)
		if len(reqs) != 3 {
			t.Fatalf("%d fork requests, want 3 (2 at start, 1 for the crash)", len(reqs))
		}
		tb.ready(tb.forkAll(tmpl)...)
		if n := tb.count(1, "ready"); n != 2 {
			t.Errorf("%d workers ready after the re-fork, want 2", n)
		}
	})
}

func TestPreloadRetiredGenerationsTemplateExitsWithItsLastWorker(t *testing.T) {
	servingPreloaded(t, options(preloadGen(2)), func(t *testing.T, tb *testbed, tmpl int) {
		old := tb.workers(1, "ready")
		tb.stubborn(old[0])
		res := tb.reloadAsync()
		next := tb.started("template")[1]
		tb.templateSays(next, templateMsg{Type: "ready"})
		tb.ready(tb.forkAll(next)...)
		tb.wait(deafWaitLimit) // the stubborn old worker may still accept: the answer waits
		if r := tb.result(res); !r.OK {
			t.Fatalf("reload: %+v", r)
		}
		if tb.template(tmpl).isClosed() {
			t.Fatal("the old template was closed while an old worker still runs")
		}
		tb.wait(31 * time.Second) // graceful_timeout: the stubborn one is killed
		if tb.alive(old[0]) {
			t.Fatal("the stubborn old worker still runs")
		}
		if !tb.template(tmpl).isClosed() || tb.alive(tmpl) {
			t.Error("the old generation's template runs on after its last worker")
		}
		if tb.template(next).isClosed() {
			t.Error("the serving generation's template was closed")
		}
	})
}

func TestPreloadTemplateCrashIsReplacedWhenAWorkerIsNeeded(t *testing.T) {
	servingPreloaded(t, options(preloadGen(2)), func(t *testing.T, tb *testbed, tmpl int) {
		tb.exit(tmpl, 1, "killed")
		if n := tb.count(1, "ready"); n != 2 {
			t.Fatalf("%d workers serve after the template died, want 2", n)
		}
		if n := len(tb.started("template")); n != 1 {
			t.Fatalf("a template was started with no worker to fork (%d)", n)
		}
		tb.exit(tb.workers(1, "ready")[0], 1)
		tb.wait(time.Second)
		tmpls := tb.started("template")
		if len(tmpls) != 2 {
			t.Fatalf("%d templates, want a new one for the crashed worker", len(tmpls))
		}
		tb.templateSays(tmpls[1], templateMsg{Type: "ready"})
		tb.ready(tb.forkAll(tmpls[1])...)
		if n := tb.count(1, "ready"); n != 2 {
			t.Errorf("%d workers ready, want 2", n)
		}
	})
}

func TestPreloadWorkerReapedBeforeTheTemplateNamedItIsReplaced(t *testing.T) {
	servingPreloaded(t, options(preloadGen(1)), func(t *testing.T, tb *testbed, tmpl int) {
		tb.exit(tb.workers(1, "ready")[0], 1)
		tb.wait(time.Second)
		tmplConn := tb.template(tmpl)
		// The worker is forked and dies (killed from outside) before
		// "forked" reaches the master: it is reaped as a stranger.
		tb.w.mu.Lock()
		f := tmplConn.forks[len(tmplConn.forks)-1]
		p := tb.w.newProc("worker")
		p.spec = proc.Spec{Env: f.env}
		f.answered, f.pid = true, p.pid
		p.exitLocked(unix.WaitStatus(syscall.SIGKILL))
		tb.w.mu.Unlock()
		tb.settle()
		tmplConn.msgs <- templateMsg{Type: "forked", ID: f.id, Pid: p.pid}
		tb.settle()
		if st := tb.status(); len(st.WorkerList) != 0 {
			t.Fatalf("a dead process was taken for a worker: %+v", st.WorkerList)
		}
		tb.wait(time.Second)
		if n := len(tb.requests(tmpl)); n != 3 {
			t.Fatalf("%d fork requests, want a third for the slot", n)
		}
		tb.ready(tb.forkAll(tmpl)...)
		if n := tb.count(1, "ready"); n != 1 {
			t.Errorf("%d workers ready, want 1", n)
		}
	})
}

func TestPreloadShutdownClosesTheTemplates(t *testing.T) {
	servingPreloaded(t, options(preloadGen(2)), func(t *testing.T, tb *testbed, tmpl int) {
		tb.signal(syscall.SIGTERM)
		tb.wait(time.Second)
		if !tb.template(tmpl).isClosed() {
			t.Error("the template's control socket is open after TERM")
		}
		select {
		case <-tb.done:
		default:
			t.Fatalf("the master still runs after TERM: %+v", tb.status())
		}
	})
}

func TestPreloadLameDuckKeepsTheTemplateToReplaceACrashedWorker(t *testing.T) {
	opts := options(preloadGen(1)) // its only worker crashes: no worker of it is left
	opts.Master.ShutdownDelay = 5 * time.Second
	servingPreloaded(t, opts, func(t *testing.T, tb *testbed, tmpl int) {
		tb.signal(syscall.SIGTERM)
		tb.exit(tb.workers(1, "ready")[0], 1, "boom")
		tb.wait(time.Second)
		if tb.template(tmpl).isClosed() {
			t.Fatal("the template was closed during the lame-duck delay, while its slots still serve")
		}
		if n := len(tb.requests(tmpl)); n != 2 {
			t.Fatalf("%d fork requests, want a second for the crashed worker", n)
		}
		tb.ready(tb.forkAll(tmpl)...)
		tb.wait(5 * time.Second)
		if !tb.template(tmpl).isClosed() {
			t.Error("the template is open after the delay, once the shutdown stops the workers")
		}
	})
}
