package main

import (
	"github.com/baton-pm/baton/internal/config"
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
		}
	}
	return master.Options{
		Listeners:       specs,
		Workers:         cfg.Workers,
		Command:         cfg.Command,
		CommandPath:     cfg.CommandPath,
		Dir:             cfg.Chdir,
		Env:             cfg.Env,
		StopSignal:      cfg.StopSignal,
		GracefulTimeout: cfg.GracefulTimeout,
		PidFile:         cfg.PIDFile,
		Version:         version,
	}
}
