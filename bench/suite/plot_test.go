package main

import (
	"image/png"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"gonum.org/v1/plot"
)

// synthRun makes n requests at a steady rate over dur: latencies around a
// millisecond with a long tail, a burst of slow requests and failures
// right after a reload at dur/2, and a few zero-latency refusals (which
// must land on the log axis' floor, not break it).
func synthRun(seed uint64, n int, dur time.Duration, failures int) []sample {
	r := rand.New(rand.NewPCG(seed, 1))
	reload := dur / 2
	ss := make([]sample, n)
	for i := range ss {
		start := time.Duration(int64(dur) * int64(i) / int64(n))
		ms := math.Exp(r.NormFloat64()*0.6) * 0.8
		if start > reload && start < reload+300*time.Millisecond {
			ms *= 40
		}
		ss[i] = sample{Seq: uint64(i), Start: start, Latency: time.Duration(ms * float64(time.Millisecond)), Code: 200, Kind: OK}
	}
	for f := range failures {
		i := int(int64(n)*int64(reload)/int64(dur)) + f*3
		if i >= n {
			break
		}
		ss[i].Code, ss[i].Err, ss[i].Kind = 0, "connection refused", Refused
		if f%4 == 0 { // a reset answers late; a refusal at once
			ss[i].Kind, ss[i].Err = Reset, "connection reset by peer"
		} else {
			ss[i].Latency = 0
		}
	}
	return ss
}

// pngSize decodes path as a PNG and returns its pixel size.
func pngSize(t *testing.T, path string) (w, h int) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("%s is not a PNG: %v", path, err)
	}
	b := img.Bounds()
	return b.Dx(), b.Dy()
}

func TestWriteLatencyPlot(t *testing.T) {
	dur := 20 * time.Second
	marks := []plotMark{{At: dur / 2, Label: "HUP"}, {At: dur/2 + 400*time.Millisecond, Label: "kill -9"}, {At: dur * 3 / 4}}
	spans := []plotSpan{{From: dur / 2, To: dur/2 + 900*time.Millisecond}}
	baton := plotPanel{Title: "baton · 0 failed", Samples: synthRun(1, 4000, dur, 0), Marks: marks, Spans: spans}
	other := plotPanel{Title: "gunicorn · 40 failed", Samples: synthRun(2, 4000, dur, 40), Marks: marks[:1]}

	cases := []struct {
		name   string
		panels []plotPanel
	}{
		{"two", []plotPanel{baton, other}},
		{"one", []plotPanel{other}},
		{"empty", []plotPanel{{Title: "no requests"}}}, // a run that got nothing must still plot
	}
	dir := t.TempDir()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(dir, c.name+".png")
			if err := writeLatencyPlot(path, "HUP under load", c.panels); err != nil {
				t.Fatal(err)
			}
			w, h := pngSize(t, path)
			want := float64(plotPanelWidth*len(c.panels)) / plotHeight
			if got := float64(w) / float64(h); math.Abs(got-want) > 0.01 {
				t.Errorf("size %dx%d: ratio %.3f, want %.3f", w, h, got, want)
			}
			if h < 500 {
				t.Errorf("height %d px: too small to read", h)
			}
		})
	}

	if err := writeLatencyPlot(filepath.Join(dir, "none.png"), "x", nil); err == nil {
		t.Error("no panels: want an error")
	}
}

func TestPlotTicks(t *testing.T) {
	labels := func(ts []plot.Tick) (ls []string) {
		for _, tk := range ts {
			if tk.Label != "" {
				ls = append(ls, tk.Label)
			}
		}
		return ls
	}
	// The floor of the log axis must be labelled (plot.LogTicks misses it).
	if got, want := labels(logMsTicks{}.Ticks(0.1, 400)), []string{"0.1", "1", "10", "100"}; !slices.Equal(got, want) {
		t.Errorf("latency ticks %v, want %v", got, want)
	}
	if got, want := labels(secondTicks{}.Ticks(0, 60)), []string{"0", "10", "20", "30", "40", "50", "60"}; !slices.Equal(got, want) {
		t.Errorf("time ticks %v, want %v", got, want)
	}
	if got, want := labels(secondTicks{}.Ticks(0, 1.2)), []string{"0", "0.2", "0.4", "0.6", "0.8", "1", "1.2"}; !slices.Equal(got, want) {
		t.Errorf("time ticks %v, want %v", got, want)
	}
}

// TestPlotSample writes a full-size example (20,000 points a panel) to
// $PLOT_SAMPLE, for a person to look at; skipped without it.
func TestPlotSample(t *testing.T) {
	path := os.Getenv("PLOT_SAMPLE")
	if path == "" {
		t.Skip("set PLOT_SAMPLE=/tmp/plot-sample.png to write an example plot")
	}
	dur := 60 * time.Second
	marks := []plotMark{{At: 30 * time.Second, Label: "HUP"}, {At: 30*time.Second + 800*time.Millisecond, Label: "kill -9"}, {At: 45 * time.Second, Label: "USR2"}}
	spans := []plotSpan{{From: 30 * time.Second, To: 31500 * time.Millisecond}}
	panels := []plotPanel{
		{Title: "baton · 0 failed", Samples: synthRun(1, 20000, dur, 0), Marks: marks, Spans: spans},
		{Title: "gunicorn · 60 failed", Samples: synthRun(2, 20000, dur, 60), Marks: marks},
	}
	start := time.Now()
	if err := writeLatencyPlot(path, "HUP under load, 333 req/s", panels); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s in %v", path, time.Since(start))
}
