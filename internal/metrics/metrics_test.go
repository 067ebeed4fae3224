package metrics

import (
	"math"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape fetches /metrics and parses the text exposition format.
func scrape(t *testing.T, base string) map[string]*dto.MetricFamily {
	t.Helper()
	code, _, body := do(t, http.MethodGet, base+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: status %d: %s", code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parsing /metrics: %v\n%s", err, body)
	}
	return fams
}

// family returns the named family, checking its type and that it has help.
func family(t *testing.T, fams map[string]*dto.MetricFamily, name string, typ dto.MetricType) *dto.MetricFamily {
	t.Helper()
	f, ok := fams[name]
	if !ok {
		t.Fatalf("metric family %s missing", name)
	}
	if f.GetType() != typ {
		t.Errorf("%s: type %v, want %v", name, f.GetType(), typ)
	}
	if f.GetHelp() == "" {
		t.Errorf("%s: no HELP text", name)
	}
	return f
}

// byLabels indexes a family's metrics by their label values joined with ",",
// in the order of the given label names.
func byLabels(f *dto.MetricFamily, names ...string) map[string]*dto.Metric {
	out := map[string]*dto.Metric{}
	for _, m := range f.GetMetric() {
		vals := make([]string, len(names))
		for i, n := range names {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == n {
					vals[i] = lp.GetValue()
				}
			}
		}
		out[strings.Join(vals, ",")] = m
	}
	return out
}

func keys(m map[string]*dto.Metric) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func gaugeValue(t *testing.T, fams map[string]*dto.MetricFamily, name string) float64 {
	t.Helper()
	f := family(t, fams, name, dto.MetricType_GAUGE)
	if len(f.GetMetric()) != 1 {
		t.Fatalf("%s: %d series, want 1", name, len(f.GetMetric()))
	}
	return f.GetMetric()[0].GetGauge().GetValue()
}

func TestEventMetrics(t *testing.T) {
	m := New()
	base := start(t, m, &fakeSource{snap: typicalSnapshot()})

	m.ReloadFinished(true, 300*time.Millisecond)
	m.ReloadFinished(true, 2*time.Second)
	m.ReloadFinished(false, 90*time.Second)
	m.ReloadRejected()
	m.WorkerRestarted("crash")
	m.WorkerRestarted("crash")
	m.WorkerRestarted("memory")
	m.WorkerBooted(40 * time.Millisecond)
	m.WorkerBooted(1500 * time.Millisecond)
	m.NotifyRejected(1)
	m.NotifyRejected(41)

	fams := scrape(t, base)

	if got := family(t, fams, "baton_notify_rejected_total", dto.MetricType_COUNTER).GetMetric()[0].GetCounter().GetValue(); got != 42 {
		t.Errorf("baton_notify_rejected_total = %v, want 42", got)
	}

	reloads := byLabels(family(t, fams, "baton_reloads_total", dto.MetricType_COUNTER), "result")
	checkCounters(t, "baton_reloads_total", reloads, map[string]float64{"success": 2, "failure": 2})

	restarts := byLabels(family(t, fams, "baton_worker_restarts_total", dto.MetricType_COUNTER), "reason")
	checkCounters(t, "baton_worker_restarts_total", restarts, map[string]float64{
		"crash": 2, "memory": 1, "boot_failure": 0, "watchdog": 0, "age": 0,
	})

	// The rejected reload has no duration: three observations, not four.
	rd := family(t, fams, "baton_reload_duration_seconds", dto.MetricType_HISTOGRAM).GetMetric()[0].GetHistogram()
	checkHistogram(t, "baton_reload_duration_seconds", rd, 3, 92.3, 0.05, 120)

	bd := family(t, fams, "baton_worker_boot_seconds", dto.MetricType_HISTOGRAM).GetMetric()[0].GetHistogram()
	checkHistogram(t, "baton_worker_boot_seconds", bd, 2, 1.54, 0.01, 120)
}

func checkCounters(t *testing.T, name string, got map[string]*dto.Metric, want map[string]float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: label values %v, want %d of them", name, keys(got), len(want))
	}
	for label, v := range want {
		m, ok := got[label]
		if !ok {
			t.Errorf("%s{%s}: missing", name, label)
			continue
		}
		if g := m.GetCounter().GetValue(); g != v {
			t.Errorf("%s{%s} = %v, want %v", name, label, g, v)
		}
	}
}

