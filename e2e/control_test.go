package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/baton-pm/baton/internal/control"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// cliResult is what one run of a baton client command did.
type cliResult struct {
	code           int
	stdout, stderr string
}

// cli runs a baton client command (reload, status, ...) to its end, as
// the user cred says (nil: as the test). Without --control or --pid in
// args it would look for the machine's control socket: tests talking to
// a baton they started use b.cli.
func cli(t *testing.T, cred *syscall.Credential, args ...string) cliResult {
	t.Helper()
	return runCLI(t, cred, nil, args...)
}

// cli runs a baton client command against b's control socket.
func (b *Baton) cli(t *testing.T, args ...string) cliResult {
	t.Helper()
	if b.Control == "" {
		t.Fatal("b.cli: the harness does not know this baton's control socket")
	}
	return runCLI(t, nil, nil, append(args, "--control", b.Control)...)
}

// runCLI runs a baton client command with env added to cleanEnv's.
func runCLI(t *testing.T, cred *syscall.Credential, env []string, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	bin := batonBin
	if cred != nil {
		bin = binaryFor(t, cred)
	}
	res, err := runClient(ctx, bin, cred, env, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("baton %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), res.code, res.stdout, res.stderr)
	return res
}

// runClient runs the baton binary bin with args to its end, as cred (nil:
// as the test), with env added to cleanEnv's. An exit status is a result,
// not an error. It does not touch a testing.T, so it may run in a
// goroutine of its own.
func runClient(ctx context.Context, bin string, cred *syscall.Credential, env []string, args ...string) (cliResult, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(cleanEnv(), env...)
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	res := cliResult{stdout: out.String(), stderr: errOut.String()}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		res.code = exit.ExitCode()
	case err != nil:
		return res, fmt.Errorf("baton %s: %v", strings.Join(args, " "), err)
	}
	return res, nil
}

// binaryFor copies baton where the user cred can execute it (the test's
// build directory is private to root).
func binaryFor(t *testing.T, cred *syscall.Credential) string {
	t.Helper()
	return executableByAll(t, batonBin)
}

// executableByAll copies the binary src into a directory every user can
// reach.
func executableByAll(t *testing.T, src string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "baton-other-user-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, filepath.Base(src))
	if err := copyFile(src, bin); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// controlled starts baton with a config file; b.cli reaches its control
// socket (the harness gives it one of its own).
func controlled(t *testing.T, d *deployment, extra ...string) *Baton {
	t.Helper()
	// startBaton waits for it to answer there.
	return startBaton(t, append([]string{"run", "-c", d.path}, extra...)...)
}

func TestBatonReloadReportsEachOutcome(t *testing.T) {
	t.Parallel()
	d := newDeployment(t, workerConfig(2, `boot_timeout = "5s"`))
	b := controlled(t, d)
	servingGenerations(t, b.Addr(), 2)

	t.Run("good deploy", func(t *testing.T) {
		r := b.cli(t, "reload")
		if r.code != 0 || !strings.Contains(r.stdout, "reload succeeded: generation 2 serves") {
			t.Fatalf("exit %d, stdout %q", r.code, r.stdout)
		}
		// Not a terminal: progress comes as plain lines.
		if !strings.Contains(r.stdout, "generation 2: ") {
			t.Errorf("no progress lines in %q", r.stdout)
		}
	})
	t.Run("crash at boot", func(t *testing.T) {
		d.write(workerConfig(2, `boot_timeout = "5s"`, "-exit-at-start", "3"))
		r := b.cli(t, "reload")
		want := []string{"reload failed (generation 3)", "exited during boot: exit status 3",
			"the old generation keeps serving", "| testworker: failing at boot as asked"}
		if r.code != 1 || !containsAll(r.stderr, want) {
			t.Fatalf("exit %d, stderr %q; want exit 1 and %q", r.code, r.stderr, want)
		}
	})
	t.Run("never ready", func(t *testing.T) {
		d.write(workerConfig(2, `boot_timeout = "5s"`, "-boot-delay", "1h"))
		r := b.cli(t, "reload")
		if r.code != 1 || !strings.Contains(r.stderr, "not ready within boot_timeout (5s)") {
			t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
		}
	})
	t.Run("bad config", func(t *testing.T) {
		d.write("workers = 0\n" + fmt.Sprintf("command = [%q]\n", testworkerBin))
		r := b.cli(t, "reload")
		if r.code != 1 || !containsAll(r.stderr, []string{"the configuration is invalid", d.path + ":1: workers: expected an integer ≥ 1, got 0"}) {
			t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
		}
	})
	// Still serving, with generation 2 of the good deploy.
	assertAllGeneration(t, servingGenerations(t, b.Addr(), 2), 2)
}

func TestConcurrentBatonReloadsShareTheQueuedReload(t *testing.T) {
	t.Parallel()
	d := newDeployment(t, workerConfig(2, "", "-boot-delay", "500ms"))
	b := controlled(t, d)
	servingGenerations(t, b.Addr(), 2)

	var wg sync.WaitGroup
	results := make([]cliResult, 3)
	for i := range results {
		wg.Go(func() { results[i] = b.cli(t, "reload") })
		time.Sleep(100 * time.Millisecond) // the later ones arrive during the first
	}
	wg.Wait()
	for i, r := range results {
		if r.code != 0 {
			t.Errorf("reload %d: exit %d: %s", i, r.code, r.stderr)
		}
	}
	// The first started generation 2; the two that came during it share
	// the one queued behind it: generation 3, and none after it.
	if st := b.mustStatus(t); st.Generation != 3 || st.Reloading || st.LastReload == nil || st.LastReload.Generation != 3 {
		t.Errorf("after three concurrent reloads: generation %d, reloading %v, last reload %s; want 2 reloads, the last of generation 3",
			st.Generation, st.Reloading, describeReload(st.LastReload))
	}
	if !strings.Contains(results[1].stdout, "generation 3 serves") || !strings.Contains(results[2].stdout, "generation 3 serves") {
		t.Errorf("the later reloads should both report generation 3: %q, %q", results[1].stdout, results[2].stdout)
	}
}

func TestStatusJSONMatchesTheRealProcesses(t *testing.T) {
	t.Parallel()
	d := newDeployment(t, workerConfig(3, ""))
	b := controlled(t, d)
	b.waitReady(t, 3)

	r := b.cli(t, "status", "--json")
	if r.code != 0 {
		t.Fatalf("status: exit %d: %s", r.code, r.stderr)
	}
	var st struct {
		Pid        int    `json:"pid"`
		Generation int    `json:"generation"`
		Workers    int    `json:"workers"`
		ConfigFile string `json:"config_file"`
		WorkerList []struct {
			Slot  int    `json:"slot"`
			Pid   int    `json:"pid"`
			State string `json:"state"`
			RSS   uint64 `json:"rss_bytes"`
		} `json:"worker_list"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("status --json is not JSON: %v", err)
	}
	if st.Pid != b.Pid || st.Generation != 1 || st.Workers != 3 || st.ConfigFile != d.path {
		t.Errorf("status = %+v", st)
	}
	kids := map[int]bool{}
	for _, pid := range workersOf(b.Pid) {
		kids[pid] = true
	}
	if len(st.WorkerList) != 3 || len(kids) != 3 {
		t.Fatalf("status lists %d workers, the master has %d", len(st.WorkerList), len(kids))
	}
	for _, w := range st.WorkerList {
		if !kids[w.Pid] || w.State != "ready" || w.RSS == 0 {
			t.Errorf("worker %+v: not a live ready child with its RSS", w)
		}
	}
	text := b.cli(t, "status")
	if text.code != 0 || !containsAll(text.stdout, []string{"SLOT", "ready", fmt.Sprint(b.Pid)}) {
		t.Errorf("status table: %q", text.stdout)
	}
}

func TestScaleAndStop(t *testing.T) {
	t.Parallel()
	d := newDeployment(t, workerConfig(1, ""))
	b := controlled(t, d)

	if r := b.cli(t, "scale", "3"); r.code != 0 {
		t.Fatalf("scale: exit %d", r.code)
	}
	b.waitWorkers(t, 3)
	if r := b.cli(t, "scale", "0"); r.code != 2 {
		t.Errorf("scale 0: exit %d, want 2", r.code)
	}
	r := b.cli(t, "stop")
	if r.code != 0 || !strings.Contains(r.stdout, "stopped") {
		t.Fatalf("stop: exit %d, %q", r.code, r.stdout)
	}
	// stop returned once the master had exited (it may await reaping).
	if processAlive(b.Pid) {
		t.Error("baton stop returned while the master was still running")
	}
	if _, err := os.Stat(b.Control); !os.IsNotExist(err) {
		t.Errorf("control socket left behind: %v", err)
	}
}

func TestControlSocketRefusesStrangersAndSurvivesGarbage(t *testing.T) {
	t.Parallel()
	if os.Getuid() != 0 {
		t.Fatal("this test runs the client as nobody and needs root")
	}
	d := newDeployment(t, workerConfig(1, ""))
	// A socket directory every user can reach, unlike t.TempDir's.
	dir, err := os.MkdirTemp("", "baton-control-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "baton.sock")
	b := startBaton(t, "run", "-c", d.path, "--control", sock) // answers there once started
	info, err := os.Stat(sock)
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("control socket mode %v (%v), want 0600", info.Mode().Perm(), err)
	}

	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}
	if r := cli(t, nobody, "status", "--control", sock); r.code == 0 || !strings.Contains(r.stderr, "permission denied") {
		t.Errorf("status as nobody: exit %d, stderr %q; want a refusal", r.code, r.stderr)
	}
	// Even when the file's permissions are loosened by mistake, the
	// master checks who is connecting.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	r := cli(t, nobody, "status", "--control", sock)
	if r.code == 0 || !strings.Contains(r.stderr, "permission denied: uid 65534 is not the master's uid 0 or root") {
		t.Errorf("status as nobody on a 0666 socket: exit %d, stderr %q; want the master's refusal", r.code, r.stderr)
	}
	b.waitLog(t, "control socket: refused a connection from another user", func(r record) bool { return r.int("uid") == 65534 }, waitTimeout)

	for _, garbage := range []string{"not json\n", `{"v":99,"cmd":"status"}` + "\n", strings.Repeat("x", 1<<20) + "\n", ""} {
		conn, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(conn, garbage)
		if garbage == "" {
			conn.Close() // connect and leave
			continue
		}
		reply, _ := io.ReadAll(conn)
		conn.Close()
		if !strings.Contains(string(reply), `"type":"error"`) {
			t.Errorf("garbage %.20q: reply %.200q, want an error line", garbage, reply)
		}
	}
	if r := b.cli(t, "status"); r.code != 0 {
		t.Fatalf("status after garbage: exit %d: %s", r.code, r.stderr)
	}
	servingGenerations(t, b.Addr(), 1)
}

func TestMetricsAndReadiness(t *testing.T) {
	t.Parallel()
	// Workers that take 2 s to drain, so /readyz can be seen at 503
	// while they still run.
	d := newDeployment(t, workerConfig(2, `metrics_bind = "127.0.0.1:0"`))
	b := controlled(t, d)
	addr := b.waitLog(t, "metrics endpoint listening", nil, waitTimeout).str("addr")
	b.waitReady(t, 2)
	if r := b.cli(t, "reload"); r.code != 0 {
		t.Fatalf("reload: exit %d", r.code)
	}

	families := scrape(t, "http://"+addr+"/metrics")
	for _, name := range []string{"baton_reloads_total", "baton_reload_duration_seconds", "baton_workers",
		"baton_worker_boot_seconds", "baton_worker_restarts_total", "process_resident_memory_bytes", "process_open_fds"} {
		if families[name] == nil {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	if got := counterWithLabel(families["baton_reloads_total"], "result", "success"); got != 1 {
		t.Errorf("baton_reloads_total{result=success} = %v, want 1", got)
	}
	if code := httpStatus(t, "http://"+addr+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz = %d while serving, want 200", code)
	}
	if code := httpStatus(t, "http://"+addr+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d, want 200", code)
	}

	// A slow request keeps a worker draining after TERM.
	slow := make(chan error, 1)
	go func() { _, err := get(b.Addr(), "/slow?ms=2000", 20*time.Second); slow <- err }()
	time.Sleep(200 * time.Millisecond)
	b.signal(t, syscall.SIGTERM)
	b.waitStatus(t, "the shutdown to begin", waitTimeout, func(st control.Status) bool { return st.ShuttingDown })
	if code := httpStatus(t, "http://"+addr+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz = %d during shutdown, want 503", code)
	}
	if len(workersOf(b.Pid)) == 0 {
		t.Error("the workers were gone before /readyz was checked: the test proves nothing")
	}
	if err := <-slow; err != nil {
		t.Errorf("slow request during shutdown: %v", err)
	}
	if code := b.waitExit(t, 30*time.Second); code != 0 {
		t.Errorf("exit %d", code)
	}
}

func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	return families
}

func httpStatus(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// counterWithLabel is the value of the counter in f whose label name has
// value, or -1.
func counterWithLabel(f *dto.MetricFamily, name, value string) float64 {
	if f == nil {
		return -1
	}
	for _, m := range f.GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == name && l.GetValue() == value {
				return m.GetCounter().GetValue()
			}
		}
	}
	return -1
}

// A slot that keeps crashing makes the master degraded: status and /readyz
// say so (the host still serves), and the log shows what the worker said.
func TestCrashLoopingSlotIsReportedDegraded(t *testing.T) {
	t.Parallel()
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatal(err)
	}
	// Slot 2 fails at boot every time; slot 1 serves.
	script := `if [ "$BATON_WORKER_ID" = 2 ]; then echo "slot two: cannot connect to the database" >&2; exit 3; fi; exec "$0"`
	d := newDeployment(t, fmt.Sprintf("workers = 2\nbind = [\"127.0.0.1:0\"]\nmetrics_bind = \"127.0.0.1:0\"\ncommand = [%q, \"-c\", %q, %q]\n",
		sh, script, testworkerBin))
	b := controlled(t, d)
	addr := b.waitLog(t, "metrics endpoint listening", nil, waitTimeout).str("addr")
	b.waitStatus(t, "slot 2 to be reported crash-looping", waitTimeout, func(st control.Status) bool {
		return slices.ContainsFunc(st.Degraded, func(d string) bool { return strings.HasPrefix(d, "slot 2: ") })
	})

	last := b.waitLog(t, "last stderr lines of the worker that exited", func(r record) bool { return r.int("slot") == 2 }, waitTimeout)
	if !strings.Contains(last.line, "slot two: cannot connect to the database") {
		t.Errorf("crash record without the worker's last words: %s", last)
	}
	st := b.cli(t, "status", "--json")
	if !strings.Contains(st.stdout, `"degraded"`) || !strings.Contains(st.stdout, "slot 2: ") {
		t.Errorf("status does not say slot 2 is crash-looping: %s", st.stdout)
	}
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "degraded: slot 2") {
		t.Errorf("/readyz = %d %q, want 200 saying degraded", resp.StatusCode, body)
	}
	servingGenerations(t, b.Addr(), 1)
}

// Without --control, baton and its client commands agree on where the
// control socket is: beside the pidfile, else in $XDG_RUNTIME_DIR (both
// in temp dirs here; root's last resort, /run/baton/baton.sock, is the
// machine's and no test may use it).
func TestControlSocketDefaultPath(t *testing.T) {
	t.Parallel()
	t.Run("XDG_RUNTIME_DIR", func(t *testing.T) {
		t.Parallel()
		runtimeDir := t.TempDir()
		env := []string{"XDG_RUNTIME_DIR=" + runtimeDir}
		b := launch(t, batonSpec{args: []string{"run", "--", testworkerBin}, env: env, defaultControl: true})
		b.waitStarted(t)
		want := filepath.Join(runtimeDir, "baton.sock")
		if b.Control != want {
			t.Fatalf("the harness expects the control socket at %s, want %s", b.Control, want)
		}
		if info, err := os.Stat(want); err != nil || info.Mode().Type() != os.ModeSocket {
			t.Fatalf("no control socket at %s: %v", want, err)
		}
		r := runCLI(t, nil, env, "status", "--json")
		if r.code != 0 || !strings.Contains(r.stdout, fmt.Sprintf(`"pid": %d`, b.Pid)) {
			t.Errorf("baton status with only XDG_RUNTIME_DIR: exit %d, %q; want this master's status", r.code, r.stdout)
		}
	})
	t.Run("beside the pidfile", func(t *testing.T) {
		t.Parallel()
		pidfile := filepath.Join(t.TempDir(), "app.pid")
		// The pidfile wins over XDG_RUNTIME_DIR, for the master and the client.
		env := []string{"XDG_RUNTIME_DIR=" + t.TempDir()}
		b := launch(t, batonSpec{args: []string{"run", "--pid", pidfile, "--", testworkerBin}, env: env})
		b.waitStarted(t)
		want := strings.TrimSuffix(pidfile, ".pid") + ".sock"
		if info, err := os.Stat(want); err != nil || info.Mode().Type() != os.ModeSocket {
			t.Fatalf("no control socket beside the pidfile at %s: %v", want, err)
		}
		r := runCLI(t, nil, env, "status", "--json", "--pid", pidfile)
		if r.code != 0 || !strings.Contains(r.stdout, fmt.Sprintf(`"pid": %d`, b.Pid)) {
			t.Errorf("baton status --pid: exit %d, %q; want this master's status", r.code, r.stdout)
		}
	})
}
