package main

import (
	"bufio"
	"cmp"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/baton-pm/baton/bench/internal/httpload"
)

// The preload-memory scenario: what a server's whole process tree costs
// in RAM with a real Django project, with and without preload. No load
// runs; each server starts fresh, is measured once all its workers are
// up, warmed up through its real socket, and measured again.

// measured is what a scenario measured on its own, outside the runs
// under load.
type measured interface {
	failed() bool               // some server could not be measured
	render(b *strings.Builder)  // its section of the report
	targets(b *strings.Builder) // its rows of baton's targets
}

// memProc is one process's memory from /proc/PID/smaps_rollup, in KiB.
// PSS splits every page among the processes that map it, so PSS sums over
// processes to what they cost together; USS (private clean + dirty) is
// what the process's exit would free.
type memProc struct {
	PID  int
	Role string // master, template, worker or other
	Comm string
	PSS  int64 // Pss + SwapPss
	USS  int64
	RSS  int64
}

// memSnapshot is the memory of a server's whole process tree at one time.
type memSnapshot struct {
	Procs []memProc
	Err   string
}

func (m memSnapshot) total() int64 {
	var t int64
	for _, p := range m.Procs {
		t += p.PSS
	}
	return t
}

func (m memSnapshot) role(role string) []memProc {
	var out []memProc
	for _, p := range m.Procs {
		if p.Role == role {
			out = append(out, p)
		}
	}
	return out
}

// memoryRun is one server's measurement in one round.
type memoryRun struct {
	Server    string
	Round     int
	Workers   int
	Fresh     memSnapshot // once every worker was up
	Warm      memSnapshot // after the warm-up
	PerWorker map[int]int // requests each worker (pid) answered in the warm-up
	Requests  int
	Failed    int
	WarmFor   time.Duration
	Leftovers []string
	LogPath   string
	Err       error
}

// memoryReport is the scenario's result: one run per server and round.
type memoryReport struct {
	cfg  *config
	runs []*memoryRun
}

func (r *memoryReport) failed() bool {
	return slices.ContainsFunc(r.runs, func(m *memoryRun) bool { return m.Err != nil })
}

// djangoApp is how the servers name the Django project's ASGI app.
var djangoApp = appSpec{target: "proj.asgi:application", module: "proj.asgi", pythonM: true, getPath: "admin/login/"}

// measureMemory measures every server -memory-rounds times, round after
// round in a rotating order, so that the machine drifting hits all of them
// alike; the report takes each server's median round.
func measureMemory(cfg *config, runDir string) measured {
	rep := &memoryReport{cfg: cfg}
	var kinds []string
	for _, kind := range preloadServers { // the scenario's servers
		if slices.Contains(cfg.servers, kind) {
			kinds = append(kinds, kind)
		}
	}
	for round := range cfg.memoryRounds {
		for i := range kinds {
			kind := kinds[(i+round)%len(kinds)]
			fmt.Fprintf(os.Stderr, "      round %d · %s ...\n", round+1, kind)
			m := measureOneMemory(cfg, kind, round, runDir)
			if m.Err != nil {
				fmt.Fprintf(os.Stderr, "      setup failed: %v\n", m.Err)
			} else {
				fmt.Fprintf(os.Stderr, "      total PSS %.1f MiB fresh, %.1f MiB after %d requests\n", mib(m.Fresh.total()), mib(m.Warm.total()), m.Requests)
			}
			rep.runs = append(rep.runs, m)
		}
	}
	return rep
}

func measureOneMemory(cfg *config, kind string, round int, runDir string) *memoryRun {
	m := &memoryRun{Server: kind, Round: round + 1, Workers: cfg.workers,
		LogPath: filepath.Join(runDir, fmt.Sprintf("%s-%s-%d.log", scenarioMemory, kind, round+1))}
	if cfg.quietBelow > 0 {
		waitQuiet(cfg.quietBelow, cfg.quietWait)
	}
	dir, err := os.MkdirTemp("", "baton-bench-django-")
	if err != nil {
		m.Err = err
		return m
	}
	defer os.RemoveAll(dir)
	if err := djangoProject(cfg.djangoAdmin, dir); err != nil {
		m.Err = err
		return m
	}
	srv, err := startServer(cfg, serverSpec{kind: kind, workers: cfg.workers, app: djangoApp}, dir, m.LogPath)
	if err != nil {
		m.Err = err
		return m
	}
	defer func() {
		if srv.alive() {
			srv.stop(45 * time.Second)
		}
	}()
	if _, _, err := srv.waitReady(3 * time.Minute); err != nil {
		m.Err = err
		_, m.Leftovers = srv.stop(45 * time.Second)
		return m
	}
	time.Sleep(time.Second) // let the workers settle after their startup
	m.Fresh = snapshotTree(srv, nil)
	began := time.Now()
	m.PerWorker, m.Requests, m.Failed, err = warmUp(srv.url()+djangoApp.getPath, cfg.workers, cfg.warmup, cfg.timeout)
	m.WarmFor = time.Since(began)
	if err != nil {
		m.Err = err
	}
	time.Sleep(2 * time.Second) // let the last requests' garbage go
	m.Warm = snapshotTree(srv, m.PerWorker)
	_, m.Leftovers = srv.stop(45 * time.Second)
	return m
}

