//go:build containertier

package containertier

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/baton-pm/baton/e2e/internal/tiertest"
	"golang.org/x/sys/unix"
)

// The tier's own podman storage: its images and containers never mix with
// another podman user's.
const (
	storageRoot = "/var/cache/baton-container-tier/storage"
	runRoot     = "/run/baton-container-tier"
)

// The recipe's ports (examples/container/Dockerfile's ENTRYPOINT), inside
// the container's own network namespace, and its shutdown_delay.
const (
	appAddr       = "127.0.0.1:8000"
	metricsAddr   = "127.0.0.1:9100"
	shutdownDelay = 5 * time.Second
)

// poll is how often the tier looks again: what it looks at is a podman
// call or a request into the container, not free.
const poll = 100 * time.Millisecond

// podmanGlobal are the options every podman command gets. runc, because
// Debian 12's crun refuses this machine's hybrid cgroup layout ("cgroups in
// hybrid mode not supported, drop all controllers from cgroupv2").
var podmanGlobal = []string{"--root", storageRoot, "--runroot", runRoot, "--runtime", "runc", "--cgroup-manager", "cgroupfs"}

// podman runs podman with args and returns its combined output.
func podman(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "podman", append(podmanGlobal, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("podman %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func mustPodman(t *testing.T, timeout time.Duration, args ...string) string {
	t.Helper()
	out, err := podman(timeout, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// requirements fails the test, naming what to install, when the tier
// cannot run here.
func requirements(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("the container tier needs root (rootful podman)")
	}
	for _, tool := range []string{"podman", "runc", "tar"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed: run scripts/install-test-deps (Debian packages podman, runc)", tool)
		}
	}
}

// repoRoot is the repository: the Dockerfile's build context.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "examples/container/Dockerfile")); err != nil {
		t.Fatalf("not run from e2e/containertier: %v", err)
	}
	return root
}

// buildImage makes the base images and builds the recipe as shipped, and
// returns the image's name; it is removed when the test ends. Go's module
// and build caches are lent to the build stage, which would otherwise
// download and compile everything each run.
func buildImage(t *testing.T) string {
	t.Helper()
	root := repoRoot(t)
	base := exec.Command(filepath.Join(root, "scripts/container-tier/base-images"), podmanGlobal[:4]...)
	if out, err := base.CombinedOutput(); err != nil {
		t.Fatalf("scripts/container-tier/base-images: %v\n%s", err, out)
	}
	image := fmt.Sprintf("localhost/baton-tier-app:%d", os.Getpid())
	t.Cleanup(func() {
		podman(time.Minute, "rmi", "-f", image)
		podman(time.Minute, "image", "prune", "-f")
	})
	gocache, gomod := goEnv(t, "GOCACHE"), goEnv(t, "GOMODCACHE")
	start := time.Now()
	// The network is the host's for the build only: apt-get update.
	mustPodman(t, 10*time.Minute, "build", "--pull=never", "--layers=false", "--network", "host",
		"-v", gomod+":/root/go/pkg/mod", "-v", gocache+":/root/.cache/go-build",
		"-f", filepath.Join(root, "examples/container/Dockerfile"), "-t", image, root)
	t.Logf("built %s from examples/container/Dockerfile in %v", image, time.Since(start).Round(time.Second))
	return image
}

func goEnv(t *testing.T, name string) string {
	t.Helper()
	out, err := exec.Command("go", "env", name).Output()
	if err != nil || strings.TrimSpace(string(out)) == "" {
		t.Fatalf("go env %s: %v", name, err)
	}
	return strings.TrimSpace(string(out))
}

// container is one run of the image.
type container struct {
	name  string
	pid   int             // its PID 1, as the host sees it
	netns *tiertest.Netns // its network namespace, held open
}

