package config

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// defaults is the Config Load gives with no file and no flags, for command.
func defaults(command ...string) *Config {
	return &Config{
		Binds:           []Bind{{Name: "bind0", Raw: "127.0.0.1:8000", Network: "tcp", Address: "127.0.0.1:8000"}},
		Backlog:         2048,
		UnixMode:        0o660,
		Workers:         1,
		Command:         command,
		CommandPath:     command[0],
		Env:             map[string]string{},
		ListenEnv:       true,
		StopSignal:      syscall.SIGTERM,
		GracefulTimeout: 30 * time.Second,
		Timeout:         30 * time.Second,
		Ready:           Readiness{Mode: "auto"},
		BootTimeout:     60 * time.Second,
		ReloadStrategy:  "surge",
		MaxSurge:        1,
		DrainUnlisten:   true,
		BootNice:        true,
		UpgradeHandover: "auto",
		UpgradeMode:     "reexec",
		Subreaper:       true,
		Cgroup:          "auto",
		RunAsUID:        -1,
		RunAsGID:        -1,
		UnixUID:         -1,
		UnixGID:         -1,
		LogLevel:        "info",
		LogFormat:       "text",
	}
}

func assertConfig(t *testing.T, got, want *Config) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("config:\n got %+v\nwant %+v", *got, *want)
	}
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	d := newTestDir(t)
	assertConfig(t, d.mustLoad(nil, d.app()), defaults(d.app()))

	// Without a flag set at all (no flags, no file).
	c, err := Load(nil, []string{d.app()})
	if err != nil {
		t.Fatal(err)
	}
	assertConfig(t, c, defaults(d.app()))
}

func TestDefaultsParse(t *testing.T) {
	t.Parallel()
	// newLoader panics on a default its own setting does not take.
	newLoader()
}

func TestFileOnly(t *testing.T) {
	t.Parallel()
	d := newTestDir(t)
	path := d.config(fmt.Sprintf(`
bind = ["web=[::1]:8000", "unix:%[1]s/x.sock"]
backlog = 64
unix_mode = "0600"
workers = 4
command = ["./app", "--fd", "3"]
chdir = %[1]q
graceful_timeout = 90
stop_signal = "sigquit"
listen_env = false
ready = "delay:2s"
reload_strategy = "rolling"
max_surge = 2
pid = "%[1]s/baton.pid"
log_level = "debug"
log_format = "json"
log_file = "%[1]s/baton.log"

[env]
DATABASE_URL = "postgres://db/app"
`, d.path))
	want := &Config{
		Binds: []Bind{
			{Name: "web", Raw: "web=[::1]:8000", Network: "tcp", Address: "[::1]:8000"},
			{Name: "bind1", Raw: "unix:" + d.path + "/x.sock", Network: "unix", Address: d.path + "/x.sock"},
		},
		Backlog:         64,
		UnixMode:        0o600,
		Workers:         4,
		Command:         []string{"./app", "--fd", "3"},
		CommandPath:     d.app(),
		Chdir:           d.path,
		Env:             map[string]string{"DATABASE_URL": "postgres://db/app"},
		ListenEnv:       false,
		StopSignal:      syscall.SIGQUIT,
		GracefulTimeout: 90 * time.Second,
		Timeout:         30 * time.Second,
		Ready:           Readiness{Mode: "delay", Delay: 2 * time.Second},
		BootTimeout:     60 * time.Second,
		ReloadStrategy:  "rolling",
		MaxSurge:        2,
		DrainUnlisten:   true,
		BootNice:        true,
		UpgradeHandover: "auto",
		UpgradeMode:     "reexec",
		Subreaper:       true,
		Cgroup:          "auto",
		RunAsUID:        -1,
		RunAsGID:        -1,
		UnixUID:         -1,
		UnixGID:         -1,
		PIDFile:         d.path + "/baton.pid",
		LogLevel:        "debug",
		LogFormat:       "json",
		LogFile:         d.path + "/baton.log",
		source:          path,
	}
	c := d.mustLoad([]string{"-c", path})
	assertConfig(t, c, want)
	if c.Source() != path {
		t.Errorf("Source() = %q, want %q", c.Source(), path)
	}
}

func TestFlagsOverrideFile(t *testing.T) {
	t.Parallel()
	d := newTestDir(t)
	path := d.config(`
bind = ["127.0.0.1:8000", "127.0.0.1:8001"]
workers = 2
graceful_timeout = "10s"
command = ["/bin/false"]
env = { A = "1", B = "2" }
`)
	c := d.mustLoad([]string{
		"-c", path,
		"-b", ":9000", "--bind", "admin=fd://3", // replace the file's list
		"-e", "B=3", "--env", "C=4=four", // add to the file's env
		"-w", "8",
		"--graceful-timeout", "1.5",
		"--unix-mode", "600",
		"--stop-signal", "INT",
		"--log-level", "warn",
	}, d.app(), "serve") // replaces the file's command

	want := defaults(d.app(), "serve")
	want.Binds = []Bind{
		{Name: "bind0", Raw: ":9000", Network: "tcp", Address: ":9000"},
		{Name: "admin", Raw: "admin=fd://3", Network: "fd", FD: 3},
	}
	want.Env = map[string]string{"A": "1", "B": "3", "C": "4=four"}
	want.Workers = 8
	want.GracefulTimeout = 1500 * time.Millisecond
	want.UnixMode = 0o600
	want.StopSignal = syscall.SIGINT
	want.LogLevel = "warn"
	want.source = path
	assertConfig(t, c, want)
}

