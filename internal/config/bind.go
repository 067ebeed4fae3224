package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// Networks of a Bind.
const (
	NetworkTCP  = "tcp"  // Address is host:port; the host may be empty (all interfaces)
	NetworkUnix = "unix" // Address is the socket's path
	NetworkFD   = "fd"   // FD is a listening socket baton inherited
	// NetworkSystemd takes the sockets systemd passed (socket activation):
	// all of them, or those whose FileDescriptorName is Address.
	NetworkSystemd = "systemd"
)

// A Bind is one listener: a socket to open, or one baton inherited.
type Bind struct {
	// Name is the socket's name in LISTEN_FDNAMES: the NAME of NAME=ADDR,
	// else "bindN" with N its 0-based index in the list.
	Name    string
	Raw     string // as written, NAME= included
	Network string // NetworkTCP, NetworkUnix or NetworkFD
	Address string // host:port for tcp, the path for unix, "" for fd
	FD      int    // the inherited fd for fd, else 0
}

// maxUnixPath is the longest path bind(2) takes for a unix socket: sun_path
// is 108 bytes on Linux, and one of them is the terminating NUL.
const maxUnixPath = 107

// bindForms ends every message about an address that is not one.
const bindForms = "expected HOST:PORT, [V6]:PORT, :PORT, unix:PATH, fd://N, systemd or systemd:NAME"

// bindName is what LISTEN_FDNAMES can carry: no ':' (its separator), and
// no '=' (ours, between name and address).
var bindName = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// parseBinds parses a whole bind list, reporting every bad entry and every
// name or address given twice.
func parseBinds(raws []string) ([]Bind, []error) {
	if len(raws) == 0 {
		return nil, []error{errors.New("expected at least one address to listen on, got none")}
	}
	var (
		binds  []Bind
		errs   []error
		byName = map[string]string{} // name -> raw of the first bind with it
		byAddr = map[string]string{} // identity -> raw of the first bind with it
	)
	for i, raw := range raws {
		b, err := parseBind(raw, i)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if first, dup := byName[b.Name]; dup {
			errs = append(errs, fmt.Errorf("%q and %q have the same name %q", first, raw, b.Name))
		}
		byName[b.Name] = raw
		if id := b.identity(); id != "" {
			if first, dup := byAddr[id]; dup {
				errs = append(errs, fmt.Errorf("%q and %q are the same address", first, raw))
			}
			byAddr[id] = raw
		}
		binds = append(binds, b)
	}
	return binds, errs
}

// identity is what makes two binds the same socket, or "" for a TCP port 0,
// which the kernel gives a different port each time.
func (b Bind) identity() string {
	switch b.Network {
	case NetworkTCP:
		if strings.HasSuffix(b.Address, ":0") {
			return ""
		}
		return "tcp " + strings.ToLower(b.Address)
	case NetworkUnix:
		return "unix " + filepath.Clean(b.Address)
	case NetworkSystemd:
		return "systemd " + b.Address
	default:
		return "fd " + strconv.Itoa(b.FD)
	}
}

// parseBind parses one bind, the index-th of its list (for its default
// name): [NAME=]ADDR with ADDR one of HOST:PORT, [V6]:PORT, :PORT,
// unix:PATH, fd://N, systemd or systemd:NAME.
func parseBind(raw string, index int) (Bind, error) {
	b := Bind{Raw: raw, Name: "bind" + strconv.Itoa(index)}
	addr := raw
	// Every address form has a ':' and no name may, so a '=' before
	// any ':' ends a name, while one after it is part of a unix path.
	if name, rest, ok := strings.Cut(raw, "="); ok && !strings.Contains(name, ":") {
		if !bindName.MatchString(name) {
			return Bind{}, fmt.Errorf("%q: the name %q is not valid: expected 1 to 64 of A-Z a-z 0-9 _ . -", raw, name)
		}
		b.Name, addr = name, rest
	}
	var err error
	switch {
	case strings.ContainsRune(raw, 0):
		err = fmt.Errorf("%q contains a NUL byte", raw)
	case addr == "":
		err = fmt.Errorf("%q has no address: %s", raw, bindForms)
	case addr == "systemd" || strings.HasPrefix(addr, "systemd:"):
		b.Network = NetworkSystemd
		b.Address, err = parseSystemdName(raw, addr)
	case strings.HasPrefix(addr, "unix:"):
		b.Network = NetworkUnix
		b.Address, err = parseUnixPath(raw, addr)
	case strings.HasPrefix(addr, "fd://"):
		b.Network = NetworkFD
		b.FD, err = parseFD(raw, strings.TrimPrefix(addr, "fd://"))
	default:
		b.Network = NetworkTCP
		b.Address, err = parseHostPort(raw, addr)
	}
	if err != nil {
		return Bind{}, err
	}
	return b, nil
}

