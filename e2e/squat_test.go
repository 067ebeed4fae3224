package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/baton-pm/baton/internal/control"
)

// Issue 12, point 2: another user squats the victim's control socket path.
// The victim is nobody (no $XDG_RUNTIME_DIR, a /tmp of its own given as
// $TMPDIR, sticky and writable by all like /tmp); the squatter is daemon,
// running a fake master (this test binary, see init) that answers every
// reload with "generation 99".

var (
	victimCred   = &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}
	squatterCred = &syscall.Credential{Uid: 1, Gid: 1, Groups: []uint32{}}
)

// squatEnv, in the environment of this test binary, makes it a fake
// master on the socket path it names instead of running the tests;
// squatDirEnv makes it create the socket's directory first, open to all.
const (
	squatEnv    = "BATON_E2E_SQUAT"
	squatDirEnv = "BATON_E2E_SQUAT_MKDIR"
)

func init() {
	if path := os.Getenv(squatEnv); path != "" {
		os.Exit(fakeMaster(path, os.Getenv(squatDirEnv) != ""))
	}
}

// fakeMaster serves path like a baton master that says yes to everything,
// prints "SQUATTING" once it listens and a line per request it reads, and
// returns when its stdin closes.
func fakeMaster(path string, mkdir bool) int {
	if mkdir {
		if err := os.Mkdir(filepath.Dir(path), 0o777); err != nil {
			fmt.Println("MKDIR", err)
			return 2
		}
		os.Chmod(filepath.Dir(path), 0o777)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		fmt.Println("LISTEN", err)
		return 2
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false) // the test looks at it after
	os.Chmod(path, 0o666)                          // any victim may connect
	var mu sync.Mutex
	say := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Printf(format+"\n", args...)
	}
	say("SQUATTING")
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				line, err := bufio.NewReader(conn).ReadString('\n')
				if err != nil {
					return // connected and left without a request (a probe)
				}
				say("REQUEST %s", strings.TrimSpace(line))
				enc := json.NewEncoder(conn)
				now := time.Now()
				enc.Encode(control.Response{V: control.Version, Type: control.TypeDone,
					Reload: &control.ReloadResult{OK: true, Generation: 99, Started: now},
					Status: &control.Status{Pid: os.Getpid(), Generation: 99, Started: now}})
			}()
		}
	}()
	io.Copy(io.Discard, os.Stdin)
	ln.Close()
	return 0
}

// squatter is a fake master running as daemon.
type squatter struct {
	path  string
	stdin io.WriteCloser
	mu    sync.Mutex
	lines []string
	done  chan struct{} // closed when its output ends
}

// squat starts a fake master as daemon on path (making path's directory
// first when mkdir is true) and waits until it listens.
func squat(t *testing.T, path string, mkdir bool) *squatter {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(executableByAll(t, self))
	cmd.Env = append(cleanEnv(), squatEnv+"="+path)
	if mkdir {
		cmd.Env = append(cmd.Env, squatDirEnv+"=1")
	}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: squatterCred, Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &squatter{path: path, stdin: stdin, done: make(chan struct{})}
	listening := make(chan string, 1)
	go func() {
		defer close(s.done)
		sc := bufio.NewScanner(stdout)
		first := true
		for sc.Scan() {
			if first {
				listening <- sc.Text()
				first = false
				continue
			}
			s.mu.Lock()
			s.lines = append(s.lines, sc.Text())
			s.mu.Unlock()
		}
		if first {
			listening <- "(no output)"
		}
	}()
	t.Cleanup(func() {
		stdin.Close()
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
		}
		cmd.Wait()
	})
	select {
	case line := <-listening:
		if line != "SQUATTING" {
			t.Fatalf("the squatter (daemon) could not take %s: %s", path, line)
		}
	case <-time.After(startTimeout):
		t.Fatalf("the squatter did not start within %v", startTimeout)
	}
	return s
}

// requests are the request lines the squatter has read so far.
func (s *squatter) requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.lines...)
}

// assertUnbelieved checks that nobody sent the squatter a request and that
// its socket is still in place and its own.
func (s *squatter) assertUnbelieved(t *testing.T) {
	t.Helper()
	if reqs := s.requests(); len(reqs) > 0 {
		t.Errorf("the squatter at %s was sent requests: %q", s.path, reqs)
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(s.path, &st); err != nil || st.Uid != squatterCred.Uid {
		t.Errorf("the squatter's socket %s was removed or replaced (uid %d, %v)", s.path, st.Uid, err)
	}
}

// victimTmp is the victim's /tmp: sticky and writable by everyone, with
// a short path (a unix socket path has at most 107 bytes).
func victimTmp(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "baton-sq-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o1777); err != nil {
		t.Fatal(err)
	}
	return dir
}

// victimSpec runs baton as nobody, with tmp as $TMPDIR and nothing else
// to say where its control socket goes; args follow "run".
func victimSpec(t *testing.T, tmp string, args ...string) batonSpec {
	t.Helper()
	worker := executableByAll(t, testworkerBin)
	args = append(append([]string{"run"}, args...), "--", worker)
	return batonSpec{
		args:           args,
		env:            []string{"TMPDIR=" + tmp},
		bin:            executableByAll(t, batonBin),
		cred:           victimCred,
		defaultControl: true,
	}
}

// victimCLI runs a baton client command as nobody with tmp as $TMPDIR.
func victimCLI(t *testing.T, tmp string, args ...string) cliResult {
	t.Helper()
	return runCLI(t, victimCred, []string{"TMPDIR=" + tmp}, args...)
}

