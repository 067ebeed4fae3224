package worker

import (
	"fmt"
	"math"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// Notify sends state, one or more newline-separated assignments such as
// "READY=1" or "STATUS=warming caches", to the service manager's notify
// socket named by NOTIFY_SOCKET. The socket is a file system path or, when
// the name starts with '@', a name in Linux's abstract namespace.
//
// Notify does nothing and returns nil when NOTIFY_SOCKET is not set, so a
// program may call it whether or not it runs under baton or systemd.
func Notify(state string) error {
	socket := os.Getenv("NOTIFY_SOCKET")
	if socket == "" {
		return nil
	}
	addr, err := notifyAddr(socket)
	if err != nil {
		return err
	}
	conn, err := net.DialUnix("unixgram", nil, addr)
	if err != nil {
		return fmt.Errorf("worker: notify: %w", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("worker: notify: %w", err)
	}
	return nil
}

// notifyAddr accepts what systemd accepts: an absolute path or an @name.
func notifyAddr(socket string) (*net.UnixAddr, error) {
	if !strings.HasPrefix(socket, "/") && !strings.HasPrefix(socket, "@") {
		return nil, fmt.Errorf("worker: NOTIFY_SOCKET %q is neither an absolute path nor an @abstract name", socket)
	}
	// Go itself turns a leading '@' into the NUL byte of an abstract address.
	return &net.UnixAddr{Name: socket, Net: "unixgram"}, nil
}

// Ready tells the manager that the worker accepts connections ("READY=1").
// Call it once every listener is being served.
func Ready() error {
	return Notify("READY=1")
}

// Stopping tells the manager that the worker is shutting down ("STOPPING=1"),
// typically right after it received SIGTERM and before it drains.
func Stopping() error {
	return Notify("STOPPING=1")
}

// Status sends a one-line, human-readable status ("STATUS=text"). Newlines
// in text become spaces: a newline would start another assignment.
func Status(text string) error {
	return Notify("STATUS=" + strings.ReplaceAll(text, "\n", " "))
}

// Watchdog tells the manager that the worker is alive ("WATCHDOG=1"). When
// WatchdogInterval reports an interval, send it at least that often; half the
// interval is the usual choice.
func Watchdog() error {
	return Notify("WATCHDOG=1")
}

// WatchdogInterval returns the interval from WATCHDOG_USEC within which the
// manager expects Watchdog to be called. ok is false when no watchdog is set,
// or when WATCHDOG_PID names another process.
func WatchdogInterval() (interval time.Duration, ok bool) {
	usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec <= 0 || usec > math.MaxInt64/int64(time.Microsecond) {
		return 0, false
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return 0, false
	}
	return time.Duration(usec) * time.Microsecond, true
}
