package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// host is one machine of the fleet: a network namespace with one baton
// master (started with nsenter, which executes baton in place, so the
// master is this program's child) serving the app on its own address.
type host struct {
	index int
	name  string // h1, h2, h3: HAProxy's server name too
	ip    string
	dir   string // its config, pidfile and log
	baton string // the binary path every start, reload and upgrade uses

	master *exec.Cmd
	exited chan struct{} // closed once master has been reaped
}

func newHost(i int, root, baton string) (*host, error) {
	h := &host{index: i, name: hostName(i), ip: hostIP(i), dir: filepath.Join(root, hostName(i)), baton: baton}
	return h, os.MkdirAll(h.dir, 0o755)
}

func (h *host) configPath() string { return filepath.Join(h.dir, "baton.toml") }
func (h *host) pidfile() string    { return filepath.Join(h.dir, "baton.pid") }
func (h *host) logPath() string    { return filepath.Join(h.dir, "baton.log") }
func (h *host) appURL() string     { return fmt.Sprintf("http://%s:%d/", h.ip, appPort) }

// writeConfig writes the host's baton.toml, the one its next start reads.
// delay 0 leaves shutdown_delay out: the default, no delay.
func (h *host) writeConfig(appDir string, delay time.Duration, inter time.Duration) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# host %s of the fleet rollout (bench/fleet)\n", h.name)
	fmt.Fprintf(&b, "bind = [%q]\n", fmt.Sprintf("%s:%d", h.ip, appPort))
	fmt.Fprintf(&b, "metrics_bind = %q\n", fmt.Sprintf("%s:%d", h.ip, readyPort))
	b.WriteString("workers = 2\n")
	b.WriteString(`command = ["/usr/bin/uvicorn", "--fd", "3", "--no-access-log", "app:app"]` + "\n")
	fmt.Fprintf(&b, "chdir = %q\n", appDir)
	fmt.Fprintf(&b, "pid = %q\n", h.pidfile())
	b.WriteString("graceful_timeout = \"10s\"\n")
	if delay > 0 {
		fmt.Fprintf(&b, "# /readyz turns 503 at TERM; HAProxy needs fall 2 x inter %s to notice\n", inter)
		fmt.Fprintf(&b, "shutdown_delay = %q\n", delay.String())
	}
	fmt.Fprintf(&b, "\n[env]\nFLEET_HOST = %q\n", h.name)
	return os.WriteFile(h.configPath(), []byte(b.String()), 0o644)
}

// start runs baton in the host's namespace; it returns once the master is
// started (not ready: HAProxy's view of /readyz says when it is).
func (h *host) start() error {
	logf, err := os.OpenFile(h.logPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	// nsenter --net only: the mount namespace stays the host's, so baton
	// sees /sys/fs/cgroup as it would on a real machine.
	cmd := exec.Command("nsenter", "--net="+netnsPath(h.index), h.baton, "run", "-c", h.configPath())
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group: a ^C on the terminal reaches this program,
	// which stops the hosts in order, not every process at once.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: start baton: %w", h.name, err)
	}
	h.master, h.exited = cmd, make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) {
		cmd.Wait()
		close(done)
	}(cmd, h.exited)
	return nil
}

// running reports whether the host's master is still alive.
func (h *host) running() bool {
	if h.master == nil {
		return false
	}
	select {
	case <-h.exited:
		return false
	default:
		return true
	}
}

// signal sends sig to the host's master.
func (h *host) signal(sig syscall.Signal) error {
	if !h.running() {
		return fmt.Errorf("%s: baton is not running", h.name)
	}
	return h.master.Process.Signal(sig)
}

// waitExit waits until the master has exited and says how.
func (h *host) waitExit(ctx context.Context, timeout time.Duration) error {
	if h.master == nil {
		return nil
	}
	select {
	case <-h.exited:
		if st := h.master.ProcessState; st != nil && !st.Success() {
			return fmt.Errorf("%s: baton exited with %s (log: %s)", h.name, st, h.logPath())
		}
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("%s: baton (pid %d) still running %s after the signal (log: %s)", h.name, h.master.Process.Pid, timeout, h.logPath())
	case <-ctx.Done():
		return ctx.Err()
	}
}

// control runs `baton reload` or `baton upgrade` against the host's master,
// from inside its namespace, and returns what it printed.
func (h *host) control(ctx context.Context, verb string) (string, error) {
	out, err := runCmd(ctx, "nsenter", "--net="+netnsPath(h.index), h.baton, verb, "--pid", h.pidfile())
	if err != nil {
		return out, fmt.Errorf("%s: baton %s: %w", h.name, verb, err)
	}
	return out, nil
}

// quit asks the host's master for a quick shutdown at teardown (INT: the
// load has stopped, nothing is in flight); waitExit then waits for it.
func (h *host) quit() error {
	if !h.running() {
		return nil
	}
	return h.signal(syscall.SIGINT)
}

// awaitReady waits until the host's /readyz (on metrics_bind) answers 200,
// as HAProxy's check would see it.
func (h *host) awaitReady(ctx context.Context, timeout time.Duration) error {
	url := fmt.Sprintf("http://%s:%d/readyz", h.ip, readyPort)
	deadline := time.Now().Add(timeout)
	last := "no answer"
	for time.Now().Before(deadline) {
		resp, err := directClient.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s: %s not 200 within %s (last: %s; baton's log: %s)", h.name, url, timeout, last, h.logPath())
}

// identity is what the app answers: "h2 generation 3 master 4242 pid 4250".
type identity struct {
	Host       string
	Generation int
	Master     int
	Worker     int
}

func parseIdentity(body string) (identity, error) {
	var id identity
	_, err := fmt.Sscanf(strings.TrimSpace(body), "%s generation %d master %d pid %d", &id.Host, &id.Generation, &id.Master, &id.Worker)
	if err != nil {
		return id, fmt.Errorf("unexpected answer %q: %v", body, err)
	}
	return id, nil
}

// ask sends one request to the host directly (not through HAProxy) and
// returns who answered.
func (h *host) ask(ctx context.Context) (identity, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.appURL(), nil)
	if err != nil {
		return identity{}, err
	}
	resp, err := directClient.Do(req)
	if err != nil {
		return identity{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 512))
	if err != nil {
		return identity{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return identity{}, fmt.Errorf("%s answered %s", h.appURL(), resp.Status)
	}
	return parseIdentity(string(body))
}

var directClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}

// awaitIdentity asks the host until its answer satisfies want (both of its
// workers, one request after the other), for up to timeout. The rollout
// checks each step with it: a new master after a restart, the next
// generation after a reload or an upgrade.
func (h *host) awaitIdentity(ctx context.Context, timeout time.Duration, want func(identity) bool) (identity, error) {
	deadline := time.Now().Add(timeout)
	var last identity
	var lastErr error
	good := 0
	for time.Now().Before(deadline) {
		id, err := h.ask(ctx)
		switch {
		case err != nil:
			lastErr, good = err, 0
		case want(id):
			last, good = id, good+1
			if good == 4 {
				return id, nil
			}
			continue
		default:
			last, lastErr, good = id, nil, 0
		}
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	if lastErr != nil {
		return last, fmt.Errorf("%s: no expected answer within %s: %w", h.name, timeout, lastErr)
	}
	return last, fmt.Errorf("%s: still answers %+v after %s", h.name, last, timeout)
}
