package e2e

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// writeFile writes a file into dir and returns its path.
func writeFile(t *testing.T, dir, name, content string, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestBadInputExits2: every kind of bad input makes baton say what is wrong
// (and where) on stderr and exit 2 at once, with nothing started and
// nothing left behind.
func TestBadInputExits2(t *testing.T) {
	t.Parallel()
	type badInput struct {
		name string
		// args returns baton's arguments (dir is a temp dir for files) and
		// the phrases stderr must contain.
		args func(t *testing.T, dir string) (args, want []string)
		// after checks what the failed start left, if anything.
		after func(t *testing.T, dir string)
	}
	noPidfile := func(t *testing.T, dir string) {
		if _, err := os.Stat(filepath.Join(dir, "baton.pid")); !os.IsNotExist(err) {
			t.Errorf("pidfile left behind by a failed start (err %v)", err)
		}
	}
	long := "/tmp/" + strings.Repeat("s", 120-len("/tmp/"))
	for _, tc := range []badInput{
		{
			name: "port in use",
			args: func(t *testing.T, dir string) ([]string, []string) {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { ln.Close() })
				addr := ln.Addr().String()
				return []string{"run", "-b", addr, "--pid", filepath.Join(dir, "baton.pid"), "--", testworkerBin},
					[]string{addr, "address already in use"}
			},
			after: noPidfile,
		},
		{
			name: "second bind in use",
			args: func(t *testing.T, dir string) ([]string, []string) {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { ln.Close() })
				addr := ln.Addr().String()
				sock := filepath.Join(dir, "first.sock")
				return []string{"run", "-b", "unix:" + sock, "-b", addr, "--", testworkerBin},
					[]string{addr, "address already in use"}
			},
			after: func(t *testing.T, dir string) {
				if _, err := os.Lstat(filepath.Join(dir, "first.sock")); !os.IsNotExist(err) {
					t.Errorf("the first listener's socket file was left behind (err %v)", err)
				}
			},
		},
		{
			name: "bind without port",
			args: func(t *testing.T, dir string) ([]string, []string) {
				return []string{"run", "-b", "localhost", "--", testworkerBin}, []string{`"localhost"`, "no port"}
			},
		},
		{
			name: "bind with a port that is not a number",
			args: func(t *testing.T, dir string) ([]string, []string) {
				return []string{"run", "-b", "127.0.0.1:http", "--", testworkerBin}, []string{"127.0.0.1:http", "not a number"}
			},
		},
		{
			name: "unknown key and wrong type in the config file",
			args: func(t *testing.T, dir string) ([]string, []string) {
				cfg := writeFile(t, dir, "baton.toml", "# a config with two mistakes\n"+
					"workers = \"four\"\n"+
					"bind = [\"127.0.0.1:0\"]\n"+
					"no_such_key = true\n", 0o644)
				return []string{"run", "-c", cfg, "--", testworkerBin},
					[]string{cfg + ":2", "workers", `"four"`, cfg + ":4", "no_such_key"}
			},
		},
		{
			name: "zero workers",
			args: func(t *testing.T, dir string) ([]string, []string) {
				return []string{"run", "-w", "0", "--", testworkerBin}, []string{"--workers", "got 0"}
			},
		},
		{
			name: "no command",
			args: func(t *testing.T, dir string) ([]string, []string) {
				return []string{"run"}, []string{"no worker command"}
			},
		},
		{
			name: "command not found",
			args: func(t *testing.T, dir string) ([]string, []string) {
				return []string{"run", "--", "no-such-command-xyz", "--flag"}, []string{`"no-such-command-xyz"`, "not found"}
			},
		},
		{
			name: "command not executable",
			args: func(t *testing.T, dir string) ([]string, []string) {
				script := writeFile(t, dir, "app.sh", "#!/bin/sh\nexit 0\n", 0o644)
				return []string{"run", "--", script}, []string{script, "not executable"}
			},
		},
		{
			name: "unknown flag",
			args: func(t *testing.T, dir string) ([]string, []string) {
				return []string{"run", "--no-such-flag", "--", testworkerBin}, []string{"no-such-flag"}
			},
		},
		{
			name: "pidfile in a missing directory",
			args: func(t *testing.T, dir string) ([]string, []string) {
				return []string{"run", "--pid", "/nonexistent-dir/x.pid", "--", testworkerBin},
					[]string{"/nonexistent-dir/x.pid", "does not exist"}
			},
		},
		{
			// Even root cannot create files in sysfs.
			name: "pidfile in a read-only directory",
			args: func(t *testing.T, dir string) ([]string, []string) {
				sock := filepath.Join(dir, "app.sock")
				return []string{"run", "-b", "unix:" + sock, "--pid", "/sys/baton-e2e.pid", "--", testworkerBin},
					[]string{"/sys/baton-e2e.pid"}
			},
			after: func(t *testing.T, dir string) {
				if _, err := os.Lstat(filepath.Join(dir, "app.sock")); !os.IsNotExist(err) {
					t.Errorf("unix socket file left behind by a failed start (err %v)", err)
				}
			},
		},
		{
			name: "log file in a missing directory",
			args: func(t *testing.T, dir string) ([]string, []string) {
				return []string{"run", "--log-file", "/nonexistent-dir/baton.log", "--", testworkerBin},
					[]string{"/nonexistent-dir/baton.log"}
			},
		},
		{
			name: "log file in a read-only directory",
			args: func(t *testing.T, dir string) ([]string, []string) {
				return []string{"run", "--log-file", "/sys/baton-e2e.log", "--", testworkerBin},
					[]string{"/sys/baton-e2e.log"}
			},
		},
		{
			name: "unix socket path of 120 bytes",
			args: func(t *testing.T, dir string) ([]string, []string) {
				return []string{"run", "-b", "unix:" + long, "--", testworkerBin}, []string{long, "120 bytes", "107"}
			},
		},
		{
			name: "pidfile held by a running master",
			args: func(t *testing.T, dir string) ([]string, []string) {
				pidfile := filepath.Join(dir, "held.pid")
				first := startBaton(t, "run", "--pid", pidfile, "--", testworkerBin)
				t.Cleanup(func() {
					if first.exited() {
						t.Errorf("the running master exited when a second one tried its pidfile")
					}
					if data, err := os.ReadFile(pidfile); err != nil || strings.TrimSpace(string(data)) != strconv.Itoa(first.Pid) {
						t.Errorf("the running master's pidfile now says %q (err %v), want %d", data, err, first.Pid)
					}
				})
				return []string{"run", "--pid", pidfile, "--", testworkerBin}, []string{pidfile, strconv.Itoa(first.Pid)}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			args, want := tc.args(t, dir)
			res := runToExit(t, batonSpec{args: args})
			if res.code != 2 {
				t.Errorf("exit code %d, want 2", res.code)
			}
			for _, phrase := range want {
				if !strings.Contains(res.stderr, phrase) {
					t.Errorf("stderr does not mention %q:\n%s", phrase, res.stderr)
				}
			}
			for _, msg := range []string{"master started", "worker started"} {
				if rs := res.b.logs(msg, nil); len(rs) > 0 {
					t.Errorf("a failed start logged %s", rs[0])
				}
			}
			res.b.assertNothingLeft(t)
			if tc.after != nil {
				tc.after(t, dir)
			}
			t.Logf("stderr: %s", strings.TrimSpace(res.stderr))
		})
	}
}