// refusal is the client's message for a control socket served by daemon.
func refusal(path, you string) string {
	return "baton: the control socket " + path + " is served by uid 1 (daemon), not by " + you + ": refusing to talk to it\n"
}

// The attack: daemon binds the path that used to be nobody's
// default control socket, $TMPDIR/baton-65534.sock. The victim's master
// no longer goes there: its default is in a directory of its own, made
// 0700, and its client commands find it there and reach it.
func TestSquattedOldDefaultPathIsNotUsed(t *testing.T) {
	t.Parallel()
	tmp := victimTmp(t)
	s := squat(t, filepath.Join(tmp, "baton-65534.sock"), false)

	spec := victimSpec(t, tmp)
	b := launch(t, spec)
	want := filepath.Join(tmp, "baton-65534", "baton.sock")
	if b.Control != want {
		t.Fatalf("the harness expects the victim's control socket at %s, want %s", b.Control, want)
	}
	b.waitLog(t, "control socket listening", func(r record) bool { return r.str("path") == want }, startTimeout)

	var st syscall.Stat_t
	if err := syscall.Lstat(filepath.Dir(want), &st); err != nil || st.Uid != victimCred.Uid || st.Mode&0o7777 != 0o700 || st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		t.Errorf("the victim's control socket directory: mode %#o, uid %d (%v); want a directory, 0700, nobody's", st.Mode, st.Uid, err)
	}
	r := victimCLI(t, tmp, "status", "--json")
	if r.code != 0 || !strings.Contains(r.stdout, fmt.Sprintf(`"pid": %d`, b.Pid)) {
		t.Fatalf("the victim's baton status: exit %d, %q; want its own master's status (pid %d)", r.code, r.stdout, b.Pid)
	}
	r = victimCLI(t, tmp, "reload")
	if r.code != 0 || !strings.Contains(r.stdout, "reload succeeded: generation 2 serves") {
		t.Errorf("the victim's baton reload: exit %d, stdout %q; want its own master's generation 2", r.code, r.stdout)
	}
	s.assertUnbelieved(t)
}

// daemon goes further and takes the victim's private directory itself,
// with a fake master in it: the victim's client commands refuse to
// believe what answers there.
func TestSquatterIsNotBelieved(t *testing.T) {
	t.Parallel()
	tmp := victimTmp(t)
	path := filepath.Join(tmp, "baton-65534", "baton.sock")
	s := squat(t, path, true)

	for _, args := range [][]string{{"reload"}, {"reload", "--control", path}, {"status"}, {"stop"}, {"scale", "3"}} {
		r := victimCLI(t, tmp, args...)
		if r.code != 2 || r.stderr != refusal(path, "you (uid 65534) or root") || strings.Contains(r.stdout, "99") {
			t.Errorf("the victim's baton %s: exit %d, stdout %q, stderr %q; want exit 2 and %q",
				strings.Join(args, " "), r.code, r.stdout, r.stderr, refusal(path, "you (uid 65534) or root"))
		}
	}
	// Root does not believe daemon either.
	if r := cli(t, nil, "reload", "--control", path); r.code != 2 || r.stderr != refusal(path, "you (root)") {
		t.Errorf("root's baton reload: exit %d, stderr %q; want exit 2 and %q", r.code, r.stderr, refusal(path, "you (root)"))
	}
	s.assertUnbelieved(t)
}

// With its private directory taken, the victim's master does not start
// without a control socket and a WARN: it exits 2 and says why.
func TestSquattedPrivateDirectoryStopsTheMaster(t *testing.T) {
	t.Parallel()
	tmp := victimTmp(t)
	path := filepath.Join(tmp, "baton-65534", "baton.sock")
	s := squat(t, path, true)

	res := runToExit(t, victimSpec(t, tmp))
	want := "the directory " + filepath.Dir(path) + " for the control socket is a directory that belongs to uid 1 (daemon), not to baton's user (uid 65534)"
	if res.code != 2 || !strings.Contains(res.stderr, want) {
		t.Errorf("the victim's master: exit %d, stderr:\n%s\nwant exit 2 and %q", res.code, res.stderr, want)
	}
	s.assertUnbelieved(t)
}

// A control socket path given explicitly and squatted: the master exits
// 2 naming the squatter, and the client refuses it.
func TestSquattedExplicitControlPath(t *testing.T) {
	t.Parallel()
	tmp := victimTmp(t)
	path := filepath.Join(tmp, "app.sock")
	s := squat(t, path, false)

	res := runToExit(t, victimSpec(t, tmp, "--control", path))
	want := "the control socket path " + path + " is taken by a live socket that belongs to uid 1 (daemon), not to baton's user (uid 65534)"
	if res.code != 2 || !strings.Contains(res.stderr, want) {
		t.Errorf("the victim's master: exit %d, stderr:\n%s\nwant exit 2 and %q", res.code, res.stderr, want)
	}
	r := victimCLI(t, tmp, "reload", "--control", path)
	if r.code != 2 || r.stderr != refusal(path, "you (uid 65534) or root") || r.stdout != "" {
		t.Errorf("the victim's baton reload: exit %d, stdout %q, stderr %q; want exit 2 and %q",
			r.code, r.stdout, r.stderr, refusal(path, "you (uid 65534) or root"))
	}
	s.assertUnbelieved(t)
}