// parseSystemdName takes the NAME of systemd:NAME ("" for all sockets),
// as a .socket unit's FileDescriptorName= gives it.
func parseSystemdName(raw, addr string) (string, error) {
	name, named := strings.CutPrefix(addr, "systemd:")
	if !named {
		return "", nil
	}
	if !bindName.MatchString(name) {
		return "", fmt.Errorf("%q: %q is not a FileDescriptorName: expected systemd:NAME with 1 to 64 of A-Z a-z 0-9 _ . -", raw, name)
	}
	return name, nil
}

// parseUnixPath takes the path of unix:PATH, or of unix://PATH as Gunicorn
// writes it (unix:///run/app.sock is /run/app.sock).
func parseUnixPath(raw, addr string) (string, error) {
	path, ok := strings.CutPrefix(addr, "unix://")
	if !ok {
		path = strings.TrimPrefix(addr, "unix:")
	}
	switch {
	case path == "":
		return "", fmt.Errorf("%q has no socket path: expected unix:PATH", raw)
	case len(path) > maxUnixPath:
		return "", fmt.Errorf("%q: unix socket path is %d bytes, the limit is %d", raw, len(path), maxUnixPath)
	}
	return path, nil
}

// stdStreams names the fds that are never an inherited listener.
var stdStreams = []string{"stdin", "stdout", "stderr"}

// parseFD takes the N of fd://N: a listener baton inherited, so fd 3 or more.
func parseFD(raw, n string) (int, error) {
	fd, err := strconv.ParseInt(n, 10, 32)
	if err != nil || strings.Trim(n, "0123456789") != "" {
		return 0, fmt.Errorf("%q: %q is not an fd number: expected fd://N with N ≥ 3", raw, n)
	}
	if fd < 3 {
		return 0, fmt.Errorf("%q: fd %d is baton's %s, not an inherited listener: expected fd://N with N ≥ 3", raw, fd, stdStreams[fd])
	}
	return int(fd), nil
}

// parseHostPort checks HOST:PORT, [V6]:PORT or :PORT and returns it in a
// canonical form (IP addresses as netip writes them, the port in decimal).
func parseHostPort(raw, addr string) (string, error) {
	if scheme, _, ok := strings.Cut(addr, "://"); ok {
		return "", fmt.Errorf("%q: unknown scheme %q: %s", raw, scheme+"://", bindForms)
	}
	if !strings.Contains(addr, ":") || strings.HasSuffix(addr, ":") {
		return "", fmt.Errorf("%q has no port: %s", raw, bindForms)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		if !strings.HasPrefix(addr, "[") && strings.Count(addr, ":") > 1 {
			return "", fmt.Errorf("%q: an IPv6 address needs brackets: expected [V6]:PORT, like [::1]:8000", raw)
		}
		return "", fmt.Errorf("%q is not an address: %s", raw, bindForms)
	}
	n, err := parsePort(raw, port)
	if err != nil {
		return "", err
	}
	host, err = checkHost(raw, host, strings.HasPrefix(addr, "["))
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(host, strconv.Itoa(n)), nil
}

// parsePort takes a decimal port; 0 lets the kernel pick one.
func parsePort(raw, port string) (int, error) {
	if strings.Trim(port, "0123456789") != "" {
		return 0, fmt.Errorf("%q: port %q is not a number: expected 0 to 65535", raw, port)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n > 65535 {
		return 0, fmt.Errorf("%q: port %s is out of range: expected 0 to 65535", raw, port)
	}
	return n, nil
}

// checkHost accepts "" (all interfaces), an IP address (IPv6 only inside
// brackets) or a host name, and returns IPs in canonical form.
func checkHost(raw, host string, bracketed bool) (string, error) {
	if host == "" {
		return "", nil
	}
	ip, err := netip.ParseAddr(host)
	switch {
	case bracketed && (err != nil || !ip.Is6()):
		return "", fmt.Errorf("%q: %q is not an IPv6 address: brackets are for [V6]:PORT", raw, host)
	case err == nil:
		return ip.String(), nil
	case !isHostName(host):
		return "", fmt.Errorf("%q: %q is not an IP address or a host name", raw, host)
	}
	return host, nil
}

// isHostName reports whether s is a syntactically valid DNS name that does
// not look like a mistyped IPv4 address (its last label is not numeric).
func isHostName(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	labels := strings.Split(s, ".")
	for _, l := range labels {
		if len(l) == 0 || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		if strings.Trim(l, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-") != "" {
			return false
		}
	}
	return strings.Trim(labels[len(labels)-1], "0123456789") != ""
}
