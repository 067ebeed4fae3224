package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// freeAddr is a loopback address with a port nothing listens on now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// waitHTTP waits until url answers with code.
func waitHTTP(t *testing.T, url string, code int) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == code {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not answer %d within %v (last error %v)", url, code, waitTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// statusJSON is `baton status --json` through the control socket sock.
func statusJSON(t *testing.T, sock string) map[string]any {
	t.Helper()
	r := cli(t, nil, "status", "--json", "--control", sock)
	if r.code != 0 {
		t.Fatalf("baton status: exit %d: %s", r.code, r.stderr)
	}
	var st map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("status JSON: %v: %q", err, r.stdout)
	}
	return st
}

// A reload applies the master's own settings too: the metrics endpoint
// and the control socket move to their new places (the old ones close),
// and a change to a setting that applies at start only is refused by
// name, with the running configuration left as it was.
func TestReloadReappliesMasterSettingsAndRefusesStartOnlyOnes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sockA, sockB := filepath.Join(dir, "a.sock"), filepath.Join(dir, "b.sock")
	metricsA, metricsB := freeAddr(t), freeAddr(t)
	config := func(control, metrics, extra string) string {
		return workerConfig(1, fmt.Sprintf("bind = [\"127.0.0.1:0\"]\ncontrol = %q\nmetrics_bind = %q\n%s", control, metrics, extra))
	}
	d := newDeployment(t, config(sockA, metricsA, ""))
	b := startBaton(t, "run", "-c", d.path)
	waitHTTP(t, "http://"+metricsA+"/readyz", http.StatusOK)

	d.write(config(sockB, metricsB, `log_level = "debug"`))
	if r := cli(t, nil, "reload", "--control", sockA); r.code != 0 {
		t.Fatalf("reload with new master settings: exit %d, %s", r.code, r.stdout)
	}
	waitHTTP(t, "http://"+metricsB+"/readyz", http.StatusOK)
	deadline := time.Now().Add(waitTimeout)
	for {
		_, errMetrics := http.Get("http://" + metricsA + "/readyz")
		_, errSock := os.Stat(sockA)
		if errMetrics != nil && os.IsNotExist(errSock) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the old endpoints still answer after the reload: metrics %v, control socket %v", errMetrics, errSock)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if gen := statusJSON(t, sockB)["generation"]; gen != float64(2) {
		t.Errorf("status through the new control socket: generation %v, want 2", gen)
	}

	// pid applies at start only.
	d.write(config(sockB, metricsB, fmt.Sprintf("log_level = \"debug\"\npid = %q", filepath.Join(dir, "other.pid"))))
	r := cli(t, nil, "reload", "--control", sockB)
	if r.code != 1 || !strings.Contains(r.stdout+r.stderr, `pid: "" -> "`) || !strings.Contains(r.stdout+r.stderr, "restart baton") {
		t.Fatalf("reload changing pid: exit %d, %q; want exit 1 naming pid and saying to restart", r.code, r.stdout+r.stderr)
	}
	st := statusJSON(t, sockB)
	if st["generation"] != float64(2) {
		t.Errorf("generation %v after the refused reload, want 2", st["generation"])
	}
	if _, err := os.Stat(filepath.Join(dir, "other.pid")); !os.IsNotExist(err) {
		t.Errorf("the refused reload wrote the new pidfile: %v", err)
	}
	b.signal(t, syscall.SIGTERM)
	b.waitExit(t, waitTimeout)
}
