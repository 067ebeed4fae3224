package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The rig's fixed names and addresses: a private bridge in the root
// namespace (HAProxy listens on its address) and one namespace per host,
// joined to it by a veth pair.
const (
	bridge    = "batonfleet0"
	bridgeIP  = "10.77.0.1"
	prefixLen = 24
	lbPort    = 80   // HAProxy's frontend, on bridgeIP
	appPort   = 8000 // each host's baton listener
	readyPort = 9100 // each host's metrics_bind (/readyz)
	numHosts  = 3
)

// hostName is the name of host i (from 0): h1, h2, h3.
func hostName(i int) string { return "h" + strconv.Itoa(i+1) }

// hostIP is host i's address on the bridge: 10.77.0.11, .12, .13.
func hostIP(i int) string { return "10.77.0." + strconv.Itoa(11+i) }

// netnsName is the network namespace of host i.
func netnsName(i int) string { return "baton-fleet-" + hostName(i) }

// vethName is the root-namespace end of host i's veth pair (15 bytes at most).
func vethName(i int) string { return "bfleet-" + hostName(i) }

// netnsPath is what nsenter --net= takes for host i.
func netnsPath(i int) string { return "/run/netns/" + netnsName(i) }

// runCmd runs one command and returns an error naming it, with its output,
// if it fails.
func runCmd(ctx context.Context, name string, args ...string) (string, error) {
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	text := strings.TrimSpace(out.String())
	if err != nil {
		return text, fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, text)
	}
	return text, nil
}

// buildNet creates the bridge and the hosts' namespaces. The caller removes
// them with removeNet, also when buildNet fails half-way.
func buildNet(ctx context.Context) error {
	steps := [][]string{
		{"link", "add", bridge, "type", "bridge"},
		{"addr", "add", fmt.Sprintf("%s/%d", bridgeIP, prefixLen), "dev", bridge},
		{"link", "set", bridge, "up"},
	}
	for i := range numHosts {
		ns := netnsName(i)
		steps = append(steps,
			[]string{"netns", "add", ns},
			[]string{"link", "add", vethName(i), "type", "veth", "peer", "name", "eth0", "netns", ns},
			[]string{"link", "set", vethName(i), "master", bridge, "up"},
			[]string{"-n", ns, "addr", "add", fmt.Sprintf("%s/%d", hostIP(i), prefixLen), "dev", "eth0"},
			[]string{"-n", ns, "link", "set", "eth0", "up"},
			[]string{"-n", ns, "link", "set", "lo", "up"},
		)
	}
	for _, s := range steps {
		if _, err := runCmd(ctx, "ip", s...); err != nil {
			return err
		}
	}
	return nil
}

// removeRig removes whatever a run left: HAProxy (by the pid it wrote in
// dir), every process in the hosts' namespaces, the namespaces and the
// bridge. It is what examples/fleet/run's trap calls when the run itself
// could not clean up.
func removeRig(dir string) error {
	var errs []error
	// Only a pid that is still a haproxy: the pid may have been reused.
	if pid, err := readPid(filepath.Join(dir, "haproxy.pid")); err == nil && commOf(pid) == "haproxy" {
		fmt.Fprintf(os.Stderr, "fleet: killing haproxy (pid %d) an earlier run left\n", pid)
		errs = append(errs, killAndWait(pid))
	}
	return errors.Join(append(errs, removeNet())...)
}

// removeNet kills every process left in the hosts' namespaces, then deletes
// the namespaces (their veth pairs go with them) and the bridge. Missing
// pieces are not an error: it also cleans up after a half-built rig.
func removeNet() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	for i := range numHosts {
		if _, err := os.Stat(netnsPath(i)); err != nil {
			continue
		}
		errs = append(errs, killNetnsProcs(ctx, i))
		if _, err := runCmd(ctx, "ip", "netns", "del", netnsName(i)); err != nil {
			errs = append(errs, err)
		}
	}
	if _, err := os.Stat("/sys/class/net/" + bridge); err == nil {
		if _, err := runCmd(ctx, "ip", "link", "del", bridge); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// killNetnsProcs SIGKILLs every process in host i's namespace and waits
// until they are gone. By the time it runs, the rollout has already
// stopped its batons gracefully; anything left is a leftover.
func killNetnsProcs(ctx context.Context, i int) error {
	out, err := runCmd(ctx, "ip", "netns", "pids", netnsName(i))
	if err != nil {
		return err
	}
	var errs []error
	for _, f := range strings.Fields(out) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			continue
		}
		fmt.Fprintf(os.Stderr, "fleet: killing pid %d left in %s\n", pid, netnsName(i))
		errs = append(errs, killAndWait(pid))
	}
	return errors.Join(errs...)
}

// killAndWait SIGKILLs pid and waits (up to 10 s) until it is gone.
func killAndWait(pid int) error {
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return nil
		}
		return fmt.Errorf("kill %d: %w", pid, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if !alive(pid) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("pid %d still there 10 s after SIGKILL", pid)
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the command name in parentheses: "4242 (baton) S ...".
	i := bytes.LastIndexByte(stat, ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] != 'Z'
}

// commOf is pid's command name, "" if it is gone.
func commOf(pid int) string {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	return strings.TrimSpace(string(b))
}

func readPid(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// leftovers lists the rig's pieces still present (after a teardown: none).
func leftovers() []string {
	var left []string
	for i := range numHosts {
		if _, err := os.Stat(netnsPath(i)); err == nil {
			left = append(left, "network namespace "+netnsName(i))
		}
	}
	if _, err := os.Stat("/sys/class/net/" + bridge); err == nil {
		left = append(left, "bridge "+bridge)
	}
	return left
}
