package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/baton-pm/baton/internal/config"
	"github.com/baton-pm/baton/internal/logging"
	"github.com/baton-pm/baton/internal/master"
	"github.com/baton-pm/baton/internal/proc"
)

// demoWorkerArg is the hidden mode in which baton's own binary is the demo
// worker that `baton demo` runs.
const demoWorkerArg = "_demo-worker"

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "baton",
		Short: "A pre-fork process manager for zero-downtime deploys, for web apps in any language",
		Long: `baton binds your listening sockets once and runs N worker processes that
inherit them (systemd's LISTEN_FDS protocol), so workers can be replaced
without a refused connection. Signals keep Gunicorn's meanings.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newRunCommand(), newCheckCommand(), newDemoCommand(), newVersionCommand())
	root.AddCommand(newClientCommands()...)
	return root
}

func newRunCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "run [flags] [--] COMMAND [ARGS...]",
		Short: "Run the master and its workers in the foreground",
		Example: `  baton run -b 127.0.0.1:8000 -w 4 --pid /run/app/baton.pid -- uvicorn --fd 3 app:app
  baton run -c baton.toml`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := closeInheritedOnExec(); err != nil {
				return err
			}
			cfg, err := config.Load(cmd.Flags(), args)
			if err != nil {
				return usageError(err)
			}
			if err := checkFileLimitNow(cfg); err != nil {
				return usageError(err)
			}
			return runMaster(cfg, reloadLoader(cmd.Flags(), args))
		},
	}
	commandFlags(cmd)
	return cmd
}

// commandFlags gives cmd every configuration flag. Flags after the first
// positional argument belong to the worker command, so
// `baton run -w 2 uvicorn --fd 3 app:app` works with or without "--".
func commandFlags(cmd *cobra.Command) {
	config.RegisterFlags(cmd.Flags())
	cmd.Flags().SetInterspersed(false)
}

func newCheckCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "check [-c FILE] [flags] [--] [COMMAND [ARGS...]]",
		Short: "Validate the configuration and print the effective config as TOML",
		Long: `check loads the config file and flags exactly as run would, reports every
problem at once (file, line, key, what was expected) and exits 2 if there are
any; otherwise it prints the effective configuration, a file that run -c reads
back. Settings that are valid but known to go wrong with the command (ready =
"notify" with gunicorn) are warned about on stderr; they do not change the
exit code. Keys that a reload cannot change (it is refused) end with
"# restart to change".`,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := config.Load(cmd.Flags(), args)
			if err != nil {
				return usageError(err)
			}
			for _, w := range cfg.Warnings() {
				fmt.Fprintln(os.Stderr, "baton: warning: "+w.Error())
			}
			fmt.Print(cfg.TOML())
			return nil
		},
	}
	commandFlags(cmd)
	return cmd
}

func newDemoCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "demo [flags]",
		Short: "Run baton with its bundled demo app on 127.0.0.1:8000 with 4 workers",
		Long: `demo runs the master with baton's own binary as the worker (a small HTTP app
replying with its worker id, pid and generation), so curl shows the workers
sharing one port. Every run flag works here too.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := closeInheritedOnExec(); err != nil {
				return err
			}
			self, err := os.Executable()
			if err != nil {
				return fmt.Errorf("cannot find baton's own binary: %w", err)
			}
			fs := cmd.Flags()
			if !fs.Changed("workers") {
				_ = fs.Set("workers", "4")
			}
			command := []string{self, demoWorkerArg}
			cfg, err := config.Load(fs, command)
			if err != nil {
				return usageError(err)
			}
			if err := checkFileLimitNow(cfg); err != nil {
				return usageError(err)
			}
			printDemoHints(cfg)
			return runMaster(cfg, reloadLoader(fs, command))
		},
	}
	config.RegisterFlags(cmd.Flags())
	return cmd
}

func printDemoHints(cfg *config.Config) {
	addr := cfg.Binds[0].Address
	fmt.Fprintf(os.Stderr, `baton demo: master pid %d, %d workers. Try, from another terminal:
  curl http://%[3]s/          (run it a few times: different workers answer)
  kill -HUP %[1]d            (reload: a new generation takes over once it is ready)
  kill -TTIN %[1]d           (one worker more; -TTOU one fewer)
  kill -TERM %[1]d           (graceful shutdown; or press Ctrl-C)
`, os.Getpid(), cfg.Workers, addr)
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print baton's version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, args []string) {
			fmt.Println("baton", version)
		},
	}
}

// closeInheritedOnExec marks every fd baton inherited from its parent,
// beyond stdin, stdout and stderr, close-on-exec, before a master opens or
// starts anything: a shell's open files, say, must not reach the workers
// (which may run as another user), helpers or a new master. What baton
// takes from its parent (systemd's sockets, fd://N, an upgrade's listeners
// and pipe) it adopts, and hands on explicitly where a child needs it.
func closeInheritedOnExec() error {
	if err := proc.CloseOnExecFrom(3); err != nil {
		return fmt.Errorf("cannot keep inherited file descriptors from the workers: %w", err)
	}
	return nil
}

// runMaster sets up logging and runs the master until it shuts down.
func runMaster(cfg *config.Config, load master.Loader) error {
	log, logOut, err := logging.New(logging.Options{Level: cfg.LogLevel, Format: cfg.LogFormat, File: cfg.LogFile})
	if err != nil {
		return usageError(err)
	}
	defer logOut.Close()
	for _, w := range cfg.Warnings() {
		log.Warn("configuration: " + w.Error())
	}
	m := master.New(masterOptions(cfg), load, log, logOut)
	err = m.Run()
	var startErr *master.StartError
	if errors.As(err, &startErr) {
		if cfg.LogFile != "" {
			// stderr gets it from main too; the log file's readers need it.
			log.Error("cannot start", "err", startErr.Err)
		}
		return usageError(startErr.Err)
	}
	return err
}

// formatError renders an error for the terminal: config problems one per
// line under a heading, anything else on one line.
func formatError(err error) string {
	var problems config.Problems
	if errors.As(err, &problems) && len(problems) > 1 {
		var b strings.Builder
		fmt.Fprintf(&b, "baton: the configuration has %d problems:", len(problems))
		for _, p := range problems {
			b.WriteString("\n  " + p.Error())
		}
		return b.String()
	}
	return "baton: " + err.Error()
}
