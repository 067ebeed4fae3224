package worker

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// firstListenFD is the first inherited socket: right after stdin, stdout and stderr.
const firstListenFD = 3

// unknownName names a listener that LISTEN_FDNAMES does not name, as systemd does.
const unknownName = "unknown"

// namedListener is one inherited listener and the name its manager gave it.
type namedListener struct {
	name     string
	listener net.Listener
}

// The inherited descriptors can be taken only once (taking them closes the
// originals and clears the environment), so the first result is kept for
// every later call.
var (
	takeOnce sync.Once
	taken    []namedListener
	takeErr  error
)

// Listeners returns the listeners inherited from baton or systemd, keyed by the
// names in LISTEN_FDNAMES. A listener without a name is keyed "unknown".
//
// The sockets are meant for this process only when LISTEN_PID is its pid; when
// it is not (or when the variables are absent) Listeners returns an empty map
// and no error: the program was not started by socket activation.
//
// The first call takes the descriptors: it marks them close-on-exec, wraps
// them in net.Listeners and unsets LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES
// so that programs this process starts do not think they are activated. Later
// calls return the same listeners (and the same error). The map is a fresh
// copy each time; closing a listener closes it for every caller.
func Listeners() (map[string][]net.Listener, error) {
	list, err := takeListeners()
	if err != nil {
		return nil, err
	}
	byName := make(map[string][]net.Listener)
	for _, nl := range list {
		byName[nl.name] = append(byName[nl.name], nl.listener)
	}
	return byName, nil
}

// ListenerList returns the inherited listeners in descriptor order (fd 3
// first). It shares its result with Listeners; see there for the rules.
func ListenerList() ([]net.Listener, error) {
	list, err := takeListeners()
	if err != nil {
		return nil, err
	}
	listeners := make([]net.Listener, len(list))
	for i, nl := range list {
		listeners[i] = nl.listener
	}
	return listeners, nil
}

func takeListeners() ([]namedListener, error) {
	takeOnce.Do(func() {
		taken, takeErr = listenersFromEnv()
	})
	return taken, takeErr
}

// listenersFromEnv takes the inherited descriptors that the environment
// announces for this process.
func listenersFromEnv() ([]namedListener, error) {
	ours, count, names, err := parseActivation(os.Getpid(),
		os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDS"), os.Getenv("LISTEN_FDNAMES"))
	if err != nil || !ours {
		return nil, err
	}
	// They are ours: children must not take them for theirs.
	os.Unsetenv("LISTEN_PID")
	os.Unsetenv("LISTEN_FDS")
	os.Unsetenv("LISTEN_FDNAMES")

	list := make([]namedListener, 0, count)
	for i := range count {
		name := nameAt(names, i)
		l, err := fileListener(firstListenFD+i, name)
		if err != nil {
			closeListeners(list)
			return nil, err
		}
		list = append(list, namedListener{name: name, listener: l})
	}
	return list, nil
}

// parseActivation reads the values of LISTEN_PID, LISTEN_FDS and
// LISTEN_FDNAMES. ours tells whether they are meant for the process with the
// given pid; count is how many descriptors they announce.
func parseActivation(pid int, listenPID, listenFDs, fdNames string) (ours bool, count int, names []string, err error) {
	if listenPID == "" {
		return false, 0, nil, nil
	}
	forPID, err := strconv.Atoi(listenPID)
	if err != nil || forPID <= 0 {
		return false, 0, nil, fmt.Errorf("worker: invalid LISTEN_PID %q", listenPID)
	}
	if forPID != pid {
		return false, 0, nil, nil
	}
	if listenFDs != "" {
		count, err = strconv.Atoi(listenFDs)
		if err != nil || count < 0 {
			return false, 0, nil, fmt.Errorf("worker: invalid LISTEN_FDS %q", listenFDs)
		}
	}
	if fdNames != "" {
		names = strings.Split(fdNames, ":")
	}
	return true, count, names, nil
}

// nameAt returns the name of the i-th inherited descriptor.
func nameAt(names []string, i int) string {
	if i < len(names) && names[i] != "" {
		return names[i]
	}
	return unknownName
}

// fileListener wraps an inherited descriptor in a net.Listener and closes the
// descriptor itself: the listener works on a duplicate.
func fileListener(fd int, name string) (net.Listener, error) {
	// Until it is closed below, the descriptor must not leak into programs
	// that another goroutine may be starting.
	syscall.CloseOnExec(fd)
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	l, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("worker: inherited fd %d (%s) is not a listening socket: %w", fd, name, err)
	}
	return l, nil
}

func closeListeners(list []namedListener) {
	for _, nl := range list {
		nl.listener.Close()
	}
}
