package sdnotify

// Benchmarks of the receiving side of a worker's notifications, through the
// API the master uses (Listen, Addr, Receive, Close). They run only with
// -bench:
//
//	go test -run='^$' -bench=. -count=10 ./internal/sdnotify/

import (
	"net"
	"os"
	"testing"
	"time"
)

// benchDir is a Dir in the benchmark's temp dir.
func benchDir(b *testing.B) *Dir {
	b.Setenv("RUNTIME_DIRECTORY", b.TempDir())
	d, err := NewDir()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { d.Close() })
	return d
}

// benchMessages are what workers send most: the READY=1 of a boot (with the
// STATUS= many servers add), a gunicorn-like status line, and the worker
// watchdog's ping, the one message a healthy worker keeps sending.
var benchMessages = []struct{ name, data string }{
	{"ready-status", "READY=1\nSTATUS=x"},
	{"status-long", "READY=1\nSTATUS=Gunicorn arbiter booted, 4 workers serving on 0.0.0.0:8000\nMAINPID=4242"},
	{"watchdog", "WATCHDOG=1"},
}

// BenchmarkParse measures turning one datagram into its fields, which
// Receive does for every message.
func BenchmarkParse(b *testing.B) {
	for _, msg := range benchMessages {
		b.Run("msg="+msg.name, func(b *testing.B) {
			b.ReportAllocs()
			data := []byte(msg.data)
			for b.Loop() {
				if len(Parse(data)) == 0 {
					b.Fatal("no fields parsed")
				}
			}
		})
	}
}

// BenchmarkReceive measures a notification's round trip: a worker's
// datagram written to its notify socket (a real abstract unix datagram
// socket with SO_PASSCRED in a Dir), read with the sender's credentials,
// parsed, checked (the sender is this process) and handed to the handler, up to the moment the sender learns it
// was handled. One message is in flight at a time, as from one worker.
// The master's own handler, through its event loop, is measured by
// internal/master's BenchmarkNotify.
func BenchmarkReceive(b *testing.B) {
	for _, msg := range benchMessages {
		b.Run("msg="+msg.name, func(b *testing.B) {
			b.ReportAllocs()
			s, err := benchDir(b).Listen(nil)
			if err != nil {
				b.Fatal(err)
			}
			handled := make(chan Message, 1)
			received := make(chan struct{})
			self := os.Getpid()
			go func() {
				defer close(received)
				s.Receive(func(pid int) bool { return pid == self }, func(m Message) { handled <- m },
					func(m Message) { b.Errorf("rejected a message from pid %d uid %d", m.Pid, m.Uid) })
			}()
			// Close ends Receive; wait for it so no goroutine outlives
			// the benchmark.
			b.Cleanup(func() {
				s.Close()
				<-received
			})

			// What sd_notify(3) does: a datagram to NOTIFY_SOCKET, from
			// an unbound socket.
			conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: s.Addr(), Net: "unixgram"})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { conn.Close() })

			data := []byte(msg.data)
			timeout := time.NewTimer(time.Hour)
			defer timeout.Stop()
			var last Message
			for b.Loop() {
				if _, err := conn.Write(data); err != nil {
					b.Fatal(err)
				}
				timeout.Reset(10 * time.Second)
				select {
				case last = <-handled:
				case <-timeout.C:
					b.Fatal("message not handled within 10s")
				}
			}
			if len(last.Fields) == 0 || last.Pid <= 0 {
				b.Fatalf("last message = %+v, want fields and the sender's pid", last)
			}
		})
	}
}

// BenchmarkListenClose measures opening and closing one worker's notify
// socket, which the master does for every worker it starts.
func BenchmarkListenClose(b *testing.B) {
	b.ReportAllocs()
	d := benchDir(b)
	for b.Loop() {
		s, err := d.Listen(nil)
		if err != nil {
			b.Fatal(err)
		}
		s.Close()
	}
}