func checkHistogram(t *testing.T, name string, h *dto.Histogram, count uint64, sum, lo, hi float64) {
	t.Helper()
	if h.GetSampleCount() != count {
		t.Errorf("%s count = %d, want %d", name, h.GetSampleCount(), count)
	}
	if d := h.GetSampleSum() - sum; d > 1e-9 || d < -1e-9 {
		t.Errorf("%s sum = %v, want %v", name, h.GetSampleSum(), sum)
	}
	// The text format lists the +Inf bucket too; the last finite one is hi.
	b := h.GetBucket()
	if n := len(b); n > 0 && math.IsInf(b[n-1].GetUpperBound(), +1) {
		b = b[:n-1]
	}
	if len(b) == 0 || b[0].GetUpperBound() != lo || b[len(b)-1].GetUpperBound() != hi {
		t.Errorf("%s buckets %v, want %v .. %v", name, b, lo, hi)
	}
}

func TestSnapshotMetrics(t *testing.T) {
	src := &fakeSource{snap: typicalSnapshot()}
	base := start(t, New(), src)

	fams := scrape(t, base)
	workers := byLabels(family(t, fams, "baton_workers", dto.MetricType_GAUGE), "state", "generation")
	want := map[string]float64{
		"ready,3": 2, "draining,2": 1,
		// the current generation has a series for every state, even at zero
		"starting,3": 0, "draining,3": 0,
	}
	if len(workers) != len(want) {
		t.Errorf("baton_workers series %v, want %d", keys(workers), len(want))
	}
	for k, v := range want {
		if m, ok := workers[k]; !ok || m.GetGauge().GetValue() != v {
			t.Errorf("baton_workers{state,generation=%s} = %v (present %v), want %v", k, m.GetGauge().GetValue(), ok, v)
		}
	}
	if g := gaugeValue(t, fams, "baton_generation"); g != 3 {
		t.Errorf("baton_generation = %v, want 3", g)
	}
	if g := gaugeValue(t, fams, "baton_shutting_down"); g != 0 {
		t.Errorf("baton_shutting_down = %v, want 0", g)
	}
	if g := gaugeValue(t, fams, "baton_worker_rss_bytes"); g != 310<<20 {
		t.Errorf("baton_worker_rss_bytes = %v, want %v", g, 310<<20)
	}

	src.set(func(f *fakeSource) { f.snap.ShuttingDown = true })
	if g := gaugeValue(t, scrape(t, base), "baton_shutting_down"); g != 1 {
		t.Errorf("baton_shutting_down = %v after shutdown began, want 1", g)
	}
}

func TestProcessMetrics(t *testing.T) {
	fams := scrape(t, start(t, New(), &fakeSource{snap: typicalSnapshot()}))
	for _, name := range []string{"process_resident_memory_bytes", "process_open_fds"} {
		if g := gaugeValue(t, fams, name); g <= 0 {
			t.Errorf("%s = %v, want > 0", name, g)
		}
	}
	if _, ok := fams["go_goroutines"]; !ok {
		t.Error("go_goroutines missing: Go collector not registered")
	}
}

// A master that does not answer (it is exiting) must not fail the scrape:
// the snapshot metrics are left out and everything else is still served.
func TestScrapeWithStuckMaster(t *testing.T) {
	m := New()
	m.probeTimeout = 50 * time.Millisecond
	base := start(t, m, &fakeSource{block: true})
	m.WorkerRestarted("watchdog")

	fams := scrape(t, base)
	for _, name := range []string{"baton_workers", "baton_generation", "baton_shutting_down", "baton_worker_rss_bytes"} {
		if _, ok := fams[name]; ok {
			t.Errorf("%s exported although Snapshot failed", name)
		}
	}
	for _, name := range []string{"baton_worker_restarts_total", "process_resident_memory_bytes"} {
		if _, ok := fams[name]; !ok {
			t.Errorf("%s missing when Snapshot failed", name)
		}
	}
}

// The collectors live on a private registry: two Metrics in one process (as
// in tests, or a re-created server) must not collide, and nothing leaks into
// the default registry.
func TestPrivateRegistry(t *testing.T) {
	New()
	New()
	got, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range got {
		if strings.HasPrefix(f.GetName(), "baton_") {
			t.Errorf("%s registered on the default registry", f.GetName())
		}
	}
}