// djangoProject creates a Django project in dir as its docs say
// (`django-admin startproject proj dir`), then makes it production-like
// (DEBUG off, its allowed hosts) and adds one middleware that names the
// worker that answered (X-Worker-Pid), so the warm-up can see that every
// worker had its share.
func djangoProject(djangoAdmin, dir string) error {
	if _, err := os.Stat(djangoAdmin); err != nil {
		return fmt.Errorf("%s is missing (Debian package python3-django; scripts/install-test-deps installs it): %w", djangoAdmin, err)
	}
	if out, err := exec.Command(djangoAdmin, "startproject", "proj", dir).CombinedOutput(); err != nil {
		return fmt.Errorf("django-admin startproject: %v: %s", err, out)
	}
	middleware := `import os


def WorkerPidMiddleware(get_response):
    """Names the worker process that answered."""

    def middleware(request):
        response = get_response(request)
        response["X-Worker-Pid"] = str(os.getpid())
        return response

    return middleware
`
	if err := os.WriteFile(filepath.Join(dir, "proj", "workerpid.py"), []byte(middleware), 0o644); err != nil {
		return err
	}
	settings := `

# The benchmark's changes: production-like, and each response names its worker.
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
MIDDLEWARE = ["proj.workerpid.WorkerPidMiddleware"] + MIDDLEWARE
`
	f, err := os.OpenFile(filepath.Join(dir, "proj", "settings.py"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(settings)
	return cmpErr(err, f.Close())
}

// warmUp sends GET url from 8 clients at once, a new connection per
// request, until workers distinct workers have each answered perWorker
// times (or a bound on the requests or the time is hit, which is an
// error). It returns what each worker answered, all requests sent and the
// failed ones.
func warmUp(url string, workers, perWorker int, timeout time.Duration) (map[int]int, int, int, error) {
	const clients = 8
	maxRequests := int64(perWorker * workers * 20)
	deadline := time.Now().Add(10 * time.Minute)
	var (
		mu       sync.Mutex
		counts   = map[int]int{}
		sent     atomic.Int64
		failed   atomic.Int64
		done     atomic.Bool
		firstErr string
	)
	enough := func() bool {
		n := 0
		for _, c := range counts {
			if c >= perWorker {
				n++
			}
		}
		return n >= workers
	}
	client := httpload.NewClient(false, timeout)
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !done.Load() && sent.Add(1) <= maxRequests && time.Now().Before(deadline) {
				pid, err := getWorkerPID(client, url)
				mu.Lock()
				if err != nil {
					failed.Add(1)
					if firstErr == "" {
						firstErr = err.Error()
					}
				} else {
					counts[pid]++
				}
				if enough() {
					done.Store(true)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	total := int(min(sent.Load(), maxRequests))
	if !enough() {
		return counts, total, int(failed.Load()), fmt.Errorf("warm-up: after %d requests (%d failed; first error: %s), not every one of the %d workers answered %d times: %v",
			total, failed.Load(), firstErr, workers, perWorker, counts)
	}
	return counts, total, int(failed.Load()), nil
}

// getWorkerPID sends one GET and returns the X-Worker-Pid of a 200.
func getWorkerPID(c *http.Client, url string) (int, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("status %s", resp.Status)
	}
	pid, err := strconv.Atoi(resp.Header.Get("X-Worker-Pid"))
	if err != nil {
		return 0, fmt.Errorf("no X-Worker-Pid header in the answer")
	}
	return pid, nil
}

// snapshotTree reads the memory of the server's master and every
// descendant. answered are the workers seen serving (nil: not known yet);
// a descendant is a worker if it answered, or, before the warm-up, if it
// is no template. baton's templates come from `baton status`.
func snapshotTree(srv *server, answered map[int]int) memSnapshot {
	master := srv.master()
	templates := map[int]bool{}
	if srv.spec.kind == kindBatonPreload {
		templates = srv.templatePIDs()
	}
	var snap memSnapshot
	for _, pid := range descendants(master) {
		p, err := readRollup(pid)
		if err != nil {
			snap.Err = err.Error()
			continue
		}
		switch {
		case pid == master:
			p.Role = "master"
		case templates[pid]:
			p.Role = "template"
		case answered == nil || answered[pid] > 0:
			p.Role = "worker"
		default:
			p.Role = "other"
		}
		snap.Procs = append(snap.Procs, p)
	}
	return snap
}

// descendants is root and every process below it, from the parent pids
// in /proc/*/stat.
func descendants(root int) []int {
	kids := map[int][]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, ok := readStat(pid); ok && p.state != "Z" {
			kids[p.ppid] = append(kids[p.ppid], pid)
		}
	}
	out := []int{root}
	for i := 0; i < len(out); i++ {
		out = append(out, kids[out[i]]...)
	}
	return out
}

// readRollup reads one process's /proc/PID/smaps_rollup (Linux 4.14+;
// reading another process's needs root or ptrace rights).
func readRollup(pid int) (memProc, error) {
	p := memProc{PID: pid}
	if st, ok := readStat(pid); ok {
		p.Comm = st.comm
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return p, fmt.Errorf("smaps_rollup of pid %d: %w", pid, err)
	}
	defer f.Close()
	if p.PSS, p.USS, p.RSS, err = parseRollup(f); err != nil {
		return p, fmt.Errorf("smaps_rollup of pid %d: %w", pid, err)
	}
	return p, nil
}

// parseRollup reads smaps_rollup's fields, in KiB: PSS is Pss + SwapPss,
// USS is Private_Clean + Private_Dirty.
func parseRollup(r io.Reader) (pss, uss, rss int64, err error) {
	seen := false
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		name, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) == 0 {
			continue
		}
		n, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			continue
		}
		switch name {
		case "Pss", "SwapPss":
			pss += n
			seen = true
		case "Private_Clean", "Private_Dirty":
			uss += n
		case "Rss":
			rss = n
		}
	}
	if err := sc.Err(); err != nil {
		return 0, 0, 0, err
	}
	if !seen {
		return 0, 0, 0, errors.New("no Pss line")
	}
	return pss, uss, rss, nil
}

