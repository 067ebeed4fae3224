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

// uvicorn and hypercorn serve from interpreters they spawn themselves with
// --workers N or --reload: preload with them shares nothing, and is warned
// about where preload was set.
func TestWarnsOfPreloadWithASpawningServer(t *testing.T) {
	t.Parallel()
	d := newTestDir(t)
	d.write("uvicorn", "#!/usr/bin/python3\n", 0o755)
	d.write("hypercorn", "#!/usr/bin/python3\n", 0o755)
	d.write("python3", "#!/bin/sh\n", 0o755)
	for _, tc := range []struct {
		command []string
		want    string // in the warning; "" for none
	}{
		{[]string{"./uvicorn", "--fd", "3", "--workers", "4", "app:app"}, "uvicorn --workers"},
		{[]string{"./uvicorn", "--fd", "3", "--workers=2", "app:app"}, "uvicorn --workers"},
		{[]string{"./uvicorn", "--fd", "3", "--reload", "app:app"}, "baton's --watch"},
		{[]string{"./python3", "-u", "-m", "uvicorn", "--fd", "3", "--reload", "app:app"}, "uvicorn --reload"},
		{[]string{"./hypercorn", "-w", "3", "--bind", "fd://3", "app:app"}, "hypercorn --workers"},
		{[]string{"./uvicorn", "--fd", "3", "--workers", "1", "app:app"}, ""},
		{[]string{"./uvicorn", "--fd", "3", "app:app"}, ""},
		{[]string{"./uvicorn", "--fd", "3", "-w", "3", "app:app"}, ""}, // not uvicorn's option
		{[]string{"./python3", "app.py", "--reload"}, ""},              // a script of its own
	} {
		c := d.mustLoad([]string{"--preload", "app", "--chdir", d.path}, tc.command...)
		ws := c.Warnings()
		if tc.want == "" {
			if len(ws) != 0 {
				t.Errorf("%q: warnings %q, want none", tc.command, ws)
			}
			continue
		}
		if len(ws) != 1 || ws[0].Key != "--preload" || !strings.Contains(ws[0].Msg, tc.want) || !strings.Contains(ws[0].Msg, "shares nothing") {
			t.Errorf("%q: warnings %q, want one on --preload naming %q", tc.command, ws, tc.want)
		}
	}

	// Placed at the file's line.
	path := d.config("workers = 2\npreload = [\"app\"]\ncommand = [\"./uvicorn\", \"--fd\", \"3\", \"--reload\", \"app:app\"]\nchdir = \"" + d.path + "\"\n")
	ws := d.mustLoad([]string{"-c", path}).Warnings()
	if len(ws) != 1 || ws[0].File != path || ws[0].Line != 2 || ws[0].Key != "preload" {
		t.Errorf("warnings %+v, want one at %s:2 key preload", ws, path)
	}
}
