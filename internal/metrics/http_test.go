package metrics

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestReadyz(t *testing.T) {
	src := &fakeSource{snap: typicalSnapshot()}
	base := start(t, New(), src)

	expect(t, base+"/readyz", http.StatusOK, "ready")

	src.set(func(f *fakeSource) { f.snap.ShuttingDown = true })
	expect(t, base+"/readyz", http.StatusServiceUnavailable, "shutting down")

	// The lame-duck delay: ready workers, still 503.
	src.set(func(f *fakeSource) { f.snap.LameDuckLeft = 3240 * time.Millisecond })
	expect(t, base+"/readyz", http.StatusServiceUnavailable, "shutting down (lame duck: the workers serve for 3.2s more)")

	src.set(func(f *fakeSource) {
		f.snap = Snapshot{Generation: 4, Workers: []Worker{
			{Generation: 4, State: StateStarting},
			{Generation: 3, State: StateDraining},
		}}
	})
	expect(t, base+"/readyz", http.StatusServiceUnavailable, "no ready worker")

	src.set(func(f *fakeSource) { f.snap = Snapshot{Generation: 1} })
	expect(t, base+"/readyz", http.StatusServiceUnavailable, "no ready worker")
}

func TestHealthz(t *testing.T) {
	m := New()
	m.probeTimeout = 50 * time.Millisecond
	src := &fakeSource{snap: Snapshot{Generation: 1}} // no workers: still alive
	base := start(t, m, src)

	expect(t, base+"/healthz", http.StatusOK, "ok")

	src.set(func(f *fakeSource) { f.block = true })
	start := time.Now()
	code, _, body := do(t, http.MethodGet, base+"/healthz")
	if code != http.StatusServiceUnavailable {
		t.Errorf("/healthz with a stuck master: %d %q, want 503", code, body)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("/healthz took %v: the probe timeout was not honoured", d)
	}
	// readyz must not say "ready" for a master it cannot reach either.
	if code, _, _ := do(t, http.MethodGet, base+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz with a stuck master: %d, want 503", code)
	}
}

// The probes a load balancer polls every few seconds must not make the
// master walk /proc for memory readings: they ask Health, never Snapshot.
func TestProbesReadNoMemory(t *testing.T) {
	src := &fakeSource{snap: typicalSnapshot()}
	base := start(t, New(), src)
	expect(t, base+"/readyz", http.StatusOK, "ready")
	expect(t, base+"/healthz", http.StatusOK, "ok")
	src.set(func(f *fakeSource) {
		if f.snapCalls != 0 || f.healthCalls != 2 {
			t.Errorf("probes made %d Snapshot and %d Health calls, want 0 and 2", f.snapCalls, f.healthCalls)
		}
	})
}

func TestProbeTimeoutDefault(t *testing.T) {
	if got := New().probeTimeout; got != 2*time.Second {
		t.Errorf("probe timeout %v, want 2s", got)
	}
}

func TestStatus(t *testing.T) {
	const doc = `{"generation":3,"workers":[{"pid":42,"state":"ready"}]}`
	src := &fakeSource{status: []byte(doc)}
	base := start(t, New(), src)

	code, hdr, body := do(t, http.MethodGet, base+"/status")
	if code != http.StatusOK || body != doc {
		t.Errorf("/status: %d %q, want 200 %q", code, body, doc)
	}
	if ct := hdr.Get("Content-Type"); ct != "application/json" {
		t.Errorf("/status Content-Type %q, want application/json", ct)
	}
	if !json.Valid([]byte(body)) {
		t.Errorf("/status body is not JSON: %q", body)
	}

	src.set(func(f *fakeSource) { f.err = errors.New("master exiting") })
	code, _, body = do(t, http.MethodGet, base+"/status")
	if code != http.StatusServiceUnavailable {
		t.Errorf("/status on error: %d %q, want 503", code, body)
	}
}

func TestRoutingAndMethods(t *testing.T) {
	base := start(t, New(), &fakeSource{snap: typicalSnapshot(), status: []byte(`{}`)})

	for _, path := range []string{"/", "/metricsx", "/metrics/", "/readyz/extra", "/nope"} {
		if code, _, _ := do(t, http.MethodGet, base+path); code != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", path, code)
		}
	}
	for _, path := range []string{"/metrics", "/healthz", "/readyz", "/status"} {
		for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
			code, hdr, _ := do(t, method, base+path)
			if code != http.StatusMethodNotAllowed {
				t.Errorf("%s %s: %d, want 405", method, path, code)
			}
			if allow := hdr.Get("Allow"); !strings.Contains(allow, "GET") {
				t.Errorf("%s %s: Allow %q, want GET listed", method, path, allow)
			}
		}
		code, _, body := do(t, http.MethodHead, base+path)
		if code != http.StatusOK || body != "" {
			t.Errorf("HEAD %s: %d with %d body bytes, want 200 and none", path, code, len(body))
		}
	}
}

// expect checks a probe's status and its one-line reason.
func expect(t *testing.T, url string, code int, line string) {
	t.Helper()
	gotCode, hdr, body := do(t, http.MethodGet, url)
	if gotCode != code || strings.TrimSpace(body) != line {
		t.Errorf("GET %s: %d %q, want %d %q", url, gotCode, body, code, line)
	}
	if cc := hdr.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("GET %s: Cache-Control %q, want no-store", url, cc)
	}
}