func mib(kib int64) float64 { return float64(kib) / 1024 }

// render is the scenario's section of the report.
func (r *memoryReport) render(b *strings.Builder) {
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	p("## Preload: memory (scenario 10)\n\n")
	p("A Django project (`django-admin startproject proj`, its ASGI app, DEBUG off), %d uvicorn workers per server, no load. "+
		"**Total PSS** is the sum of Pss + SwapPss in `/proc/PID/smaps_rollup` over the master and every process below it (baton: its template and workers; Gunicorn: its workers): "+
		"PSS splits each shared page among the processes that map it, so the sum is what the tree costs together; RSS would count shared pages once per process. "+
		"**Fresh**: 1 s after every worker was up. **Warm**: after each worker answered `GET /admin/login/` at least %d times (8 clients, a new connection per request), then 2 s. "+
		"**USS** (Private_Clean + Private_Dirty) is what one worker's exit would free: the marginal cost of a worker. baton runs `python3 -m uvicorn --fd 3 --no-access-log proj.asgi:application` (with `--preload proj.asgi` for baton-preload); "+
		"Gunicorn `-k uvicorn.workers.UvicornWorker proj.asgi:application` (with `--preload` for gunicorn-preload).\n\n", r.cfg.workers, r.cfg.warmup)
	p("Each server was measured %d times, round after round in a rotating order; the row is its median round by warm total PSS, and the last column lists every round's.\n\n", r.cfg.memoryRounds)
	p("| server | processes | total PSS fresh | total PSS warm | ÷ gunicorn-preload (warm) | master PSS (warm) | template PSS (warm) | workers' PSS, sum (warm) | USS per worker, median (min–max), fresh | warm | warm-up | warm total PSS, every round |\n")
	p("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|\n")
	ref := r.warmTotal(kindGunicornPreload)
	for _, kind := range r.kinds() {
		m := r.median(kind)
		if m == nil {
			p("| %s | setup failed in every round: %s |||||||||||\n", kind, oneLine(r.firstErr(kind)))
			continue
		}
		ratio := "–"
		if ref > 0 {
			ratio = fmt.Sprintf("%.2f×", float64(m.Warm.total())/float64(ref))
		}
		template := "–"
		if ts := m.Warm.role("template"); len(ts) > 0 {
			template = fmtMiB(sumPSS(ts))
		}
		p("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", m.Server, len(m.Warm.Procs), fmtMiB(m.Fresh.total()), fmtMiB(m.Warm.total()), ratio,
			fmtMiB(sumPSS(m.Warm.role("master"))), template, fmtMiB(sumPSS(m.Warm.role("worker"))), ussText(m.Fresh.role("worker")), ussText(m.Warm.role("worker")), warmUpText(m), r.roundsText(kind))
	}
	p("\n")
	for _, m := range r.runs {
		if m.Err != nil {
			p("- **%s**, round %d: **%s**\n", m.Server, m.Round, oneLine(m.Err.Error()))
		}
	}
	for _, kind := range r.kinds() {
		m := r.median(kind)
		if m == nil {
			continue
		}
		var procs []string
		for _, pr := range m.Warm.Procs {
			procs = append(procs, fmt.Sprintf("%s %d (%s) PSS %s, USS %s, RSS %s", pr.Role, pr.PID, pr.Comm, fmtMiB(pr.PSS), fmtMiB(pr.USS), fmtMiB(pr.RSS)))
		}
		p("- **%s**, round %d (the median), warm: %s.", m.Server, m.Round, strings.Join(procs, "; "))
		for _, s := range []memSnapshot{m.Fresh, m.Warm} {
			if s.Err != "" {
				p(" Not every process could be read: %s.", s.Err)
			}
		}
		p("\n")
	}
	for _, m := range r.runs {
		if len(m.Leftovers) > 0 {
			p("- **%s**, round %d: processes left behind after stop (killed by the benchmark): %s.\n", m.Server, m.Round, strings.Join(m.Leftovers, "; "))
		}
	}
	p("\n")
}