func TestFlagGivenTwiceLastWins(t *testing.T) {
	t.Parallel()
	d := newTestDir(t)
	c := d.mustLoad([]string{"-w", "2", "-w", "3"}, d.app())
	if c.Workers != 3 {
		t.Errorf("Workers = %d, want 3", c.Workers)
	}
}

func TestFileCommandUsedWithoutArgs(t *testing.T) {
	t.Parallel()
	d := newTestDir(t)
	path := d.config(fmt.Sprintf("command = [%q, \"x\"]\n", d.app()))
	c := d.mustLoad([]string{"-c", path})
	if want := []string{d.app(), "x"}; !slices.Equal(c.Command, want) {
		t.Errorf("Command = %q, want %q", c.Command, want)
	}
}

func TestDurationForms(t *testing.T) {
	t.Parallel()
	tests := []struct {
		file string // graceful_timeout's TOML value, or "" for none
		flag string // --graceful-timeout, or "" for none
		want time.Duration
	}{
		{file: `"30s"`, want: 30 * time.Second},
		{file: `"1m30s"`, want: 90 * time.Second},
		{file: `"250ms"`, want: 250 * time.Millisecond},
		{file: `30`, want: 30 * time.Second},
		{file: `1.5`, want: 1500 * time.Millisecond},
		{file: `0.001`, want: time.Millisecond},
		{file: `"45"`, want: 45 * time.Second},
		{flag: "1m", want: time.Minute},
		{flag: "30", want: 30 * time.Second},
		{flag: "0.25", want: 250 * time.Millisecond},
		{file: `5`, flag: "7s", want: 7 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.file+"|"+tt.flag, func(t *testing.T) {
			t.Parallel()
			if got := loadForm(t, "graceful_timeout", tt.file, tt.flag).GracefulTimeout; got != tt.want {
				t.Errorf("GracefulTimeout = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestShutdownDelay(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		file, flag string
		want       time.Duration
	}{
		{want: 0},
		{file: `"5s"`, want: 5 * time.Second},
		{file: `2.5`, want: 2500 * time.Millisecond},
		{file: `"5s"`, flag: "0", want: 0},
		{flag: "1m", want: time.Minute},
	} {
		if got := loadForm(t, "shutdown_delay", tt.file, tt.flag).ShutdownDelay; got != tt.want {
			t.Errorf("shutdown_delay file %q, flag %q: %v, want %v", tt.file, tt.flag, got, tt.want)
		}
	}
}

// loadForm loads a config that sets key to file in the TOML file (unless
// "") and to flag on the command line (unless "").
func loadForm(t *testing.T, key, file, flag string) *Config {
	t.Helper()
	d := newTestDir(t)
	var args []string
	if file != "" {
		args = append(args, "-c", d.config(key+" = "+file+"\n"))
	}
	if flag != "" {
		args = append(args, "--"+strings.ReplaceAll(key, "_", "-"), flag)
	}
	return d.mustLoad(args, d.app())
}

func TestUnixModeForms(t *testing.T) {
	t.Parallel()
	tests := []struct {
		file string // unix_mode's TOML value, or "" for none
		flag string // --unix-mode, or "" for none
		want os.FileMode
	}{
		{file: `"0660"`, want: 0o660},
		{file: `"660"`, want: 0o660},
		{file: `"0o640"`, want: 0o640},
		{file: `0o600`, want: 0o600},
		{file: `0`, want: 0},
		{file: `"0777"`, want: 0o777},
		{flag: "0600", want: 0o600},
		{flag: "666", want: 0o666},
	}
	for _, tt := range tests {
		t.Run(tt.file+"|"+tt.flag, func(t *testing.T) {
			t.Parallel()
			if got := loadForm(t, "unix_mode", tt.file, tt.flag).UnixMode; got != tt.want {
				t.Errorf("UnixMode = %#o, want %#o", got, tt.want)
			}
		})
	}
}

func TestStopSignalForms(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"TERM", "SIGTERM", "term", "sigterm", "SigTerm"} {
		d := newTestDir(t)
		if got := d.mustLoad([]string{"--stop-signal", name}, d.app()).StopSignal; got != syscall.SIGTERM {
			t.Errorf("--stop-signal %s: got %v, want SIGTERM", name, got)
		}
	}
	for _, s := range stopSignals {
		d := newTestDir(t)
		if got := d.mustLoad([]string{"--stop-signal", s.name}, d.app()).StopSignal; got != s.sig {
			t.Errorf("--stop-signal %s: got %v, want %v", s.name, got, s.sig)
		}
	}
}

func TestBindFormsThroughLoad(t *testing.T) {
	t.Parallel()
	d := newTestDir(t)
	path := d.config(`bind = "admin=127.0.0.1:9000"` + "\n") // a single string is a list of one
	c := d.mustLoad([]string{"-c", path}, d.app())
	want := []Bind{{Name: "admin", Raw: "admin=127.0.0.1:9000", Network: "tcp", Address: "127.0.0.1:9000"}}
	if !reflect.DeepEqual(c.Binds, want) {
		t.Errorf("Binds = %+v, want %+v", c.Binds, want)
	}
}

// TestProblems checks the exact text of each kind of problem. In file, args
// and command, APP is replaced by an executable and DIR by the test's
// directory; a nil command means APP.
func TestProblems(t *testing.T) {
	t.Parallel()
	long := "/" + strings.Repeat("s", 199)
	tests := []struct {
		name    string
		file    string // baton.toml, or "" for none
		args    []string
		command []string
		want    []string
	}{
		{
			name: "syntax error",
			file: "workers = 2\nbind = [\"a\"\n",
			want: []string{`baton.toml:2: expected a comma (',') or array terminator (']'), but got end of file`},
		},
		{
			name: "duplicate key",
			file: "workers = 2\nworkers = 3\n",
			want: []string{`baton.toml:2: Key 'workers' has already been defined.`},
		},
		{
			name: "missing file",
			args: []string{"-c", "DIR/nope.toml"},
			want: []string{`nope.toml: cannot read the config file: no such file or directory`},
		},
		{
			name: "unknown key with suggestion",
			file: "workers = 2\n\n\n\n\n\nwrokers = 3\n",
			want: []string{`baton.toml:7: unknown key "wrokers" (did you mean "workers"?)`},
		},
		{
			name: "unknown key spelled as the flag",
			file: "graceful-timeout = 3\n",
			want: []string{`baton.toml:1: unknown key "graceful-timeout" (did you mean "graceful_timeout"?)`},
		},
		{
			name: "unknown key without suggestion",
			file: "\nfrobnicate = true\n",
			want: []string{`baton.toml:2: unknown key "frobnicate"`},
		},
		{
			name: "cgroup neither a mode nor an absolute path",
			file: "cgroup = \"sometimes\"\n",
			want: []string{`baton.toml:1: cgroup: expected auto, off or an absolute cgroup path such as /baton/app, got "sometimes"`},
		},
		{
			name: "cgroup path climbing out",
			args: []string{"--cgroup", "/baton/../x"},
			want: []string{`--cgroup: expected auto, off or an absolute cgroup path such as /baton/app, got "/baton/../x"`},
		},
		{
			name: "wrong type",
			file: "\n\nworkers = \"four\"\n",
			want: []string{`baton.toml:3: workers: expected an integer, got a string ("four")`},
		},
		{
			name: "out of range",
			file: "\n\nworkers = 0\n",
			want: []string{`baton.toml:3: workers: expected an integer ≥ 1, got 0`},
		},
		{
			name: "float for integer",
			file: "backlog = 2.0\n",
			want: []string{`baton.toml:1: backlog: expected an integer, got a float (2.0)`},
		},
		{
			name: "bind without port",
			file: "\nbind = [\"127.0.0.1\"]\n",
			want: []string{`baton.toml:2: bind: "127.0.0.1" has no port: expected HOST:PORT, [V6]:PORT, :PORT, unix:PATH, fd://N, systemd or systemd:NAME`},
		},
		{
			name: "bind item not a string",
			file: fmt.Sprintf("bind = [\n  \"localhost\",\n  \"1.2.3.4:99999\",\n  \"fd://1\",\n  \"unix:%s\",\n  8000,\n]\n", long),
			want: []string{
				`baton.toml:1: bind: item 5: expected a string, got an integer (8000)`,
			},
		},
		{
			name: "bad binds, each reported",
			file: fmt.Sprintf("bind = [\"localhost\", \"1.2.3.4:99999\", \"fd://1\", \"unix:%s\"]\n", long),
			want: []string{
				`baton.toml:1: bind: "localhost" has no port: expected HOST:PORT, [V6]:PORT, :PORT, unix:PATH, fd://N, systemd or systemd:NAME`,
				`baton.toml:1: bind: "1.2.3.4:99999": port 99999 is out of range: expected 0 to 65535`,
				`baton.toml:1: bind: "fd://1": fd 1 is baton's stdout, not an inherited listener: expected fd://N with N ≥ 3`,
				`baton.toml:1: bind: "unix:` + long + `": unix socket path is 200 bytes, the limit is 107`,
			},
		},
		{
			name: "duplicate bind name and address",
			args: []string{"-b", "web=:8000", "-b", "web=:8001", "-b", "127.0.0.1:8002", "-b", "x=127.0.0.1:8002"},
			want: []string{
				`--bind: "web=:8000" and "web=:8001" have the same name "web"`,
				`--bind: "127.0.0.1:8002" and "x=127.0.0.1:8002" are the same address`,
			},
		},
		{
			name: "empty bind list",
			file: "bind = []\n",
			want: []string{`baton.toml:1: bind: expected at least one address to listen on, got none`},
		},
		{
			name: "unix_mode in decimal",
			file: "unix_mode = 660\n",
			want: []string{`baton.toml:1: unix_mode: expected permission bits up to 0o777, got 660 (0o1224): write them in octal, as "0660" or 0o660`},
		},
		{
			name: "unix_mode too big",
			args: []string{"--unix-mode", "1777"},
			want: []string{`--unix-mode: expected octal permission bits up to 0777, like "0660", got "1777"`},
		},
		{
			name: "bad durations",
			file: "graceful_timeout = \"5 s\"\n",
			args: []string{"--graceful-timeout", "-3"},
			want: []string{
				`baton.toml:1: graceful_timeout: expected a duration ("30s", "1m30s") or a number of seconds, got "5 s"`,
				`--graceful-timeout: expected a duration ≥ 0, got -3`,
			},
		},
		{
			name: "bad shutdown_delay",
			file: "workers = 2\nshutdown_delay = \"-5s\"\n",
			args: []string{"--shutdown-delay", "soon"},
			want: []string{
				`baton.toml:2: shutdown_delay: expected a duration ≥ 0, got "-5s"`,
				`--shutdown-delay: expected a duration ("30s", "1m30s") or a number of seconds, got "soon"`,
			},
		},
		{
			name: "duration of wrong type",
			file: "graceful_timeout = true\n",
			want: []string{`baton.toml:1: graceful_timeout: expected a duration ("30s", "1m30s") or a number of seconds, got a boolean (true)`},
		},
		{
			name: "signals",
			file: "stop_signal = 15\n",
			args: []string{"--stop-signal", "SIGFOO"},
			want: []string{
				`baton.toml:1: stop_signal: expected a signal name (TERM, INT, QUIT, HUP, USR1, USR2, WINCH, KILL), got an integer (15)`,
				`--stop-signal: expected a signal name (TERM, INT, QUIT, HUP, USR1, USR2, WINCH, KILL), got "SIGFOO"`,
			},
		},
		{
			name: "choices",
			file: "log_level = \"verbose\"\nlog_format = \"xml\"\n",
			want: []string{
				`baton.toml:1: log_level: expected one of debug, info, warn, error, got "verbose"`,
				`baton.toml:2: log_format: expected one of text, json, got "xml"`,
			},
		},
		{
			name: "env entries on their own lines",
			file: "workers = 1\n[env]\nOK = \"1\"\nPORT = 8000\nLISTEN_FDS = \"2\"\n\"MY VAR\" = \"x\"\n",
			want: []string{
				`baton.toml:4: env.PORT: expected a string, got an integer (8000)`,
				`baton.toml:5: env.LISTEN_FDS: baton sets LISTEN_FDS itself, to the number of binds: remove it from env`,
				`baton.toml:6: env."MY VAR": "MY VAR" is not a valid environment variable name: expected letters, digits and _, not starting with a digit`,
			},
		},
		{
			name: "env dotted key",
			file: "workers = 1\nenv.NOTIFY_SOCKET = \"/run/x\"\n",
			want: []string{`baton.toml:2: env.NOTIFY_SOCKET: baton sets NOTIFY_SOCKET itself, to a socket of its own for each worker: remove it from env`},
		},
		{
			name: "env not a table",
			file: "env = \"A=1\"\n",
			want: []string{`baton.toml:1: env: expected a table of NAME = "value", got a string ("A=1")`},
		},
		{
			name: "env flags",
			args: []string{"-e", "DEBUG", "-e", "1X=2", "-e", "LISTEN_PID=1"},
			want: []string{
				`--env: expected NAME=VALUE, got "DEBUG"`,
				`--env: "1X=2": "1X" is not a valid environment variable name: expected letters, digits and _, not starting with a digit`,
				`--env: "LISTEN_PID=1": baton sets LISTEN_PID itself, to each worker's pid: remove it from env`,
			},
		},
		{
			name:    "no command",
			command: []string{},
			want:    []string{`command: no worker command: give it after "--" (baton run -- uvicorn --fd 3 app:app) or as command = [...] in the config file`},
		},
		{
			name:    "command as a string",
			file:    "command = \"uvicorn app:app\"\n",
			command: []string{},
			want:    []string{`baton.toml:1: command: expected an array of strings, like ["uvicorn", "--fd", "3", "app:app"], got a string ("uvicorn app:app")`},
		},
		{
			name:    "command with an empty program",
			command: []string{"", "x"},
			want:    []string{`command: the program to run (the first word) is empty`},
		},
		{
			name:    "command not in PATH",
			file:    "env = { PATH = \"DIR/bin\" }\n",
			command: []string{"uvicron", "app:app"},
			want:    []string{`command: "uvicron" not found in PATH (env sets PATH="bin")`},
		},
		{
			name:    "command in the file, not in PATH",
			file:    "\ncommand = [\"uvicron\"]\nenv = { PATH = \"DIR/bin\" }\n",
			command: []string{},
			want:    []string{`baton.toml:2: command: "uvicron" not found in PATH (env sets PATH="bin")`},
		},
		{
			name:    "command relative to chdir, missing",
			args:    []string{"--chdir", "DIR"},
			command: []string{"./nope"},
			want:    []string{`command: "./nope" (nope) does not exist`},
		},
		{
			name:    "command is a directory",
			command: []string{"DIR"},
			want:    []string{`command: "DIR" is a directory`},
		},
		{
			name:    "command not executable",
			args:    []string{"--chdir", "DIR"},
			command: []string{"./baton.toml"},
			file:    "workers = 1\n",
			want:    []string{`command: "./baton.toml" (baton.toml) is not executable (mode -rw-r--r--)`},
		},
		{
			name: "chdir missing",
			file: "\n\nchdir = \"DIR/nope\"\n",
			want: []string{`baton.toml:3: chdir: directory "nope" does not exist`},
		},
		{
			name: "chdir not a directory",
			args: []string{"--chdir", "DIR/app"},
			want: []string{`--chdir: "app" is not a directory`},
		},
		{
			name: "chdir overridden by a flag is not checked",
			file: "chdir = \"DIR/nope\"\n",
			args: []string{"--chdir", "DIR"},
			want: nil,
		},
		{
			name:    "command is not resolved against a bad chdir",
			file:    "chdir = 5\n",
			command: []string{"./app"},
			want:    []string{`baton.toml:1: chdir: expected a string, got an integer (5)`},
		},
		{
			name: "pid and log file directories",
			args: []string{"--pid", "DIR/nope/baton.pid", "--log-file", "DIR"},
			want: []string{
				`--pid: cannot create "nope/baton.pid": directory "nope" does not exist`,
				`--log-file: "DIR" is a directory`,
			},
		},
		{
			name: "wrong flag values",
			args: []string{"-w", "four", "--backlog", "0"},
			want: []string{ // in the order of the keys table
				`--backlog: expected an integer ≥ 1, got 0`,
				`--workers: expected an integer, got "four"`,
			},
		},
		{
			name: "NUL bytes",
			args: []string{"--pid", "a\x00b"},
			want: []string{`--pid: "a\x00b" contains a NUL byte`},
		},
		{
			name: "several problems at once, in order",
			file: "workers = \"four\"\nbind = [\"127.0.0.1\"]\nwrokers = 3\nlog_level = \"loud\"\n",
			args: []string{"--backlog", "-1", "-e", "X"},
			want: []string{
				`baton.toml:1: workers: expected an integer, got a string ("four")`,
				`baton.toml:2: bind: "127.0.0.1" has no port: expected HOST:PORT, [V6]:PORT, :PORT, unix:PATH, fd://N, systemd or systemd:NAME`,
				`baton.toml:3: unknown key "wrokers" (did you mean "workers"?)`,
				`baton.toml:4: log_level: expected one of debug, info, warn, error, got "loud"`,
				`--backlog: expected an integer ≥ 1, got -1`,
				`--env: expected NAME=VALUE, got "X"`,
			},
		},
		{
			name: "preload with a command that is not Python",
			file: "preload = [\"proj.asgi\"]\n",
			want: []string{`baton.toml:1: preload: preload needs a Python worker command; "app" is not a Python interpreter and app is a script for /bin/sh (#!/bin/sh), not for Python`},
		},
		{
			name:    "preload of a file path",
			args:    []string{"--preload", "proj/asgi.py"},
			command: []string{"/usr/bin/python3", "-m", "uvicorn"},
			want:    []string{`--preload: "proj/asgi.py" is not a Python module name (expected dotted names such as "proj.asgi"; give the module, not a file path or "module:attribute")`},
		},
		{
			name:    "preload without the subreaper",
			file:    "preload = [\"app\"]\nsubreaper = false\n",
			command: []string{"/usr/bin/python3", "-m", "uvicorn"},
			want:    []string{`baton.toml:1: preload: preload needs subreaper = true: the workers a template forks must become baton's own children`},
		},
		{
			name:    "preload with a Python command",
			file:    "preload = [\"app\", \"proj.settings\"]\n",
			command: []string{"/usr/bin/python3", "-m", "uvicorn", "--fd", "3", "app:app"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := newTestDir(t)
			fill := func(s string) string {
				return strings.ReplaceAll(strings.ReplaceAll(s, "APP", d.app()), "DIR", d.path)
			}
			var args []string
			if tt.file != "" {
				args = append(args, "-c", d.config(fill(tt.file)))
			}
			for _, a := range tt.args {
				args = append(args, fill(a))
			}
			command := []string{d.app()}
			if tt.command != nil {
				command = nil
				for _, a := range tt.command {
					command = append(command, fill(a))
				}
			}
			if tt.want == nil {
				d.mustLoad(args, command...)
				return
			}
			got := d.problems(args, command...)
			want := slices.Clone(tt.want)
			for i := range want {
				// Paths to the test's directory appear relative to it.
				want[i] = strings.ReplaceAll(want[i], `"DIR"`, fmt.Sprintf("%q", d.path))
			}
			if !slices.Equal(got, want) {
				t.Errorf("problems:\n got %s\nwant %s", strings.Join(got, "\n     "), strings.Join(want, "\n     "))
			}
		})
	}
}

// TestProblemFields checks the fields, not just the text, of problems.
func TestProblemFields(t *testing.T) {
	t.Parallel()
	d := newTestDir(t)
	path := d.config("\nworkers = 0\n[env]\nLISTEN_PID = \"1\"\n")
	_, err := d.load([]string{"-c", path, "--backlog", "x"}, d.app())
	want := Problems{
		{File: path, Line: 2, Key: "workers", Msg: "expected an integer ≥ 1, got 0"},
		{File: path, Line: 4, Key: "env.LISTEN_PID", Msg: "baton sets LISTEN_PID itself, to each worker's pid: remove it from env"},
		{Key: "--backlog", Msg: `expected an integer, got "x"`},
	}
	if !reflect.DeepEqual(err, want) {
		t.Errorf("got %#v\nwant %#v", err, want)
	}
}

func TestProblemError(t *testing.T) {
	t.Parallel()
	tests := []struct {
		p    Problem
		want string
	}{
		{Problem{File: "baton.toml", Line: 3, Key: "workers", Msg: "m"}, "baton.toml:3: workers: m"},
		{Problem{File: "baton.toml", Key: "workers", Msg: "m"}, "baton.toml: workers: m"},
		{Problem{File: "baton.toml", Line: 7, Msg: "m"}, "baton.toml:7: m"},
		{Problem{Key: "--workers", Msg: "m"}, "--workers: m"},
		{Problem{Msg: "m"}, "m"},
	}
	for _, tt := range tests {
		if got := tt.p.Error(); got != tt.want {
			t.Errorf("%#v.Error() = %q, want %q", tt.p, got, tt.want)
		}
	}
	ps := Problems{tests[0].p, tests[3].p}
	if got, want := ps.Error(), "baton.toml:3: workers: m\n--workers: m"; got != want {
		t.Errorf("Problems.Error() = %q, want %q", got, want)
	}
}

// TestCommandSearchesBatonPATH uses baton's own PATH, so it cannot run in
// parallel with other tests.
func TestCommandSearchesBatonPATH(t *testing.T) {
	d := newTestDir(t)
	bin := filepath.Join(d.path, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	d.write("bin/notexec", "", 0o644)
	d.write("bin/prog", "", 0o755)
	t.Setenv("PATH", d.path+"/empty:"+bin)

	if c := d.mustLoad(nil, "prog"); c.CommandPath != filepath.Join(bin, "prog") {
		t.Errorf("CommandPath = %q, want %q", c.CommandPath, filepath.Join(bin, "prog"))
	}
	tests := []struct {
		command string
		want    string
	}{
		{"uvicron", `command: "uvicron" not found in PATH`},
		{"notexec", `command: "notexec" was found in PATH as bin/notexec, but it is not executable (mode -rw-r--r--)`},
	}
	for _, tt := range tests {
		got := d.problems(nil, tt.command)
		if len(got) != 1 || got[0] != tt.want {
			t.Errorf("command %q: got %q, want %q", tt.command, got, tt.want)
		}
	}
}

func TestCommandPathRelativeToChdir(t *testing.T) {
	t.Parallel()
	d := newTestDir(t)
	// A relative PATH entry is relative to chdir, as for execvp in the worker.
	path := d.config(fmt.Sprintf("chdir = %q\nenv = { PATH = \".\" }\n", d.path))
	for _, program := range []string{"./app", "app", d.app()} {
		if got := d.mustLoad([]string{"-c", path}, program).CommandPath; got != d.app() {
			t.Errorf("program %q: CommandPath = %q, want %q", program, got, d.app())
		}
	}
}

func TestTOMLRoundTrip(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		file string
		args []string
	}{
		{name: "defaults"},
		{
			name: "everything set",
			file: `
bind = ["admin=127.0.0.1:9000", "[::1]:8000", ":0", ":0", "unix:DIR/x=y.sock", "fd://3", "unix:///run/x"]
backlog = 16
unix_mode = 0o600
workers = 3
chdir = "DIR"
graceful_timeout = 0.1
stop_signal = "sigwinch"
pid = "DIR/b.pid"
log_level = "error"
log_format = "json"
log_file = "DIR/b.log"
unix_owner = "UID"
metrics_bind = "127.0.0.1:9100"
watch = ["DIR"]
env.QUOTES = "a \"b\" \\ c\n\td\u0001é"
env.EMPTY = ""
`,
			args: []string{"-e", "X=1", "-w", "5"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := newTestDir(t)
			var args []string
			if tt.file != "" {
				file := strings.NewReplacer("DIR", d.path, "UID", strconv.Itoa(os.Getuid())).Replace(tt.file)
				args = append(args, "-c", d.config(file))
			}
			first := d.mustLoad(append(args, tt.args...), d.app(), "--arg", `"quoted"`)
			text := first.TOML()
			// What `baton check` prints, StartOnly keys' comments included.
			if n := strings.Count(text, restartComment); n != len(first.StartOnlySettings()) {
				t.Errorf("%d lines end with %q, want one per StartOnly key:\n%s", n, restartComment, text)
			}
			path := d.write("effective.toml", text, 0o644)
			second := d.mustLoad([]string{"-c", path})
			if second.Source() != path {
				t.Errorf("Source() = %q, want %q", second.Source(), path)
			}
			first.source, second.source = "", ""
			if !reflect.DeepEqual(first, second) {
				t.Errorf("round trip through\n%s\n got %+v\nwant %+v", text, *second, *first)
			}
		})
	}
}

func TestTOMLText(t *testing.T) {
	t.Parallel()
	c := defaults("/usr/bin/uvicorn", "--fd", "3", "app:app")
	c.Env = map[string]string{"B": "2", "A": "1"}
	want := `# baton: effective configuration
# "restart to change": a reload that changes the key is refused; restart baton to apply it
bind = ["127.0.0.1:8000"]  # restart to change
backlog = 2048  # restart to change
unix_mode = "0660"  # restart to change
workers = 1
command = ["/usr/bin/uvicorn", "--fd", "3", "app:app"]
chdir = ""
env = { A = "1", B = "2" }
listen_env = true
stop_signal = "TERM"
graceful_timeout = "30s"
shutdown_delay = "0s"
timeout = "30s"
ready = "auto"
boot_timeout = "1m0s"
reload_strategy = "surge"
max_surge = 1
drain_unlisten = true
boot_nice = true
max_worker_memory = 0
max_worker_age = "0s"
max_worker_age_jitter = "0s"
user = ""
group = ""
unix_owner = ""  # restart to change
watch = []
watch_ignore = []
subreaper = true
preload = []
cgroup = "auto"  # restart to change
upgrade_mode = "reexec"
upgrade_handover = "auto"
pid = ""  # restart to change
control = ""
metrics_bind = ""
log_level = "info"
log_format = "text"  # restart to change
log_file = ""  # restart to change
`
	if got := c.TOML(); got != want {
		t.Errorf("TOML():\n%s\nwant:\n%s", got, want)
	}
}

func TestRegisterFlags(t *testing.T) {
	t.Parallel()
	d := newTestDir(t)
	fs := d.flagSet()
	for _, k := range keys {
		f := fs.Lookup(k.flagName())
		if k.flag == flagNone {
			if f != nil {
				t.Errorf("%s: has flag --%s, want none", k.name, k.flagName())
			}
			continue
		}
		if f == nil {
			t.Errorf("%s: no flag --%s", k.name, k.flagName())
			continue
		}
		if f.Shorthand != k.short || f.DefValue != k.def {
			t.Errorf("--%s: shorthand %q default %q, want %q %q", k.flagName(), f.Shorthand, f.DefValue, k.short, k.def)
		}
	}
	if f := fs.ShorthandLookup("c"); f == nil || f.Name != "config" {
		t.Errorf("-c is %v, want --config", f)
	}
}

func TestLoadTwiceFromSameFlags(t *testing.T) {
	t.Parallel()
	// A reload loads again from the same, already parsed, flags.
	d := newTestDir(t)
	fs := d.flagSet()
	if err := fs.Parse([]string{"-b", ":9000", "-e", "A=1"}); err != nil {
		t.Fatal(err)
	}
	first, err := Load(fs, []string{d.app()})
	if err != nil {
		t.Fatal(err)
	}
	second, err := Load(fs, []string{d.app()})
	if err != nil {
		t.Fatal(err)
	}
	assertConfig(t, second, first)
}

func TestSuggest(t *testing.T) {
	t.Parallel()
	tests := map[string]string{
		"wrokers":     "workers",
		"worker":      "workers",
		"Workers":     "workers",
		"stopsignal":  "stop_signal",
		"log-level":   "log_level",
		"binds":       "bind",
		"pd":          "pid",
		"ab":          "",
		"timeot":      "timeout",
		"daemonize":   "",
		"environment": "",
	}
	for unknown, want := range tests {
		if got := suggest(unknown, keyNames()); got != want {
			t.Errorf("suggest(%q) = %q, want %q", unknown, got, want)
		}
	}
}

// TestWrongTypes checks how each kind of TOML value is named in problems.
func TestWrongTypes(t *testing.T) {
	t.Parallel()
	tests := []struct{ file, want string }{
		{"workers = true", `baton.toml:1: workers: expected an integer, got a boolean (true)`},
		{"workers = [1]", `baton.toml:1: workers: expected an integer, got an array`},
		{"workers = { n = 1 }", `baton.toml:1: workers: expected an integer, got a table`},
		{"workers = 1979-05-27", `baton.toml:1: workers: expected an integer, got a datetime`},
		{"[[workers]]\nn = 1", `baton.toml:1: workers: expected an integer, got an array of tables`},
		{"[workers]\nn = 1", `baton.toml:1: workers: expected an integer, got a table`},
		{"pid = 1", `baton.toml:1: pid: expected a string, got an integer (1)`},
		{"unix_mode = 1.5", `baton.toml:1: unix_mode: expected octal permission bits ("0660" or 0o660), got a float (1.5)`},
		{"bind = 8000", `baton.toml:1: bind: expected an array of addresses, like ["127.0.0.1:8000"], got an integer (8000)`},
		{"command = []", `baton.toml:1: command: expected at least the program to run, like ["uvicorn", "--fd", "3", "app:app"], got []`},
		{"command = [\"a\", 1]", `baton.toml:1: command: item 2: expected a string, got an integer (1)`},
		{"graceful_timeout = nan", `baton.toml:1: graceful_timeout: expected a number of seconds, got NaN`},
		{"graceful_timeout = -1", `baton.toml:1: graceful_timeout: expected a duration ≥ 0, got -1`},
		{"graceful_timeout = \"-1s\"", `baton.toml:1: graceful_timeout: expected a duration ≥ 0, got "-1s"`},
		{"graceful_timeout = 1e300", `baton.toml:1: graceful_timeout: expected a duration of at most 9223372036 seconds, got 1e+300`},
		{"env = { A = { B = \"x\" } }", `baton.toml:1: env.A: expected a string, got a table`},
		{"\n[other.sub]\nx = 1", `baton.toml:2: unknown key "other"`},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			t.Parallel()
			d := newTestDir(t)
			got := d.problems([]string{"-c", d.config(tt.file + "\n")}, d.app())
			if len(got) != 1 || got[0] != tt.want {
				t.Errorf("got  %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestReadinessForms(t *testing.T) {
	t.Parallel()
	d := newTestDir(t)
	for _, tt := range []struct {
		given string
		want  Readiness
	}{
		{"auto", Readiness{Mode: "auto"}},
		{"notify", Readiness{Mode: "notify"}},
		{"delay:1.5s", Readiness{Mode: "delay", Delay: 1500 * time.Millisecond}},
		{"delay:3", Readiness{Mode: "delay", Delay: 3 * time.Second}},
	} {
		if got := d.mustLoad([]string{"--ready", tt.given}, d.app()).Ready; got != tt.want {
			t.Errorf("--ready %s: got %+v, want %+v", tt.given, got, tt.want)
		}
	}
}

func TestBadReloadSettingsAreReportedTogether(t *testing.T) {
	t.Parallel()
	d := newTestDir(t)
	got := strings.Join(d.problems([]string{"--ready", "sometimes", "--reload-strategy", "yolo", "--max-surge", "0", "--boot-timeout", "soon"}, d.app()), "\n")
	for _, want := range []string{
		`--ready: expected "auto", "notify" or "delay:DURATION" (delay:2s), got "sometimes"`,
		`--reload-strategy: expected one of surge, rolling, got "yolo"`,
		`--max-surge: expected an integer ≥ 1, got 0`,
		`--boot-timeout: expected a duration`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("problems lack %q:\n%s", want, got)
		}
	}
}

func TestListenEnvFlagForms(t *testing.T) {
	t.Parallel()
	d := newTestDir(t)
	for args, want := range map[string]bool{"": true, "--listen-env": true, "--listen-env=false": false, "--listen-env=0": false} {
		var argv []string
		if args != "" {
			argv = []string{args}
		}
		if got := d.mustLoad(argv, d.app()).ListenEnv; got != want {
			t.Errorf("%q: ListenEnv = %v, want %v", args, got, want)
		}
	}
	got := strings.Join(d.problems([]string{"--listen-env=maybe"}, d.app()), "\n")
	if !strings.Contains(got, `--listen-env: expected true or false, got "maybe"`) {
		t.Errorf("problems = %s", got)
	}
}

func TestRunAsResolvesNamesAndIDs(t *testing.T) {
	t.Parallel()
	d := newTestDir(t)
	if os.Geteuid() != 0 {
		got := strings.Join(d.problems([]string{"--user", "root"}, d.app()), "\n")
		if !strings.Contains(got, "needs baton to run as root") {
			t.Errorf("--user as non-root: %s", got)
		}
		return
	}
	d.openToAll() // the workers' user must reach the app
	c := d.mustLoad([]string{"--user", "nobody", "--unix-owner", "nobody:0"}, d.app())
	if c.RunAsUID != 65534 || c.RunAsGID != 65534 || c.UnixUID != 65534 || c.UnixGID != 0 {
		t.Errorf("nobody: run as %d:%d, unix owner %d:%d", c.RunAsUID, c.RunAsGID, c.UnixUID, c.UnixGID)
	}
	c = d.mustLoad([]string{"--user", "65534", "--group", "0"}, d.app())
	if c.RunAsUID != 65534 || c.RunAsGID != 0 {
		t.Errorf("ids: run as %d:%d", c.RunAsUID, c.RunAsGID)
	}
	got := strings.Join(d.problems([]string{"--user", "no-such-user-xyz", "--unix-owner", "root:no-such-group-xyz"}, d.app()), "\n")
	for _, want := range []string{`--user: no such user "no-such-user-xyz"`, `no such group "no-such-group-xyz"`} {
		if !strings.Contains(got, want) {
			t.Errorf("problems lack %q:\n%s", want, got)
		}
	}
}

func TestSizes(t *testing.T) {
	t.Parallel()
	for text, want := range map[string]uint64{"512MiB": 512 << 20, "1GiB": 1 << 30, "300MB": 300e6, "1.5G": 3 << 29, "4096": 4096, "0": 0} {
		if got, err := parseSize(text); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", text, got, err, want)
		}
	}
	for _, bad := range []string{"lots", "-1MiB", "12 parsecs"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) accepted", bad)
		}
	}
}