// TestCheck: baton check prints the effective configuration (file, then
// flags on top) as TOML and exits 0, and starts nothing.
func TestCheck(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := writeFile(t, dir, "baton.toml", "bind = [\"127.0.0.1:8123\", \"admin=unix:/run/app/admin.sock\"]\n"+
		"workers = 3\n"+
		"graceful_timeout = \"7s\"\n"+
		"stop_signal = \"QUIT\"\n"+
		"command = [\""+testworkerBin+"\", \"-graceful\", \"5s\"]\n"+
		"[env]\n"+
		"GREETING = \"hi\"\n", 0o644)
	res := runToExit(t, batonSpec{args: []string{"check", "-c", cfg, "--log-level", "debug", "-e", "EXTRA=1"}})
	if res.code != 0 {
		t.Fatalf("baton check exit code %d, want 0; stderr:\n%s", res.code, res.stderr)
	}
	for _, want := range []string{
		`"127.0.0.1:8123"`, `"admin=unix:/run/app/admin.sock"`,
		"workers = 3", `graceful_timeout = "7s"`, `log_level = "debug"`,
		`"` + testworkerBin + `"`, `"-graceful"`, `"5s"`,
	} {
		if !strings.Contains(res.stdout, want) {
			t.Errorf("baton check output lacks %s:\n%s", want, res.stdout)
		}
	}
	for _, line := range [][]string{{"stop_signal", "QUIT"}, {"env", "GREETING", `"hi"`, "EXTRA", `"1"`}} {
		if !strings.Contains(res.stdout, line[0]+" = ") || !containsAll(res.stdout, line[1:]) {
			t.Errorf("baton check output lacks %s with %q:\n%s", line[0], line[1:], res.stdout)
		}
	}
	res.b.assertNothingLeft(t)

	// A flag overrides the file.
	res = runToExit(t, batonSpec{args: []string{"check", "-c", cfg, "-w", "5"}})
	if res.code != 0 || !strings.Contains(res.stdout, "workers = 5") {
		t.Errorf("baton check -w 5: exit %d, output:\n%s\nstderr:\n%s", res.code, res.stdout, res.stderr)
	}
}

// TestCheckReportsEveryProblem: check on a bad file lists every problem
// with file:line and exits 2.
func TestCheckReportsEveryProblem(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := writeFile(t, dir, "baton.toml", "workers = -1\n"+
		"graceful_timeout = \"soon\"\n"+
		"wrokers = 2\n", 0o644)
	res := runToExit(t, batonSpec{args: []string{"check", "-c", cfg, "--", testworkerBin}})
	if res.code != 2 {
		t.Errorf("exit code %d, want 2", res.code)
	}
	for _, want := range []string{cfg + ":1", "workers", cfg + ":2", "graceful_timeout", `"soon"`, cfg + ":3", "wrokers"} {
		if !strings.Contains(res.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, res.stderr)
		}
	}
	if strings.TrimSpace(res.stdout) != "" {
		t.Errorf("check printed a config despite problems:\n%s", res.stdout)
	}
}

// TestVersion: baton version prints a version and exits 0.
func TestVersion(t *testing.T) {
	t.Parallel()
	res := runToExit(t, batonSpec{args: []string{"version"}})
	if res.code != 0 || !strings.HasPrefix(res.stdout, "baton ") {
		t.Errorf("baton version: exit %d, stdout %q, stderr %q", res.code, res.stdout, res.stderr)
	}
}

func containsAll(s string, parts []string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}