// targets is the memory target: baton with preload costs no more than
// Gunicorn with preload.
func (r *memoryReport) targets(b *strings.Builder) {
	bp, gp := r.warmTotal(kindBatonPreload), r.warmTotal(kindGunicornPreload)
	if bp == 0 || gp == 0 {
		return
	}
	fmt.Fprintf(b, "| total PSS with preload ≤ Gunicorn's with --preload | %s, after the warm-up | %s ÷ %s = %.2f× | %s |\n",
		scenarioTitle(scenarioMemory), fmtMiB(bp), fmtMiB(gp), float64(bp)/float64(gp), metStr(bp <= gp))
}

// warmTotal is the warm total PSS of kind's median round, 0 if it has none.
func (r *memoryReport) warmTotal(kind string) int64 {
	if m := r.median(kind); m != nil {
		return m.Warm.total()
	}
	return 0
}

// kinds are the servers measured, in the scenario's order.
func (r *memoryReport) kinds() []string {
	var out []string
	for _, kind := range preloadServers {
		if slices.ContainsFunc(r.runs, func(m *memoryRun) bool { return m.Server == kind }) {
			out = append(out, kind)
		}
	}
	return out
}

// median is kind's round with the median warm total PSS among those that
// succeeded (the lower middle one of an even count), nil if none did.
func (r *memoryReport) median(kind string) *memoryRun {
	var ok []*memoryRun
	for _, m := range r.runs {
		if m.Server == kind && m.Err == nil {
			ok = append(ok, m)
		}
	}
	if len(ok) == 0 {
		return nil
	}
	slices.SortStableFunc(ok, func(a, b *memoryRun) int { return cmp.Compare(a.Warm.total(), b.Warm.total()) })
	return ok[(len(ok)-1)/2]
}

func (r *memoryReport) firstErr(kind string) string {
	for _, m := range r.runs {
		if m.Server == kind && m.Err != nil {
			return m.Err.Error()
		}
	}
	return "not run"
}

// roundsText lists kind's warm totals in round order.
func (r *memoryReport) roundsText(kind string) string {
	var parts []string
	for _, m := range r.runs {
		if m.Server != kind {
			continue
		}
		if m.Err != nil {
			parts = append(parts, "failed")
		} else {
			parts = append(parts, fmt.Sprintf("%.1f", mib(m.Warm.total())))
		}
	}
	return strings.Join(parts, ", ") + " MiB"
}

func sumPSS(ps []memProc) int64 {
	var t int64
	for _, p := range ps {
		t += p.PSS
	}
	return t
}

func ussText(workers []memProc) string {
	if len(workers) == 0 {
		return "–"
	}
	var us []int64
	for _, w := range workers {
		us = append(us, w.USS)
	}
	slices.Sort(us)
	return fmt.Sprintf("%s (%s–%s)", fmtMiB(us[(len(us)-1)/2]), fmtMiB(us[0]), fmtMiB(us[len(us)-1]))
}

func warmUpText(m *memoryRun) string {
	least := 0
	for i, n := range sortedCounts(m.PerWorker) {
		if i == 0 || n < least {
			least = n
		}
	}
	return fmt.Sprintf("%d requests in %s, %d failed; %d workers answered, the least %d times", m.Requests, m.WarmFor.Round(100*time.Millisecond), m.Failed, len(m.PerWorker), least)
}

func sortedCounts(c map[int]int) []int {
	var out []int
	for _, n := range c {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func fmtMiB(kib int64) string { return fmt.Sprintf("%.1f MiB", mib(kib)) }
