//go:build systemdtier

package systemdtier

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/baton-pm/baton/e2e/internal/tiertest"
)

// appAddr is where contrib/systemd/app.socket listens, inside the
// container's own network namespace.
const appAddr = "127.0.0.1:8000"

// response is one answer of the tier's app: "gen=N pid=P".
type response struct {
	status  int
	gen     string
	pid     string
	latency time.Duration
}

// get makes one request on a fresh connection (no retry, no keep-alive)
// from inside the container's network.
func (c *container) get(path string, timeout time.Duration) (response, error) {
	start := time.Now()
	status, body, err := c.netns.Get(appAddr, path, timeout)
	r := response{status: status, latency: time.Since(start)}
	for _, f := range strings.Fields(body) {
		if k, v, ok := strings.Cut(f, "="); ok {
			switch k {
			case "gen":
				r.gen = v
			case "pid":
				r.pid = v
			}
		}
	}
	return r, err
}

// startLoad runs a request loop: clients that each make one request after
// another, every one on a fresh connection, with 2 ms between two. A
// success's detail is the generation that answered it.
func (c *container) startLoad(clients int, timeout time.Duration) *tiertest.Load {
	return tiertest.StartLoad(clients, 2*time.Millisecond, func() (string, string) {
		r, err := c.get("/", timeout)
		return tiertest.FailureKind(r.status, err), r.gen
	})
}

// loadResult is what a request loop saw.
type loadResult struct {
	ok         int
	failed     map[string]int
	gens       map[string]int
	maxLatency time.Duration
}

// resultOf sums up a stopped request loop: successes, failures by kind,
// answers by generation, and the slowest success.
func resultOf(outcomes []tiertest.Outcome) loadResult {
	all := tiertest.Count(outcomes, time.Time{}, time.Now())
	r := loadResult{ok: all.OK, failed: all.Failed, gens: all.Answers}
	for _, o := range outcomes {
		if o.Failure == "" {
			r.maxLatency = max(r.maxLatency, o.End.Sub(o.Start))
		}
	}
	return r
}

func (r loadResult) failures() int {
	n := 0
	for _, v := range r.failed {
		n += v
	}
	return n
}

func (r loadResult) String() string {
	var gens []string
	for g, n := range r.gens {
		gens = append(gens, fmt.Sprintf("gen %s: %d", g, n))
	}
	sort.Strings(gens)
	var failed []string
	for k, n := range r.failed {
		failed = append(failed, fmt.Sprintf("%s: %d", k, n))
	}
	slices.Sort(failed)
	return fmt.Sprintf("%d ok, %d failed %v, answers by generation [%s], slowest %v",
		r.ok, r.failures(), failed, strings.Join(gens, ", "), r.maxLatency.Round(time.Millisecond))
}
