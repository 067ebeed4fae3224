package main

import "testing"

func TestIsServer(t *testing.T) {
	for _, tc := range []struct {
		argv []string
		want bool
	}{
		{[]string{"/tmp/mem/baton-new2", "run", "-b", "127.0.0.1:1", "--", "uvicorn"}, true},
		{[]string{"baton", "demo"}, true},
		{[]string{"/usr/bin/python3", "/usr/bin/gunicorn", "app:app"}, true}, // a console script, as its interpreter runs it
		{[]string{"/usr/bin/gunicorn", "-k", "x", "app:app"}, true},
		{[]string{"/usr/bin/python3", "-m", "uvicorn", "--fd", "3"}, true},
		{[]string{"/usr/bin/python3", "/run/baton-forkserver-1/forkserver.py", "--preload", "app"}, true},
		{[]string{"baton", "status"}, false},
		{[]string{"bash", "bench/run"}, false},
		{[]string{"/usr/bin/python3", "-c", "print(1)"}, false},
	} {
		if got := isServer(tc.argv); got != tc.want {
			t.Errorf("isServer(%q) = %v, want %v", tc.argv, got, tc.want)
		}
	}
}
