package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/baton-pm/baton/internal/control"
)

// exitFailed is the exit code of a command whose request the master
// carried out and which failed (a reload that was rolled back), or that
// timed out; 2 stays for bad usage and an unreachable master.
const exitFailed = 1

// masterFlags are how a client command finds the master.
type masterFlags struct {
	control string
	pid     string
}

func (f *masterFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.control, "control", "", "the master's control socket `PATH`")
	cmd.Flags().StringVar(&f.pid, "pid", "", "the master's pidfile `FILE` (the control socket is beside it)")
}

// socketPath is --control, else the socket beside --pid, else the default.
func (f *masterFlags) socketPath() string {
	if f.control != "" {
		return f.control
	}
	return control.DefaultPath(f.pid)
}

// connect dials the master and returns the client with a context that
// Ctrl-C ends, and timeout when > 0; done releases both.
func (f *masterFlags) connect(timeout time.Duration) (c *control.Client, ctx context.Context, done func(), err error) {
	c, err = control.Dial(f.socketPath())
	if err != nil {
		return nil, nil, nil, usageError(err)
	}
	ctx, cancel := interruptible(timeout)
	return c, ctx, func() { cancel(); c.Close() }, nil
}

// interruptible is a context ended by Ctrl-C, and by timeout when it is > 0.
func interruptible(timeout time.Duration) (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	if timeout <= 0 {
		return ctx, stop
	}
	tctx, cancel := context.WithTimeout(ctx, timeout)
	return tctx, func() { cancel(); stop() }
}

func newClientCommands() []*cobra.Command {
	return []*cobra.Command{
		newRolloutCommand(control.CmdReload, "Reload: start a new generation of workers and retire the old one once it is ready"),
		newRolloutCommand(control.CmdUpgrade, "Upgrade: start a new master from the baton binary on disk and hand it the listeners once its workers are ready"),
		newScaleCommand(), newStopCommand(), newStatusCommand(), newTopCommand(),
	}
}

