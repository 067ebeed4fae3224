package master

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/baton-pm/baton/internal/forkserver"
	"github.com/baton-pm/baton/internal/pidns"
	"github.com/baton-pm/baton/internal/proc"
	"github.com/baton-pm/baton/internal/procinfo"
)

// The real world's preload templates (template.go): the fork server is
// written to a runtime directory of the master's own, and the template
// started through the shim like a worker, with its control socket as the
// fd after the listeners.

func (o *osProcesses) StartTemplate(spec proc.Spec, preload []string) (int, process, templateConn, error) {
	pathList := envValue(spec.Env, "PATH")
	if pathList == "" {
		pathList = os.Getenv("PATH")
	}
	interp, entry, err := forkserver.InterpreterIn(spec.Path, spec.Args, pathList)
	if err != nil {
		return 0, nil, nil, err
	}
	script, err := o.forkServer()
	if err != nil {
		return 0, nil, nil, err
	}
	conn, child, err := forkserver.NewPair()
	if err != nil {
		return 0, nil, nil, err
	}
	defer child.Close() // the template has its own copy once started
	spec.Args = forkserver.TemplateArgs(interp, entry.Flags, script, preload, spec.Args)
	spec.Path = interp
	spec.Extra = []int{int(child.Fd())}
	spec.Env = append(spec.Env, forkserver.ControlFDEnv+"="+strconv.Itoa(3+len(spec.Listeners)))
	pid, p, err := o.StartWorker(spec)
	if err != nil {
		conn.Close()
		return 0, nil, nil, err
	}
	return pid, p, templateSocket{conn}, nil
}

// forkServer installs the fork server, once per master process, in a
// directory every worker's user can read and nobody else can write:
// <base>/baton-forkserver-<pid>, base being /run as root, else systemd's
// RuntimeDirectory or the temporary directory.
func (o *osProcesses) forkServer() (string, error) {
	if o.forkServerPath != "" {
		return o.forkServerPath, nil
	}
	dir := filepath.Join(forkServerBase(), "baton-forkserver-"+strconv.Itoa(os.Getpid()))
	if err := ownDir(dir); err != nil {
		return "", fmt.Errorf("preload: %w", err)
	}
	if err := pidns.Mark(dir); err != nil {
		return "", fmt.Errorf("preload: %w", err)
	}
	removeStaleForkServers(filepath.Dir(dir))
	path, err := forkserver.Install(dir)
	if err != nil {
		return "", fmt.Errorf("preload: %w", err)
	}
	o.forkServerPath = path
	return path, nil
}

func forkServerBase() string {
	// As root, workers may run as another user: /run itself is open to
	// all (0755), where /run/baton and a RuntimeDirectory may not be.
	if os.Geteuid() == 0 {
		return "/run"
	}
	if d := os.Getenv("RUNTIME_DIRECTORY"); d != "" {
		return strings.Split(d, ":")[0]
	}
	return os.TempDir()
}

// ownDir makes dir (0755), or checks that the dir already there is a real
// directory of this user that only it can write: the same pid finds its
// own after an in-place upgrade, and in a shared /tmp another user may
// have made it first.
func ownDir(dir string) error {
	err := os.Mkdir(dir, 0o755)
	if err == nil || !errors.Is(err, fs.ErrExist) {
		if err == nil {
			err = os.Chmod(dir, 0o755) // whatever the umask
		}
		return err
	}
	info, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	st, ok := info.Sys().(*syscall.Stat_t)
	if !info.IsDir() || !ok || int(st.Uid) != os.Geteuid() || info.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%s exists and is not a directory of this user that only it can write; remove it", dir)
	}
	return nil
}

// removeStaleForkServers removes the directories of masters that are
// gone (killed with SIGKILL: their cleanup never ran), of this pid
// namespace only (see package pidns): a master in a container sharing
// /run would otherwise remove the host masters' fork servers, and their
// next template would not start.
func removeStaleForkServers(base string) {
	entries, _ := os.ReadDir(base)
	for _, e := range entries {
		pid, ok := strings.CutPrefix(e.Name(), "baton-forkserver-")
		if !ok {
			continue
		}
		n, err := strconv.Atoi(pid)
		if err != nil || n == os.Getpid() || syscall.Kill(n, 0) != syscall.ESRCH {
			continue
		}
		info, err := os.Lstat(filepath.Join(base, e.Name()))
		if err != nil || !pidns.Ours(filepath.Join(base, e.Name())) {
			continue
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok && info.IsDir() && int(st.Uid) == os.Geteuid() {
			os.RemoveAll(filepath.Join(base, e.Name()))
		}
	}
}

// Close removes the fork server's directory when the master exits.
func (o *osProcesses) Close() {
	if o.forkServerPath != "" {
		os.RemoveAll(filepath.Dir(o.forkServerPath))
		o.forkServerPath = ""
	}
}

func (o *osProcesses) AdoptForked(pid int, req forkRequest) (process, error) {
	r, ok := req.(*forkRequestOS)
	if !ok {
		return nil, fmt.Errorf("not a fork request of this world: %T", req)
	}
	w := &osWorker{id: procinfo.Identity{MasterPid: os.Getpid(), NotifySocket: r.notifySocket}, forked: true}
	if o.tree != nil {
		g, err := o.tree.NewGroup()
		if err != nil {
			return nil, err
		}
		if err := g.Move(pid); err != nil {
			g.Remove()
			return nil, err
		}
		w.group = g
	}
	p, err := proc.AdoptForked(pid, r.Stderr(), os.Stderr)
	if err != nil {
		if w.group != nil {
			w.group.Kill()
			w.group.Remove()
		}
		return nil, err
	}
	w.Process = p
	return w, nil
}

// templateSocket is a template's control socket.
type templateSocket struct{ c *forkserver.Conn }

func (s templateSocket) Receive(handle func(templateMsg)) {
	s.c.Receive(func(m forkserver.Message) {
		handle(templateMsg{Type: m.Type, ID: m.ID, Pid: m.Pid, Error: m.Error, Traceback: m.Traceback,
			Preloaded: m.Preloaded, ImportSeconds: m.ImportSeconds})
	})
}

func (s templateSocket) Fork(id int, env []string) (forkRequest, error) {
	p, err := s.c.Fork(id, env)
	if err != nil {
		return nil, err
	}
	return &forkRequestOS{Pending: p, notifySocket: envValue(env, "NOTIFY_SOCKET")}, nil
}

func (s templateSocket) Close() error { return s.c.Close() }

// forkRequestOS is a fork request, with the identity its worker gets.
type forkRequestOS struct {
	*forkserver.Pending
	notifySocket string
}
