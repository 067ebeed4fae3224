package main

import (
	"strings"
	"testing"
	"time"
)

// Lines as HAProxy 2.6 wrote them in a run of the rollout.
func TestParseLogLine(t *testing.T) {
	cases := []struct {
		line string
		ok   bool
		want lbEvent
	}{
		{"REQ h2 200 -- 0 1 1", true, lbEvent{Server: "h2", Status: 200, State: "--"}},
		{"REQ h1 502 SH 0 -1 4", true, lbEvent{Server: "h1", Status: 502, State: "SH"}},
		{"REQ h3 503 SC -1 -1 0", true, lbEvent{Server: "h3", Status: 503, State: "SC"}},
		{"REQ <NOSRV> 503 SC -1 -1 0", true, lbEvent{Server: "<NOSRV>", Status: 503, State: "SC"}},
		{`Server fleet/h1 is DOWN, reason: Layer7 wrong status, code: 503, info: "Service Unavailable", check duration: 11ms. 2 active and 0 backup servers left.`,
			true, lbEvent{Server: "h1", Change: "DOWN"}},
		{"Server fleet/h3 is UP, reason: Layer7 check passed, code: 200, check duration: 0ms. 3 active and 0 backup servers online.",
			true, lbEvent{Server: "h3", Change: "UP"}},
		{"[ALERT]    (6110) : backend 'fleet' has no server available!", false, lbEvent{}},
		{"Server fleet/h1 is going DOWN for maintenance.", false, lbEvent{}},
	}
	for _, c := range cases {
		got, ok := parseLogLine(c.line)
		got.Line = ""
		if ok != c.ok || got != c.want {
			t.Errorf("parseLogLine(%q) = %+v, %v; want %+v, %v", c.line, got, ok, c.want, c.ok)
		}
	}
}

// The first columns of `show stat` as HAProxy 2.6 answered (the real
// answer has about 100; the parser finds its columns by name).
const showStat = `# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act
fleet_in,FRONTEND,,,0,0,9985,0,0,0,0,0,0,,,,,OPEN,,
fleet,h1,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN,1,1
fleet,h2,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP 1/2,1,1
fleet,h3,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP,1,1
fleet,BACKEND,0,0,0,0,999,0,0,0,0,0,,0,0,0,0,UP,0,0

`

func TestParseShowStat(t *testing.T) {
	got, err := parseShowStat(showStat)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"h1": "DOWN", "h2": "UP 1/2", "h3": "UP"}
	if len(got) != len(want) {
		t.Fatalf("parseShowStat = %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("server %s: %q, want %q", k, got[k], v)
		}
	}
	if _, err := parseShowStat("Unknown command\n"); err == nil {
		t.Error("parseShowStat of an answer without a status column: no error")
	}
}

func TestParseIdentity(t *testing.T) {
	id, err := parseIdentity("h2 generation 3 master 4242 pid 4250\n")
	if err != nil || id != (identity{Host: "h2", Generation: 3, Master: 4242, Worker: 4250}) {
		t.Errorf("parseIdentity = %+v, %v", id, err)
	}
	for _, bad := range []string{"", "hello from pid 12", "h2 generation ? master 1 pid 2"} {
		if _, err := parseIdentity(bad); err == nil {
			t.Errorf("parseIdentity(%q): no error", bad)
		}
	}
}

func TestRestartTimeline(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	cases := []struct {
		s    step
		want string
	}{
		{step{At: t0, Down: at(1.3), Exited: at(3.3), Up: at(5.3)}, "HAProxy DOWN +1.3s, exited +3.3s, HAProxy UP again +5.3s"},
		{step{At: t0, Exited: at(0.2)}, "exited +0.2s; HAProxy never took it out"},
		{step{At: t0, Down: at(1.2), Exited: at(0.5), Up: at(3.2)}, "exited +0.5s; HAProxy took it out only +1.2s, UP again +3.2s"},
	}
	for _, c := range cases {
		if got := restartTimeline(c.s); !strings.HasPrefix(got, c.want) {
			t.Errorf("restartTimeline = %q, want it to start with %q", got, c.want)
		}
	}
}
