//go:build systemdtier

package systemdtier

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// tierEnv is what every test of the tier shares: built once per run.
type tierEnv struct {
	repo     string // the repository's root
	rootfs   string // the cached root filesystem (build-rootfs)
	baton    []byte // static baton, version "dev"
	upgraded []byte // static baton, version "tier-upgraded"
	units    map[string][]byte
}

var (
	envOnce sync.Once
	envVal  *tierEnv
	envErr  error
)

// setup builds (once) the root filesystem and the static baton binaries, and
// checks what booting a container needs. Every problem fails the test with
// its reason.
func setup(t *testing.T) *tierEnv {
	t.Helper()
	envOnce.Do(func() { envVal, envErr = buildEnv() })
	if envErr != nil {
		t.Fatalf("the real-systemd tier cannot run on this machine: %v", envErr)
	}
	return envVal
}

func buildEnv() (*tierEnv, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("it must run as root (debootstrap, systemd-nspawn, nsenter), not uid %d", os.Geteuid())
	}
	for _, tool := range []string{"debootstrap", "systemd-nspawn", "unshare", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s is not installed (scripts/install-test-deps installs it): %v", tool, err)
		}
	}
	wd, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	env := &tierEnv{repo: wd, units: map[string][]byte{}}
	for {
		if _, err := os.Stat(filepath.Join(env.repo, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(env.repo)
		if parent == env.repo {
			return nil, fmt.Errorf("no go.mod above %s", wd)
		}
		env.repo = parent
	}

	start := time.Now()
	var stderr bytes.Buffer
	cmd := exec.Command(filepath.Join(env.repo, "scripts/systemd-tier/build-rootfs"))
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("scripts/systemd-tier/build-rootfs: %v\n%s", err, stderr.String())
	}
	env.rootfs = strings.TrimSpace(string(out))
	fmt.Fprintf(os.Stderr, "%ssystemd tier: the root filesystem was ready in %.1f s\n", stderr.String(), time.Since(start).Seconds())

	dir, err := os.MkdirTemp("", "baton-systemd-tier-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	for _, b := range []struct {
		dst     *[]byte
		version string
	}{{&env.baton, "dev"}, {&env.upgraded, "tier-upgraded"}} {
		bin := filepath.Join(dir, "baton-"+b.version)
		build := exec.Command("go", "build", "-o", bin, "-ldflags", "-X main.version="+b.version, "./cmd/baton")
		build.Dir = env.repo
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("building the static baton: %v\n%s", err, out)
		}
		if *b.dst, err = os.ReadFile(bin); err != nil {
			return nil, err
		}
	}
	for _, u := range []string{"baton.service", "app.socket"} {
		if env.units[u], err = os.ReadFile(filepath.Join(env.repo, "contrib/systemd", u)); err != nil {
			return nil, err
		}
	}
	return env, nil
}

// The app the units run: uvicorn with the ASGI app below, on the socket
// app.socket passes to baton. Its import sleeps for the seconds in
// /srv/app/import_delay (the time a real app spends importing), "/" answers
// with the worker's generation and pid, and "/sleep" after 3 s.
const appPy = `import asyncio, os, time

time.sleep(float(open("/srv/app/import_delay").read()))
GEN = os.environ.get("BATON_GENERATION", "?")


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["path"] == "/sleep":
        await asyncio.sleep(3)
    body = f"gen={GEN} pid={os.getpid()}\n".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
`

// brokenAppPy is the app with a syntax error: its workers exit at import.
const brokenAppPy = appPy + "\ndef broken(:\n"

// batonToml is /etc/app/baton.toml: the socket from app.socket, two uvicorn
// workers.
const batonToml = `bind = ["systemd:web"]
workers = 2
command = ["uvicorn", "--fd", "3", "--no-access-log", "app:app"]
chdir = "/srv/app"
graceful_timeout = "10s"
boot_timeout = "20s"
`

// The paths of the shipped unit, which the tier installs unchanged.
const (
	batonPath  = "/usr/local/bin/baton"
	configPath = "/etc/app/baton.toml"
	pidPath    = "/run/app/baton.pid"
	unitName   = "app.service"
	unitCgroup = "/system.slice/app.service"
)

// installApp installs baton, the contrib units (baton.service as
// app.service, app.socket) and the app in the container.
func installApp(t *testing.T, c *container, importDelay float64) {
	t.Helper()
	env := setup(t)
	unit := string(env.units["baton.service"])
	for _, want := range []string{"ExecStart=" + batonPath + " run -c " + configPath + " --pid " + pidPath, "User=app"} {
		if !strings.Contains(unit, want) {
			t.Fatalf("contrib/systemd/baton.service has no %q line: the tier installs it as app.service with the paths it names; adjust the tier", want)
		}
	}
	c.writeFile(t, batonPath, env.baton, 0o755)
	c.writeFile(t, "/etc/systemd/system/app.service", env.units["baton.service"], 0o644)
	c.writeFile(t, "/etc/systemd/system/app.socket", env.units["app.socket"], 0o644)
	c.writeFile(t, configPath, []byte(batonToml), 0o644)
	c.writeFile(t, "/srv/app/app.py", []byte(appPy), 0o644)
	setImportDelay(t, c, importDelay)
	c.must(t, "systemctl", "daemon-reload")
}

