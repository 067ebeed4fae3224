package metrics

import (
	"net"
	"net/http"
	"strings"
	"testing"
)

func TestServeAddrInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	_, err = Serve(ln.Addr().String(), http.NotFoundHandler(), nil)
	if err == nil {
		t.Fatal("Serve on a busy address succeeded")
	}
	if !strings.Contains(err.Error(), "already in use") || !strings.Contains(err.Error(), ln.Addr().String()) {
		t.Errorf("error %q should name the address and say it is in use", err)
	}
}

func TestServeClose(t *testing.T) {
	srv, err := Serve("127.0.0.1:0", http.NotFoundHandler(), nil)
	if err != nil {
		t.Fatal(err)
	}
	addr := srv.Addr()
	if strings.HasSuffix(addr, ":0") {
		t.Fatalf("Addr() = %s, want the real port", addr)
	}
	if err := srv.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := srv.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	// The port is free again: Close released the listener.
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("port still held after Close: %v", err)
	}
	ln.Close()
}

func TestServerTimeouts(t *testing.T) {
	srv, err := Serve("127.0.0.1:0", http.NotFoundHandler(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	s := srv.srv
	if s.ReadHeaderTimeout <= 0 || s.ReadTimeout <= 0 || s.WriteTimeout <= probeTimeout || s.IdleTimeout <= 0 {
		t.Errorf("timeouts not set: header %v read %v write %v idle %v",
			s.ReadHeaderTimeout, s.ReadTimeout, s.WriteTimeout, s.IdleTimeout)
	}
}
