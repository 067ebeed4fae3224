package main

import (
	"bufio"
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// haproxyConfig is the load balancer in front of the fleet. What matters
// for a rollout is in the backend: HAProxy takes a host out after `fall`
// failed checks of its /readyz and back after `rise` good ones; `retries 0`
// and no `option redispatch` mean a request that fails on a host reaches
// the client as a failure (a 502 or 503), so nothing hides a lost request;
// `http-reuse never` gives every request its own connection to the host,
// as the client gives every request its own connection to HAProxy.
const haproxyConfig = `global
    stats socket {{sock}} mode 600 level admin
    log stdout format raw daemon info
    maxconn 4096

defaults
    mode http
    log global
    timeout connect 2s
    timeout client 15s
    timeout server 15s
    retries 0
    # no "option redispatch": a failed request is not sent to another host

frontend fleet_in
    bind {{bind}}
    # One line per request: server, status, termination state, times.
    log-format "REQ %s %ST %ts %Tc %Tr %Ta"
    default_backend fleet

backend fleet
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    http-reuse never
    default-server check port {{readyPort}} inter {{inter}} fall 2 rise 2
{{servers}}`

// lbEvent is one line of HAProxy's log, as this program read it.
type lbEvent struct {
	At time.Time
	// A request: the server (or "<NOSRV>"), status and termination state
	// ("--" for a normal end; "SC": the server refused the connection,
	// "SH": it aborted before the response headers; see HAProxy's
	// "Session state at disconnection").
	Server, State string
	Status        int
	// A health check's verdict: the server went UP or DOWN (Server set).
	Change string
	Line   string
}

// balancer is the running HAProxy and what its log said.
type balancer struct {
	cmd    *exec.Cmd
	sock   string
	exited chan struct{}

	mu     sync.Mutex
	events []lbEvent
}

var (
	reqLine    = regexp.MustCompile(`^REQ (\S+) (-?\d+) (\S\S) `)
	changeLine = regexp.MustCompile(`Server fleet/(\S+) is (UP|DOWN)\b`)
)

// startBalancer writes HAProxy's config for hosts and starts it in the
// foreground (-db), logging to its stdout, which this program reads.
func startBalancer(dir string, hosts []*host, inter time.Duration) (*balancer, error) {
	b := &balancer{sock: filepath.Join(dir, "haproxy.sock"), exited: make(chan struct{})}
	var servers strings.Builder
	for _, h := range hosts {
		fmt.Fprintf(&servers, "    server %s %s:%d\n", h.name, h.ip, appPort)
	}
	text := strings.NewReplacer(
		"{{sock}}", b.sock,
		"{{bind}}", fmt.Sprintf("%s:%d", bridgeIP, lbPort),
		"{{readyPort}}", strconv.Itoa(readyPort),
		"{{inter}}", strconv.FormatInt(inter.Milliseconds(), 10)+"ms",
		"{{servers}}", servers.String(),
	).Replace(haproxyConfig)
	cfgPath := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfgPath, []byte(text), 0o644); err != nil {
		return nil, err
	}
	if out, err := runCmd(context.Background(), "haproxy", "-c", "-f", cfgPath); err != nil {
		return nil, fmt.Errorf("haproxy refuses its config: %v\n%s", err, out)
	}
	b.cmd = exec.Command("haproxy", "-db", "-f", cfgPath)
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := b.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "haproxy.log"))
	if err != nil {
		return nil, err
	}
	b.cmd.Stderr = logf
	if err := b.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start haproxy: %w", err)
	}
	go b.read(stdout, logf)
	// examples/fleet/run's trap kills it by this pid if this program dies.
	if err := os.WriteFile(filepath.Join(dir, "haproxy.pid"), []byte(strconv.Itoa(b.cmd.Process.Pid)), 0o644); err != nil {
		b.stop()
		return nil, err
	}
	return b, nil
}

// read keeps every line of HAProxy's log, timestamped as it arrives, and
// copies it to the log file.
func (b *balancer) read(r io.Reader, copyTo *os.File) {
	defer close(b.exited)
	defer copyTo.Close()
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintln(copyTo, line)
		ev, ok := parseLogLine(line)
		if !ok {
			continue
		}
		ev.At = time.Now()
		b.mu.Lock()
		b.events = append(b.events, ev)
		b.mu.Unlock()
	}
	b.cmd.Wait()
}

// parseLogLine reads one line of HAProxy's log: a request (the frontend's
// log-format) or a server going UP or DOWN; ok is false for anything else.
func parseLogLine(line string) (ev lbEvent, ok bool) {
	ev.Line = line
	if m := reqLine.FindStringSubmatch(line); m != nil {
		ev.Server, ev.State = m[1], m[3]
		ev.Status, _ = strconv.Atoi(m[2])
		return ev, true
	}
	if m := changeLine.FindStringSubmatch(line); m != nil {
		ev.Server, ev.Change = m[1], m[2]
		return ev, true
	}
	return ev, false
}

