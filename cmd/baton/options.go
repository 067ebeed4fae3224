package main

import (
	"os"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/baton-pm/baton/internal/config"
	"github.com/baton-pm/baton/internal/control"
	"github.com/baton-pm/baton/internal/listener"
	"github.com/baton-pm/baton/internal/master"
)

// masterOptions translates the validated configuration into the master's
// own options, so the master does not depend on how config is spelled.
func masterOptions(cfg *config.Config) master.Options {
	specs := make([]listener.Spec, len(cfg.Binds))
	for i, b := range cfg.Binds {
		specs[i] = listener.Spec{
			Name:     b.Name,
			Network:  b.Network,
			Address:  b.Address,
			FD:       b.FD,
			Backlog:  cfg.Backlog,
			UnixMode: cfg.UnixMode,
			UnixUID:  cfg.UnixUID,
			UnixGID:  cfg.UnixGID,
		}
	}
	return master.Options{
		Master: master.MasterOptions{
			Listeners:       specs,
			PidFile:         cfg.PIDFile,
			ConfigFile:      cfg.Source(),
			LogFile:         cfg.LogFile,
			StartOnly:       cfg.StartOnlySettings(),
			ControlPath:     controlPath(cfg),
			ControlRequired: cfg.Control != "",
			MetricsAddr:     cfg.MetricsBind,
			Watch:           cfg.Watch,
			WatchIgnore:     cfg.WatchIgnore,
			BootNice:        cfg.BootNice,
			Subreaper:       cfg.Subreaper,
			Cgroup:          cfg.Cgroup,
			Handover:        cfg.UpgradeHandover,
			UpgradeMode:     cfg.UpgradeMode,
			LogLevel:        cfg.LogLevel,
			ShutdownDelay:   cfg.ShutdownDelay,
			Executable:      executable,
			Args:            os.Args,
			StartDir:        startDir,
			Version:         version,
		},
		Generation: master.GenerationOptions{
			Workers:            cfg.Workers,
			Command:            cfg.Command,
			CommandPath:        cfg.CommandPath,
			Dir:                cfg.Chdir,
			Env:                cfg.Env,
			ListenEnv:          cfg.ListenEnv,
			StopSignal:         cfg.StopSignal,
			GracefulTimeout:    cfg.GracefulTimeout,
			WorkerTimeout:      cfg.Timeout,
			Ready:              master.ReadyMode{Kind: master.ReadyKind(cfg.Ready.Mode), Delay: cfg.Ready.Delay},
			BootTimeout:        cfg.BootTimeout,
			Strategy:           master.Strategy(cfg.ReloadStrategy),
			MaxSurge:           cfg.MaxSurge,
			DrainUnlisten:      cfg.DrainUnlisten,
			MaxWorkerMemory:    cfg.MaxWorkerMemory,
			MaxWorkerAge:       cfg.MaxWorkerAge,
			MaxWorkerAgeJitter: cfg.MaxWorkerAgeJitter,
			RunAs:              runAs(cfg),
			Preload:            cfg.Preload,
		},
	}
}

// reloadLoader re-reads the configuration exactly as at start: the same
// file and flags (flags still override the file) and the same command. A
// config whose workers would not fit in the open-file limit is refused like
// an invalid one, as it would be at start.
func reloadLoader(fs *pflag.FlagSet, command []string) master.Loader {
	return func() (master.Options, error) {
		cfg, err := config.Load(fs, command)
		if err != nil {
			return master.Options{}, err
		}
		if err := checkFileLimitNow(cfg); err != nil {
			return master.Options{}, err
		}
		return masterOptions(cfg), nil
	}
}

// executable and startDir are resolved once at start, so an upgrade runs
// the binary now at that path (replaced by the deploy) from the directory
// baton was started in.
var executable, startDir = func() (string, string) {
	exe, _ := os.Executable()
	dir, _ := os.Getwd()
	return exe, dir
}()

// runAs is the credential workers run with, or nil for baton's own.
// Groups is empty, not nil: the workers' supplementary groups are cleared.
func runAs(cfg *config.Config) *syscall.Credential {
	if cfg.RunAsUID < 0 {
		return nil
	}
	return &syscall.Credential{Uid: uint32(cfg.RunAsUID), Gid: uint32(cfg.RunAsGID), Groups: []uint32{}}
}

// controlPath is the configured control socket, else the default one the
// CLI's client commands look for too.
func controlPath(cfg *config.Config) string {
	if cfg.Control != "" {
		return cfg.Control
	}
	return control.DefaultPath(cfg.PIDFile)
}
