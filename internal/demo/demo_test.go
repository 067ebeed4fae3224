package demo

import (
	"fmt"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
)

func TestHelloSaysWhoServed(t *testing.T) {
	t.Setenv("BATON_WORKER_ID", "2")
	t.Setenv("BATON_GENERATION", "1")
	rec := httptest.NewRecorder()
	hello(rec, httptest.NewRequest("GET", "/", nil))

	want := fmt.Sprintf("hello from baton worker 2 (pid %d, generation 1)\n", os.Getpid())
	if got := rec.Body.String(); got != want {
		t.Errorf("GET / = %q, want %q", got, want)
	}
}

func TestRunNeedsBaton(t *testing.T) {
	t.Setenv("LISTEN_PID", "")
	err := Run()
	if err == nil || !strings.Contains(err.Error(), "no LISTEN_FDS") {
		t.Fatalf("Run() without inherited listeners = %v, want the no LISTEN_FDS error", err)
	}
}