// eventsSince returns the log's events from t on.
func (b *balancer) eventsSince(t time.Time) []lbEvent {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []lbEvent
	for _, e := range b.events {
		if !e.At.Before(t) {
			out = append(out, e)
		}
	}
	return out
}

// eventsBetween returns the log's events in [from, to).
func (b *balancer) eventsBetween(from, to time.Time) []lbEvent {
	var out []lbEvent
	for _, e := range b.eventsSince(from) {
		if e.At.Before(to) {
			out = append(out, e)
		}
	}
	return out
}

// firstChange is when HAProxy's log first said server went to state
// (UP/DOWN) at or after t; zero if it has not.
func (b *balancer) firstChange(server, state string, t time.Time) time.Time {
	for _, e := range b.eventsSince(t) {
		if e.Server == server && e.Change == state {
			return e.At
		}
	}
	return time.Time{}
}

// serverStatus asks HAProxy's stats socket for the backend's servers'
// status column (`show stat`): "UP", "DOWN", "UP 1/2" (failing), "DOWN 1/2"
// (recovering), "MAINT", ...
func (b *balancer) serverStatus() (map[string]string, error) {
	conn, err := net.DialTimeout("unix", b.sock, 2*time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, "show stat\n"); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(conn)
	if err != nil {
		return nil, err
	}
	return parseShowStat(string(data))
}

// parseShowStat reads `show stat`'s CSV (header "# pxname,svname,...").
func parseShowStat(text string) (map[string]string, error) {
	r := csv.NewReader(strings.NewReader(strings.TrimPrefix(text, "# ")))
	r.FieldsPerRecord = -1
	rows, err := r.ReadAll()
	if err != nil {
		return nil, fmt.Errorf("show stat: %w", err)
	}
	if len(rows) == 0 {
		return nil, fmt.Errorf("show stat: empty answer")
	}
	col := map[string]int{}
	for i, name := range rows[0] {
		col[name] = i
	}
	px, sv, st := col["pxname"], col["svname"], col["status"]
	if st == 0 {
		return nil, fmt.Errorf("show stat: no status column in %q", rows[0])
	}
	out := map[string]string{}
	for _, row := range rows[1:] {
		if len(row) > st && row[px] == "fleet" && row[sv] != "BACKEND" {
			out[row[sv]] = row[st]
		}
	}
	return out, nil
}

// awaitStatus polls the stats socket until server's status is exactly
// want, for up to timeout.
func (b *balancer) awaitStatus(ctx context.Context, server, want string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	last := "?"
	for time.Now().Before(deadline) {
		st, err := b.serverStatus()
		if err == nil {
			if last = st[server]; last == want {
				return nil
			}
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-b.exited:
			return fmt.Errorf("haproxy exited")
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("HAProxy still says %s is %q after %s, want %q", server, last, timeout, want)
}

// awaitSteadyUp polls the stats socket until every one of servers has
// been "UP" at every poll for at least steady, for up to timeout.
func (b *balancer) awaitSteadyUp(ctx context.Context, steady, timeout time.Duration, servers ...string) error {
	deadline := time.Now().Add(timeout)
	var upSince time.Time
	last := "?"
	for time.Now().Before(deadline) {
		down, err := b.notUp(servers)
		switch {
		case err != nil:
			last, upSince = err.Error(), time.Time{}
		case down != "":
			last, upSince = down, time.Time{}
		case upSince.IsZero():
			upSince = time.Now()
		case time.Since(upSince) >= steady:
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-b.exited:
			return fmt.Errorf("haproxy exited")
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("HAProxy does not keep %s UP for %s within %s (last: %s)", strings.Join(servers, ", "), steady, timeout, last)
}

// notUp says which of servers HAProxy does not see UP now ("" if all are).
func (b *balancer) notUp(servers []string) (string, error) {
	st, err := b.serverStatus()
	if err != nil {
		return "", err
	}
	var down []string
	for _, s := range servers {
		if st[s] != "UP" {
			down = append(down, fmt.Sprintf("%s is %q", s, st[s]))
		}
	}
	return strings.Join(down, ", "), nil
}

// stop ends HAProxy (SIGTERM, SIGKILL after 5 s) and waits for it.
func (b *balancer) stop() error {
	if b.cmd == nil || b.cmd.Process == nil {
		return nil
	}
	b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.exited:
		return nil
	case <-time.After(5 * time.Second):
	}
	b.cmd.Process.Kill()
	select {
	case <-b.exited:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("haproxy (pid %d) does not exit", b.cmd.Process.Pid)
	}
}
