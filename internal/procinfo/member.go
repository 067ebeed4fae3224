package procinfo

import (
	"bytes"
	"os"
	"strconv"
	"strings"
)

// Whether a process is one of a worker's, asked for every notify message
// a worker's socket receives (the sender's pid comes from the kernel, with
// the message): these read a few small /proc files, never the whole of
// /proc.

// maxAncestors bounds the walk up a process's ancestry.
const maxAncestors = 512

// InWorker reports whether pid is one of a worker's processes, as /proc
// tells without cgroups: the worker itself (leader), a process of its
// process group, a descendant of either, or a descendant of an orphan of
// the worker that the master adopted (a child of the master that carries
// the worker's identity, as WorkerTree finds them). It walks pid's
// ancestry up to one of those, or to the master, init or a process that
// is gone.
func InWorker(pid, leader int, id Identity) bool {
	for range maxAncestors {
		if pid <= 1 || pid == id.MasterPid {
			return false
		}
		if pid == leader {
			return true
		}
		ppid, pgrp, ok := parentAndGroup(pid)
		if !ok {
			return false
		}
		if leader > 0 && pgrp == leader {
			return true
		}
		if ppid == id.MasterPid {
			return carries(pid, id)
		}
		pid = ppid
	}
	return false
}

// parentAndGroup reads a process's parent and process group from
// /proc/PID/stat.
func parentAndGroup(pid int) (ppid, pgrp int, ok bool) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, false
	}
	// "pid (comm) state ppid pgrp ...": comm may hold spaces and
	// parentheses, so the fields start after the last ")".
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 3 {
		return 0, 0, false
	}
	ppid, err1 := strconv.Atoi(f[1])
	pgrp, err2 := strconv.Atoi(f[2])
	return ppid, pgrp, err1 == nil && err2 == nil
}

// InCgroup reports whether pid is in the cgroup v2 path (as the master
// sees paths, "/baton-app/w-42-1") or in a cgroup below it.
func InCgroup(pid int, path string) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p == path || strings.HasPrefix(p, strings.TrimSuffix(path, "/")+"/")
		}
	}
	return false
}