func setImportDelay(t *testing.T, c *container, seconds float64) {
	t.Helper()
	c.writeFile(t, "/srv/app/import_delay", []byte(strconv.FormatFloat(seconds, 'f', -1, 64)), 0o644)
}

// must runs a command in the container and fails the test if it fails.
func (c *container) must(t *testing.T, args ...string) string {
	t.Helper()
	out, err := c.exec(2*time.Minute, args...)
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// timed runs a command in the container and says how long it took.
func (c *container) timed(args ...string) (string, time.Duration, error) {
	start := time.Now()
	out, err := c.exec(2*time.Minute, args...)
	return out, time.Since(start), err
}

// show reads properties of a unit.
func (c *container) show(t *testing.T, unit string, props ...string) map[string]string {
	t.Helper()
	out := c.must(t, "systemctl", "show", "-p", strings.Join(props, ","), unit)
	m := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
		}
	}
	return m
}

func (c *container) mainPid(t *testing.T) int {
	t.Helper()
	n, _ := strconv.Atoi(c.show(t, unitName, "MainPID")["MainPID"])
	return n
}

// status is what `baton status --json` says (the fields the tier reads).
type status struct {
	Pid         int    `json:"pid"`
	Version     string `json:"version"`
	Containment string `json:"containment"`
	Generation  int    `json:"generation"`
	Workers     []struct {
		Slot       int    `json:"slot"`
		Pid        int    `json:"pid"`
		Generation int    `json:"generation"`
		State      string `json:"state"`
	} `json:"worker_list"`
}

// batonAsApp runs a baton client command as the unit's user (baton's
// control socket answers its own user and root, and the client only
// believes a master of its own user or root).
func (c *container) batonAsApp(args ...string) (string, error) {
	return c.exec(2*time.Minute, append([]string{"setpriv", "--reuid=app", "--regid=app", "--clear-groups", batonPath}, args...)...)
}

func (c *container) status(t *testing.T) status {
	t.Helper()
	out, err := c.batonAsApp("status", "--json", "--pid", pidPath)
	if err != nil {
		t.Fatalf("baton status: %v\n%s", err, out)
	}
	var s status
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("baton status --json: %v\n%s", err, out)
	}
	return s
}

// proc is one process in the container.
type proc struct {
	pid, ppid int
	cmd       string
}

// unitProcesses lists the processes in the unit's cgroup and every cgroup
// below it, in each cgroup hierarchy the container's systemd uses (the v2
// tree; and systemd's named v1 tree on a hybrid host), as the container's
// pid namespace numbers them.
func (c *container) unitProcesses(t *testing.T) []proc {
	t.Helper()
	script := `for h in /sys/fs/cgroup /sys/fs/cgroup/unified /sys/fs/cgroup/systemd; do
	[ -f "$h/cgroup.procs" ] && [ -d "$h` + unitCgroup + `" ] || continue
	find "$h` + unitCgroup + `" -name cgroup.procs -exec cat {} +
done | sort -un | while read -r pid; do
	ppid=$(awk '{print $4}' /proc/$pid/stat 2>/dev/null) || continue
	echo "$pid $ppid $(tr '\0' ' ' </proc/$pid/cmdline)"
done`
	out, err := c.sh(time.Minute, script)
	if err != nil {
		t.Fatalf("listing the unit's processes: %v\n%s", err, out)
	}
	var procs []proc
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.SplitN(line, " ", 3)
		if len(f) < 2 {
			continue
		}
		var p proc
		p.pid, _ = strconv.Atoi(f[0])
		p.ppid, _ = strconv.Atoi(f[1])
		if len(f) == 3 {
			p.cmd = strings.TrimSpace(f[2])
		}
		procs = append(procs, p)
	}
	sort.Slice(procs, func(i, j int) bool { return procs[i].pid < procs[j].pid })
	return procs
}

// journal returns the unit's journal since a time (systemd's own lines
// about it included).
func (c *container) journal(since time.Time) string {
	out, _ := c.exec(time.Minute, "journalctl", "--no-pager", "-o", "short-precise", "-u", unitName,
		"--since", "@"+strconv.FormatInt(since.Add(-time.Second).Unix(), 10))
	return out
}

// poll is how often the tier looks again: what it looks at is a systemctl
// call or a request into the container, not free.
const poll = 100 * time.Millisecond
