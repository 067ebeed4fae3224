package master

import (
	"testing"
	"time"
)

func TestBackoffDoublesFrom100msAndCapsAt30s(t *testing.T) {
	want := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond}
	for i, w := range want {
		if got := backoff(i + 1); got != w {
			t.Errorf("backoff(%d) = %v, want %v", i+1, got, w)
		}
	}
	for _, n := range []int{10, 20, 1000} {
		if got := backoff(n); got != 30*time.Second {
			t.Errorf("backoff(%d) = %v, want the 30s cap", n, got)
		}
	}
}