// runContainer starts image as `docker run -d` would, with no network but
// its own loopback (the test reaches it from inside its namespace, so no
// port of the host is taken). podman's default rlimits (nofile 1048576,
// nproc 4194304) are more than root may set here (no CAP_SYS_RESOURCE in
// this sandbox), so the container gets the test's own open-file limit and
// 4096 processes.
func runContainer(t *testing.T, image string, podmanArgs ...string) *container {
	t.Helper()
	var nofile unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &nofile); err != nil {
		t.Fatal(err)
	}
	c := &container{name: fmt.Sprintf("baton-tier-%d-%d", os.Getpid(), containerSeq.Add(1))}
	t.Cleanup(func() {
		if c.netns != nil {
			c.netns.Close()
		}
		if out, err := podman(time.Minute, "rm", "-f", "-t", "0", c.name); err != nil {
			t.Errorf("removing the container: %v\n%s", err, out)
		}
	})
	args := append([]string{"run", "-d", "--name", c.name, "--network", "none",
		"--ulimit", fmt.Sprintf("nofile=%d:%d", nofile.Cur, nofile.Max), "--ulimit", "nproc=4096:4096"}, podmanArgs...)
	mustPodman(t, time.Minute, append(args, image)...)
	pid, err := strconv.Atoi(strings.TrimSpace(mustPodman(t, time.Minute, "inspect", "--format", "{{.State.Pid}}", c.name)))
	if err != nil || pid <= 0 {
		t.Fatalf("the container's pid: %v (logs: %s)", err, c.logs())
	}
	c.pid = pid
	if c.netns, err = tiertest.OpenNetns(pid); err != nil {
		t.Fatal(err)
	}
	return c
}

// containerSeq tells apart the containers one test run starts.
var containerSeq atomic.Int32

func (c *container) logs() string {
	out, err := podman(time.Minute, "logs", c.name)
	if err != nil {
		return err.Error()
	}
	return out
}

// logRecord finds baton's first text log record with msg, and its time.
func (c *container) logRecord(msg string) (line string, at time.Time, ok bool) {
	sc := bufio.NewScanner(strings.NewReader(c.logs()))
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, "msg="+strconv.Quote(msg)) && !strings.Contains(line, "msg="+msg+" ") {
			continue
		}
		ts, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
		at, err := time.Parse(time.RFC3339Nano, ts)
		return line, at, err == nil
	}
	return "", time.Time{}, false
}

func (c *container) waitLog(t *testing.T, msg string, timeout time.Duration) (string, time.Time) {
	t.Helper()
	var line string
	var at time.Time
	if !tiertest.WaitUntil(timeout, poll, func() bool {
		var ok bool
		line, at, ok = c.logRecord(msg)
		return ok
	}) {
		t.Fatalf("no %q in baton's log after %v:\n%s", msg, timeout, c.logs())
	}
	return line, at
}

// startLoad runs clients that each make requests to the app, one at a
// time, each on a fresh connection, until stopped or the test ends. A
// success's detail is its body ("hello from pid N"): the answers tell the
// workers apart.
func (c *container) startLoad(t *testing.T, clients int) *tiertest.Load {
	l := tiertest.StartLoad(clients, 0, func() (string, string) {
		status, body, err := c.netns.Get(appAddr, "/", 10*time.Second)
		return tiertest.FailureKind(status, err), body
	})
	t.Cleanup(func() { l.Stop() })
	return l
}

// zombies lists the container's zombie processes, read from its own /proc
// by a shell inside it, as "pid (comm) ppid N".
func (c *container) zombies(t *testing.T) []string {
	t.Helper()
	out := mustPodman(t, time.Minute, "exec", c.name, "sh", "-c", "cat /proc/[0-9]*/stat 2>/dev/null")
	var zombies []string
	for _, line := range strings.Split(out, "\n") {
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		i := strings.LastIndex(line, ")")
		if i < 0 {
			continue
		}
		fields := strings.Fields(line[i+1:])
		if len(fields) >= 2 && fields[0] == "Z" {
			zombies = append(zombies, line[:i+1]+" ppid "+fields[1])
		}
	}
	return zombies
}
