package config

import (
	"strings"
	"testing"
)

// gunicorn's arbiter sends READY=1 before its workers import the app:
// ready = "notify" with it is warned about, placed where ready was set.
func TestWarnsOfReadyNotifyWithGunicorn(t *testing.T) {
	t.Parallel()
	d := newTestDir(t)
	d.write("gunicorn", "#!/bin/sh\n", 0o755)
	d.write("python3.11", "#!/bin/sh\n", 0o755)
	path := d.config("workers = 2\nready = \"notify\"\ncommand = [\"./gunicorn\", \"--bind\", \"fd://3\", \"app:app\"]\nchdir = \"" + d.path + "\"\n")

	c := d.mustLoad([]string{"-c", path})
	ws := c.Warnings()
	if len(ws) != 1 {
		t.Fatalf("warnings %q, want one about ready", ws)
	}
	w := ws[0]
	if w.File != path || w.Line != 2 || w.Key != "ready" {
		t.Errorf("warning placed at %s:%d key %q, want %s:2 key ready", w.File, w.Line, w.Key, path)
	}
	for _, want := range []string{"gunicorn", "READY=1 before", `ready = "auto"`} {
		if !strings.Contains(w.Msg, want) {
			t.Errorf("warning %q lacks %q", w.Msg, want)
		}
	}

	// The same from flags, with python -m gunicorn.
	c = d.mustLoad([]string{"--ready", "notify", "--chdir", d.path}, "./python3.11", "-u", "-W", "ignore", "-m", "gunicorn", "app:app")
	if ws := c.Warnings(); len(ws) != 1 || ws[0].Key != "--ready" {
		t.Errorf("python -m gunicorn: warnings %q, want one about --ready", ws)
	}
}

func TestNoWarningWithoutBothNotifyAndGunicorn(t *testing.T) {
	t.Parallel()
	d := newTestDir(t)
	d.write("gunicorn", "#!/bin/sh\n", 0o755)
	d.write("python3", "#!/bin/sh\n", 0o755)
	for _, tc := range []struct {
		args    []string
		command []string
	}{
		{nil, []string{"./gunicorn", "app:app"}},                                    // auto
		{[]string{"--ready", "delay:2s"}, []string{"./gunicorn", "app:app"}},        // delay
		{[]string{"--ready", "notify"}, []string{"./app"}},                          // another server
		{[]string{"--ready", "notify"}, []string{"./python3", "gunicorn.py"}},       // a script
		{[]string{"--ready", "notify"}, []string{"./python3", "-m", "uvicorn"}},     // another module
		{[]string{"--ready", "notify"}, []string{"./python3", "-c", "-m gunicorn"}}, // a command
	} {
		if ws := d.mustLoad(append(tc.args, "--chdir", d.path), tc.command...).Warnings(); len(ws) != 0 {
			t.Errorf("%q %q: warnings %q, want none", tc.args, tc.command, ws)
		}
	}
}
