package config

import (
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// wantLifetimes is every key's lifetime, as issue 14 decided them. A new key
// must be added here too, on purpose.
var wantLifetimes = map[string]Lifetime{
	"workers": PerGeneration, "command": PerGeneration, "chdir": PerGeneration,
	"env": PerGeneration, "listen_env": PerGeneration, "stop_signal": PerGeneration,
	"graceful_timeout": PerGeneration, "timeout": PerGeneration, "ready": PerGeneration,
	"boot_timeout": PerGeneration, "reload_strategy": PerGeneration, "max_surge": PerGeneration,
	"drain_unlisten": PerGeneration, "max_worker_memory": PerGeneration, "max_worker_age": PerGeneration,
	"max_worker_age_jitter": PerGeneration, "user": PerGeneration, "group": PerGeneration,

	"boot_nice": Reapplied, "watch": Reapplied, "watch_ignore": Reapplied, "subreaper": Reapplied, "cgroup": StartOnly, "preload": PerGeneration,
	"shutdown_delay": Reapplied, "upgrade_handover": Reapplied, "upgrade_mode": Reapplied, "control": Reapplied, "metrics_bind": Reapplied, "log_level": Reapplied,

	"bind": StartOnly, "backlog": StartOnly, "unix_mode": StartOnly, "unix_owner": StartOnly,
	"pid": StartOnly, "log_format": StartOnly, "log_file": StartOnly,
}

func TestEveryKeyHasALifetime(t *testing.T) {
	t.Parallel()
	for _, k := range keys {
		if !k.lifetime.valid() {
			t.Errorf("%s: lifetime %v: every key needs PerGeneration, Reapplied or StartOnly", k.name, k.lifetime)
		}
	}
}

func TestKeyLifetimes(t *testing.T) {
	t.Parallel()
	list := KeyLifetimes()
	got := map[string]Lifetime{}
	for i, kl := range list {
		if kl.Key != keys[i].name {
			t.Errorf("KeyLifetimes()[%d] is %s, want %s (the keys table's order)", i, kl.Key, keys[i].name)
		}
		got[kl.Key] = kl.Lifetime
	}
	if len(list) != len(keys) || !reflect.DeepEqual(got, wantLifetimes) {
		t.Errorf("KeyLifetimes():\n got %v\nwant %v", got, wantLifetimes)
	}
}

func TestLifetimeString(t *testing.T) {
	t.Parallel()
	for l, want := range map[Lifetime]string{
		PerGeneration: "next generation",
		Reapplied:     "re-applied",
		StartOnly:     "restart",
		lifetimeUnset: "Lifetime(0)",
		StartOnly + 1: "Lifetime(4)",
	} {
		if got := l.String(); got != want {
			t.Errorf("Lifetime(%d).String() = %q, want %q", int(l), got, want)
		}
		if got, want := l.valid(), l >= PerGeneration && l <= StartOnly; got != want {
			t.Errorf("Lifetime(%d).valid() = %t", int(l), got)
		}
	}
}

func TestStartOnlySettings(t *testing.T) {
	t.Parallel()
	want := map[string]string{
		"bind":       `["127.0.0.1:8000"]`,
		"backlog":    "2048",
		"unix_mode":  `"0660"`,
		"unix_owner": `""`,
		"pid":        `""`,
		"log_format": `"text"`,
		"log_file":   `""`,
		"cgroup":     `"auto"`,
	}
	if got := defaults("/bin/app").StartOnlySettings(); !reflect.DeepEqual(got, want) {
		t.Errorf("defaults: StartOnlySettings():\n got %v\nwant %v", got, want)
	}

	// Each value is what TOML (and so `baton check`) writes on the key's line.
	d := newTestDir(t)
	c := d.mustLoad([]string{"-b", "api=unix:" + d.path + "/a.sock", "-b", ":0", "--backlog", "16",
		"--unix-mode", "600", "--pid", d.path + "/b.pid", "--log-format", "json"}, d.app())
	settings := c.StartOnlySettings()
	for name, lifetime := range wantLifetimes {
		if _, ok := settings[name]; ok != (lifetime == StartOnly) {
			t.Errorf("StartOnlySettings()[%s] present: %t, lifetime %v", name, ok, lifetime)
		}
	}
	for _, line := range strings.Split(c.TOML(), "\n") {
		name, rest, _ := strings.Cut(line, " = ")
		if value, ok := settings[name]; ok && rest != value+restartComment {
			t.Errorf("TOML writes %q, StartOnlySettings()[%s] = %q", line, name, value)
		}
	}
	if got, want := settings["bind"], `["api=unix:`+d.path+`/a.sock", ":0"]`; got != want {
		t.Errorf("bind: %s, want %s", got, want)
	}
}

func TestDescribeChanges(t *testing.T) {
	t.Parallel()
	start := defaults("/bin/app").StartOnlySettings()
	with := func(changes ...string) map[string]string {
		m := map[string]string{}
		for name, value := range start {
			m[name] = value
		}
		for i := 0; i < len(changes); i += 2 {
			m[changes[i]] = changes[i+1]
		}
		return m
	}
	tests := []struct {
		name          string
		before, after map[string]string
		want          []string
	}{
		{name: "nothing changed", before: start, after: with(), want: nil},
		{name: "both empty", before: nil, after: map[string]string{}, want: nil},
		// A bind list that stays the same while its sockets' settings change
		// must say which setting changed, not "[X] -> [X]".
		{name: "backlog", before: start, after: with("backlog", "4096"), want: []string{"backlog: 2048 -> 4096"}},
		{name: "unix_mode", before: start, after: with("unix_mode", `"0600"`), want: []string{`unix_mode: "0660" -> "0600"`}},
		{name: "unix_owner", before: start, after: with("unix_owner", `"www-data"`), want: []string{`unix_owner: "" -> "www-data"`}},
		{
			name: "several, in the keys table's order", before: start,
			after: with("log_file", `"/var/log/b.log"`, "bind", `[":9000"]`, "pid", `"/run/b.pid"`, "backlog", "16"),
			want: []string{
				`bind: ["127.0.0.1:8000"] -> [":9000"]`,
				"backlog: 2048 -> 16",
				`pid: "" -> "/run/b.pid"`,
				`log_file: "" -> "/var/log/b.log"`,
			},
		},
		{
			name:   "missing on one side, unknown names last",
			before: map[string]string{"zz": "1", "pid": `""`, "aa": "2"},
			after:  map[string]string{"backlog": "16", "pid": `""`, "aa": "3"},
			want:   []string{"backlog: (none) -> 16", "aa: 2 -> 3", "zz: 1 -> (none)"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := DescribeChanges(tt.before, tt.after); !slices.Equal(got, tt.want) {
				t.Errorf("DescribeChanges:\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}

// TestStartOnlyChangesThroughLoad is what a reload sees: the config at start
// and the re-read one differ in one start-only key, the rest untouched.
func TestStartOnlyChangesThroughLoad(t *testing.T) {
	t.Parallel()
	uid := strconv.Itoa(os.Getuid())
	tests := []struct {
		name string
		file string // the re-read config; the first one is bind = ["unix:DIR/a.sock"] only
		want []string
	}{
		{name: "unchanged", file: "", want: nil},
		{name: "backlog", file: "backlog = 4096", want: []string{"backlog: 2048 -> 4096"}},
		{name: "unix_mode", file: "unix_mode = 0o600", want: []string{`unix_mode: "0660" -> "0600"`}},
		{name: "unix_owner", file: "unix_owner = \"" + uid + "\"", want: []string{`unix_owner: "" -> "` + uid + `"`}},
		{name: "log_format", file: `log_format = "json"`, want: []string{`log_format: "text" -> "json"`}},
		{name: "per-generation and re-applied keys are not start-only", file: "workers = 4\nlog_level = \"debug\"", want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := newTestDir(t)
			bind := "bind = [\"unix:" + d.path + "/a.sock\"]\n"
			before := d.mustLoad([]string{"-c", d.config(bind)}, d.app())
			after := d.mustLoad([]string{"-c", d.config(bind + tt.file + "\n")}, d.app())
			got := DescribeChanges(before.StartOnlySettings(), after.StartOnlySettings())
			if !slices.Equal(got, tt.want) {
				t.Errorf("DescribeChanges:\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}

// TestREADMELifetimes keeps README's Configuration table in step with the
// keys table: one row per key, its "reload" column the key's lifetime.
func TestREADMELifetimes(t *testing.T) {
	t.Parallel()
	text, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(text), "\n## Configuration\n")
	if !ok {
		t.Fatal("README.md has no Configuration section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	const header = "| key | flag | default | reload | meaning |"
	if !strings.Contains(section, "\n"+header+"\n") {
		t.Fatalf("README's Configuration table has no header %q", header)
	}
	rows := map[string]string{} // key -> reload column
	for _, line := range strings.Split(section, "\n") {
		cells := strings.SplitN(line, "|", 6) // the meaning, last, may hold anything
		if len(cells) < 6 || !strings.HasPrefix(strings.TrimSpace(cells[1]), "`") {
			continue
		}
		name := strings.Trim(strings.TrimSpace(cells[1]), "`")
		if _, dup := rows[name]; dup {
			t.Errorf("README: key %s has two rows", name)
		}
		rows[name] = strings.TrimSpace(cells[4])
	}
	for _, kl := range KeyLifetimes() {
		got, ok := rows[kl.Key]
		switch {
		case !ok:
			t.Errorf("README: no row for key %s", kl.Key)
		case got != kl.Lifetime.String():
			t.Errorf("README: key %s: reload %q, want %q", kl.Key, got, kl.Lifetime.String())
		}
		delete(rows, kl.Key)
	}
	for name := range rows {
		t.Errorf("README: row for %s, which is not a key", name)
	}
}
