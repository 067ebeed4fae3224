package master

import (
	"errors"
	"strings"

	"github.com/baton-pm/baton/internal/cgroup"
)

// Containment: with cgroups (the cgroup setting, "auto" by default)
// every worker runs in a cgroup of its own, so stopping or replacing it
// ends its whole tree, and a master started after a kill -9 of its
// predecessor kills what that one left before it binds. Without them
// (cgroup = "off", or where baton may not use a cgroup tree), the master
// is a child subreaper and finds a worker's processes in /proc: its
// process group, their descendants and the orphans that carry its
// identity (see package procinfo).

const (
	cgroupAuto = "auto"
	cgroupOff  = "off"
)

// containmentWithoutCgroups is the status's word for the fallback.
const containmentWithoutCgroups = "process tree"

// setupContainment sets the cgroup tree up, or decides to do without. An
// explicit cgroup path that cannot be used is an error; in auto mode the
// reason is logged and baton goes on without cgroups.
func (m *Master) setupContainment() error {
	m.containment = containmentWithoutCgroups
	mode := m.opts.Cgroup
	if mode == "" {
		mode = cgroupAuto
	}
	if mode == cgroupOff {
		m.log.Info("containment: without cgroups (cgroup = \"off\"): a worker's processes are found in /proc")
		return nil
	}
	spec := cgroup.Spec{Instance: m.cgroupInstance(), Upgrade: m.upgradePipe != nil || m.adopted != nil}
	if mode != cgroupAuto {
		spec.Path = mode
	}
	tree, left, err := cgroup.Setup(spec)
	var unusable *cgroup.Unusable
	switch {
	case errors.As(err, &unusable) && mode == cgroupAuto:
		m.log.Warn("containment: without cgroups; a worker's processes are found in /proc (set cgroup = \"off\" to say so, or make a cgroup usable)",
			"reason", unusable.Reason)
		return nil
	case err != nil:
		return err
	}
	for _, l := range left {
		m.log.Warn("killed the processes a previous master left in its worker's cgroup", "cgroup", l.Group, "pids", l.Pids)
	}
	if procs, ok := m.world.procs.(*osProcesses); ok {
		procs.tree = tree
	}
	m.cgroups = tree
	m.containment = "cgroup " + tree.Path()
	m.log.Info("containment: each worker in a cgroup of its own", "cgroup", tree.Path(), "memory_accounting", tree.Memory())
	return nil
}

// cgroupInstance names the tree of this service by what a restart of it
// keeps: the pidfile, else the addresses it binds. Without either (port
// 0, inherited sockets) there is no telling a restart from another
// service, and the tree is this master's alone ("").
func (m *Master) cgroupInstance() string {
	if m.opts.PidFile != "" {
		return m.opts.PidFile
	}
	addrs := make([]string, len(m.opts.Listeners))
	for i, l := range m.opts.Listeners {
		fixed := l.Network == "unix" || (l.Network == "tcp" && !strings.HasSuffix(l.Address, ":0"))
		if !fixed {
			return ""
		}
		addrs[i] = l.Network + ":" + l.Address
	}
	return strings.Join(addrs, ",")
}
