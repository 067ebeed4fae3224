package sdnotify

import (
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The RELOADING=1 message, byte for byte: one assignment per line, no
// empty line (go-systemd's MONOTONIC_USEC value ends with a newline, which
// once made one).
func TestReloadingDatagramHasNoEmptyLine(t *testing.T) {
	got := Datagram(ReloadingAssignments("reloading to generation 2", 1234567)...)
	want := "RELOADING=1\nMONOTONIC_USEC=1234567\nSTATUS=reloading to generation 2"
	if got != want {
		t.Fatalf("datagram %q, want %q", got, want)
	}
}

// What systemd receives on its notify socket when baton reloads: read
// from a real datagram socket named by NOTIFY_SOCKET.
func TestReloadingSentToNotifySocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	before := monotonicUsec()
	if sent, err := (Systemd{}).Reloading("reloading to generation 7"); !sent || err != nil {
		t.Fatalf("Reloading: sent %v, err %v", sent, err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	msg := string(buf[:n])
	if !regexp.MustCompile(`^RELOADING=1\nMONOTONIC_USEC=[0-9]+\nSTATUS=reloading to generation 7$`).MatchString(msg) {
		t.Fatalf("systemd got %q", msg)
	}
	if strings.Contains(msg, "\n\n") {
		t.Errorf("empty line in %q", msg)
	}
	usec, err := strconv.ParseUint(Parse(buf[:n])["MONOTONIC_USEC"], 10, 64)
	if after := monotonicUsec(); err != nil || usec < before || usec > after {
		t.Errorf("MONOTONIC_USEC=%d (%v), want CLOCK_MONOTONIC's between %d and %d", usec, err, before, after)
	}
}