// newRolloutCommand makes reload and upgrade: both wait for the end and
// show progress.
func newRolloutCommand(name, short string) *cobra.Command {
	var mf masterFlags
	var timeout time.Duration
	var noWait bool
	cmd := &cobra.Command{
		Use:   name + " [--timeout D] [--no-wait]",
		Short: short,
		Long: short + `.

It waits until the new generation serves and exits 0, or until the reload
failed and the old generation kept serving and exits 1 with the reason (the
failing worker, its exit status and last stderr lines, or the config
errors). On a terminal it shows progress on one updating line.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, done, err := mf.connect(timeout)
			if err != nil {
				return err
			}
			defer done()
			if noWait {
				if _, err := c.Call(ctx, control.Request{Cmd: name}, nil); err != nil {
					return &exitCodeError{code: exitFailed, err: err}
				}
				fmt.Printf("%s requested\n", name)
				return nil
			}
			var before *control.Status
			if name == control.CmdUpgrade {
				// An in-place upgrade cuts this connection when the master
				// executes the new binary: its result is then read from
				// the status of the same master.
				if before, err = fetchStatus(&mf); err != nil {
					return err
				}
			}
			err = waitForRollout(ctx, c, name, timeout)
			if before != nil && cutOff(err) {
				return awaitInPlaceUpgrade(ctx, &mf, before)
			}
			return err
		},
	}
	mf.register(cmd)
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "give up waiting after `D` (the reload goes on in the master); 0 waits for the end")
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "request it and exit at once, like kill -HUP")
	return cmd
}

func waitForRollout(ctx context.Context, c *control.Client, name string, timeout time.Duration) error {
	out := newProgressPrinter(os.Stdout)
	resp, err := c.Call(ctx, control.Request{Cmd: name, Wait: true}, out.show)
	out.finish()
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return &exitCodeError{code: exitFailed, err: fmt.Errorf("%s: gave up waiting after %v; it goes on in the master (see baton status)", name, timeout)}
	case err != nil:
		return &exitCodeError{code: exitFailed, err: err}
	}
	res := resp.Reload
	if res == nil {
		return &exitCodeError{code: exitFailed, err: fmt.Errorf("%s: the master sent no result", name)}
	}
	if !res.OK {
		return &exitCodeError{code: exitFailed, err: errors.New(describeFailure(name, res))}
	}
	if name == control.CmdUpgrade {
		fmt.Printf("upgrade succeeded: the new master, pid %d, baton %s, serves (%.1fs)\n", res.MasterPid, res.Version, res.Duration)
		return nil
	}
	fmt.Printf("%s succeeded: generation %d serves (%.1fs)\n", name, res.Generation, res.Duration)
	return nil
}

// cutOff reports whether err is the master closing the connection
// without an answer: what an in-place upgrade's exec does.
func cutOff(err error) bool {
	var ec *exitCodeError
	if errors.As(err, &ec) {
		err = ec.err
	}
	return errors.Is(err, control.ErrConnClosed) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET)
}

// awaitInPlaceUpgrade follows an in-place upgrade after the master
// executed the new binary: the same pid answers again once the new image
// runs, and the upgrade's reload ends in its status.
func awaitInPlaceUpgrade(ctx context.Context, mf *masterFlags, before *control.Status) error {
	answered := time.Now()
	for {
		st, err := fetchStatus(mf)
		if err == nil {
			answered = time.Now()
		} else if time.Since(answered) > time.Minute {
			return &exitCodeError{code: exitFailed, err: fmt.Errorf("upgrade: the master has not answered for a minute since it executed the new binary: %v", err)}
		}
		if err == nil && st.Pid != before.Pid {
			return &exitCodeError{code: exitFailed, err: fmt.Errorf("upgrade: another master (pid %d) answers now, not %d", st.Pid, before.Pid)}
		}
		if err == nil && !st.Reloading && st.LastReload != nil && st.LastReload.Generation > before.Generation {
			res := st.LastReload
			if !res.OK {
				return &exitCodeError{code: exitFailed, err: fmt.Errorf("upgrade: this master now runs baton %s, but its new generation failed: %s; the workers of the old binary's time keep serving%s",
					st.Version, res.Reason, stderrLines(res))}
			}
			fmt.Printf("upgrade succeeded: the master (pid %d, unchanged) runs baton %s; generation %d serves (%.1fs)\n",
				st.Pid, st.Version, res.Generation, res.Duration)
			return nil
		}
		select {
		case <-ctx.Done():
			return &exitCodeError{code: exitFailed, err: fmt.Errorf("upgrade: gave up waiting; see baton status")}
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func stderrLines(res *control.ReloadResult) string {
	var b strings.Builder
	if len(res.Stderr) > 0 {
		b.WriteString("\nlast lines of the worker's stderr:")
		for _, l := range res.Stderr {
			b.WriteString("\n  | " + l)
		}
	}
	return b.String()
}

func describeFailure(name string, res *control.ReloadResult) string {
	var b strings.Builder
	if name == control.CmdUpgrade {
		fmt.Fprintf(&b, "upgrade failed: %s; the old master keeps serving", res.Reason)
	} else {
		fmt.Fprintf(&b, "%s failed (generation %d): %s; the old generation keeps serving", name, res.Generation, res.Reason)
	}
	if len(res.Stderr) > 0 {
		b.WriteString("\nlast lines of the worker's stderr:")
		for _, l := range res.Stderr {
			b.WriteString("\n  | " + l)
		}
	}
	return b.String()
}

// progressPrinter shows reload progress: one updating line on a terminal,
// a line per change otherwise (logs, CI).
type progressPrinter struct {
	w        io.Writer
	terminal bool
	last     string
}

func newProgressPrinter(f *os.File) *progressPrinter {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return &progressPrinter{w: f, terminal: err == nil}
}

func (p *progressPrinter) show(pr control.Progress) {
	line := fmt.Sprintf("generation %d: %s: %d/%d ready, %d starting; old serving %d, draining %d",
		pr.Generation, pr.Phase, pr.Ready, pr.Workers, pr.Starting, pr.OldServing, pr.Draining)
	switch {
	case pr.Phase == "queued":
		line = fmt.Sprintf("queued behind the reload of generation %d", pr.Generation)
	case pr.Master != 0:
		line = fmt.Sprintf("upgrade: new master pid %d: %s", pr.Master, pr.Phase)
	case strings.HasPrefix(pr.Phase, "upgrade: "):
		line = pr.Phase
	}
	if line == p.last {
		return
	}
	p.last = line
	if p.terminal {
		fmt.Fprintf(p.w, "\r\033[K%s", line)
		return
	}
	fmt.Fprintln(p.w, line)
}

func (p *progressPrinter) finish() {
	if p.terminal && p.last != "" {
		fmt.Fprint(p.w, "\r\033[K")
	}
}

func newScaleCommand() *cobra.Command {
	var mf masterFlags
	cmd := &cobra.Command{
		Use:   "scale N",
		Short: "Set the number of workers of the running master",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// The master refuses the same (control.MaxWorkers); saying it
			// here spares the round trip and makes it bad input, exit 2.
			n, err := strconv.Atoi(args[0])
			if err != nil || n < 1 || n > control.MaxWorkers {
				return usageError(fmt.Errorf("scale: %q: expected a number of workers from 1 to %d (baton's ceiling)", args[0], control.MaxWorkers))
			}
			c, ctx, done, err := mf.connect(30 * time.Second)
			if err != nil {
				return err
			}
			defer done()
			if _, err := c.Call(ctx, control.Request{Cmd: control.CmdScale, Workers: n}, nil); err != nil {
				return &exitCodeError{code: exitFailed, err: err}
			}
			fmt.Printf("scaled to %d workers\n", n)
			return nil
		},
	}
	mf.register(cmd)
	return cmd
}

func newStopCommand() *cobra.Command {
	var mf masterFlags
	var quick bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "stop [--quick]",
		Short: "Shut the master down (gracefully, like TERM; --quick like QUIT) and wait until it has exited",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := fetchStatus(&mf)
			if err != nil {
				return err
			}
			c, ctx, done, err := mf.connect(timeout)
			if err != nil {
				return err
			}
			defer done()
			if _, err := c.Call(ctx, control.Request{Cmd: control.CmdStop, Quick: quick}, nil); err != nil {
				return &exitCodeError{code: exitFailed, err: err}
			}
			// The master closes the control socket as it exits; then its
			// process goes.
			if err := c.WaitClosed(ctx); err == nil {
				err = waitExited(ctx, st.Pid)
			}
			if err != nil {
				return &exitCodeError{code: exitFailed, err: fmt.Errorf("stop: the master (pid %d) has not exited yet: %w", st.Pid, err)}
			}
			fmt.Println("stopped")
			return nil
		},
	}
	mf.register(cmd)
	cmd.Flags().BoolVar(&quick, "quick", false, "quick shutdown: workers get SIGINT and are killed after 2 s")
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "give up waiting after `D`; 0 waits until the master has exited")
	return cmd
}

func newStatusCommand() *cobra.Command {
	var mf masterFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status [--json]",
		Short: "Show the master, its listeners, the last reload and every worker",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := fetchStatus(&mf)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			printStatus(os.Stdout, st)
			return nil
		},
	}
	mf.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func fetchStatus(mf *masterFlags) (*control.Status, error) {
	c, ctx, done, err := mf.connect(10 * time.Second)
	if err != nil {
		return nil, err
	}
	defer done()
	resp, err := c.Call(ctx, control.Request{Cmd: control.CmdStatus}, nil)
	if err != nil {
		return nil, &exitCodeError{code: exitFailed, err: err}
	}
	if resp.Status == nil {
		return nil, &exitCodeError{code: exitFailed, err: errors.New("status: the master sent no status")}
	}
	return resp.Status, nil
}

func printStatus(w io.Writer, st *control.Status) {
	fmt.Fprintf(w, "master   pid %d, baton %s, up %s\n", st.Pid, st.Version, seconds(st.Uptime))
	if st.ConfigFile != "" {
		fmt.Fprintf(w, "config   %s\n", st.ConfigFile)
	}
	for _, l := range st.Listeners {
		fmt.Fprintf(w, "listen   %s %s\n", l.Name, l.Addr)
	}
	state := stateOf(st)
	if st.LameDuck != nil {
		state = fmt.Sprintf("stopping (lame duck, %s left)", seconds(st.LameDuck.Left))
	}
	fmt.Fprintf(w, "state    %s, %d ready, generation %d, %d workers\n", state, st.ReadyWorkers, st.Generation, st.Workers)
	for _, d := range st.Degraded {
		fmt.Fprintf(w, "DEGRADED %s\n", d)
	}
	for _, t := range st.Templates {
		imported := ""
		if t.ImportTime > 0 {
			imported = ", imported in " + seconds(t.ImportTime)
		}
		fmt.Fprintf(w, "preload  generation %d: template pid %d %s (%s)%s, %s\n", t.Generation, t.Pid, t.State,
			strings.Join(t.Preload, ", "), imported, mebibytes(t.RSS))
	}
	if r := st.LastReload; r != nil {
		result := "succeeded"
		if !r.OK {
			result = "failed: " + r.Reason
		}
		fmt.Fprintf(w, "reload   generation %d %s, %s ago, took %s\n", r.Generation, result,
			seconds(time.Since(r.Started).Seconds()), seconds(r.Duration))
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SLOT\tPID\tGEN\tSTATE\tUPTIME\tMEMORY\tRESTARTS\tSTATUS")
	for _, wk := range st.WorkerList {
		fmt.Fprintf(tw, "%d\t%d\t%d\t%s\t%s\t%s\t%d\t%s\n", wk.Slot, wk.Pid, wk.Generation, wk.State,
			seconds(wk.Uptime), mebibytes(wk.RSS), wk.Restarts, workerNotes(wk))
	}
	tw.Flush()
}

// workerNotes is a worker's STATUS= line and the sockets it listens on
// that baton did not pass.
func workerNotes(wk control.Worker) string {
	notes := wk.Status
	if len(wk.ForeignListeners) > 0 {
		if notes != "" {
			notes += "; "
		}
		notes += "foreign listeners: " + strings.Join(wk.ForeignListeners, ", ")
	}
	return notes
}

// stateOf is the master's state; a master older than the state field
// gets the words it had then.
func stateOf(st *control.Status) string {
	switch {
	case st.State != "":
		return st.State
	case st.ShuttingDown:
		return control.StateStopping
	case st.Reloading:
		return control.StateReloading
	}
	return control.StateServing
}

func seconds(s float64) string {
	return (time.Duration(s * float64(time.Second))).Round(100 * time.Millisecond).String()
}

func mebibytes(b uint64) string {
	return fmt.Sprintf("%.1fMiB", float64(b)/(1<<20))
}

func newTopCommand() *cobra.Command {
	var mf masterFlags
	var every time.Duration
	cmd := &cobra.Command{
		Use:   "top",
		Short: "A live, refreshing view of baton status (Ctrl-C to quit)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := interruptible(0)
			defer cancel()
			tick := time.NewTicker(every)
			defer tick.Stop()
			for {
				st, err := fetchStatus(&mf)
				if err != nil {
					return err
				}
				// Home the cursor and clear: a plain ANSI terminal is
				// all this needs.
				fmt.Print("\033[H\033[2J")
				printStatus(os.Stdout, st)
				fmt.Printf("\n%s, refreshing every %v; Ctrl-C quits\n", time.Now().Format("15:04:05"), every)
				select {
				case <-ctx.Done():
					return nil
				case <-tick.C:
				}
			}
		},
	}
	mf.register(cmd)
	cmd.Flags().DurationVar(&every, "interval", time.Second, "refresh every `D`")
	return cmd
}

// waitExited waits until pid is gone or a zombie.
func waitExited(ctx context.Context, pid int) error {
	for {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return nil
		}
		// The state follows the command name in parentheses.
		if i := strings.LastIndexByte(string(data), ')'); i >= 0 && i+2 < len(data) && data[i+2] == 'Z' {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}
