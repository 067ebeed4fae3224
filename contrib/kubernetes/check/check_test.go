package check

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

// manifests is every object of contrib/kubernetes/*.yaml, by kind.
type manifests struct {
	configMaps  []*corev1.ConfigMap
	deployments []*appsv1.Deployment
	services    []*corev1.Service
	budgets     []*policyv1.PodDisruptionBudget
}

// documentSeparator is a YAML document separator line.
var documentSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// load decodes every document of the manifest files strictly.
func load(t *testing.T) manifests {
	t.Helper()
	files, err := filepath.Glob("../*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in contrib/kubernetes: %v", err)
	}
	var m manifests
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range documentSeparator.Split(string(data), -1) {
			if err := m.add([]byte(doc)); err != nil {
				t.Errorf("%s, document %d: %v", file, i+1, err)
			}
		}
	}
	return m
}

// add decodes one document into the type its apiVersion and kind name.
func (m *manifests) add(doc []byte) error {
	var head struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := yaml.Unmarshal(doc, &head); err != nil {
		return err
	}
	if head.Kind == "" && len(bytes.TrimSpace(stripComments(doc))) == 0 {
		return nil // only comments
	}
	strict := func(v any) error { return yaml.UnmarshalStrict(doc, v) }
	switch head.APIVersion + " " + head.Kind {
	case "v1 ConfigMap":
		o := &corev1.ConfigMap{}
		m.configMaps = append(m.configMaps, o)
		return strict(o)
	case "apps/v1 Deployment":
		o := &appsv1.Deployment{}
		m.deployments = append(m.deployments, o)
		return strict(o)
	case "v1 Service":
		o := &corev1.Service{}
		m.services = append(m.services, o)
		return strict(o)
	case "policy/v1 PodDisruptionBudget":
		o := &policyv1.PodDisruptionBudget{}
		m.budgets = append(m.budgets, o)
		return strict(o)
	}
	return fmt.Errorf("apiVersion %q kind %q: not a kind this check knows", head.APIVersion, head.Kind)
}

func stripComments(doc []byte) []byte {
	var out []byte
	for _, line := range bytes.Split(doc, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(line), []byte("#")) {
			out = append(append(out, line...), '\n')
		}
	}
	return out
}

// batonConfig is what `baton check` says the ConfigMap's baton.toml means.
type batonConfig struct {
	Bind            []string `toml:"bind"`
	MetricsBind     string   `toml:"metrics_bind"`
	ShutdownDelay   string   `toml:"shutdown_delay"`
	GracefulTimeout string   `toml:"graceful_timeout"`
}

// buildBaton builds baton from this repository.
func buildBaton(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "baton")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/baton")
	cmd.Dir = "../../.."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building baton: %v\n%s", err, out)
	}
	return bin
}

// checkConfig runs `baton check` on text, a config file, and returns the
// effective configuration it prints.
func checkConfig(t *testing.T, baton, text string) batonConfig {
	t.Helper()
	path := filepath.Join(t.TempDir(), "baton.toml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(baton, "check", "-c", path)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("baton check of the ConfigMap's baton.toml: %v\n%s", err, stderr.String())
	}
	var c batonConfig
	if _, err := toml.Decode(stdout.String(), &c); err != nil {
		t.Fatalf("baton check's output is not TOML: %v\n%s", err, stdout.String())
	}
	return c
}

func TestManifests(t *testing.T) {
	m := load(t)
	if len(m.configMaps) != 1 || len(m.deployments) != 1 || len(m.services) != 1 || len(m.budgets) != 1 {
		t.Fatalf("want one ConfigMap, Deployment, Service and PodDisruptionBudget; got %d, %d, %d, %d",
			len(m.configMaps), len(m.deployments), len(m.services), len(m.budgets))
	}
	cm, d, svc, pdb := m.configMaps[0], m.deployments[0], m.services[0], m.budgets[0]
	pod := d.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers in the pod, want one: one baton per pod", len(pod.Containers))
	}
	c := pod.Containers[0]

	// The config: where the container reads it, and what it means.
	if len(c.Command) != 4 || c.Command[0] != "baton" || c.Command[1] != "run" || c.Command[2] != "-c" || len(c.Args) != 0 {
		t.Fatalf("container command %q args %q, want baton run -c FILE and nothing else", c.Command, c.Args)
	}
	file := c.Command[3]
	mount := mountOf(t, c, pod, filepath.Dir(file))
	if mount.ConfigMap == nil || mount.ConfigMap.Name != cm.Name {
		t.Fatalf("%s is not mounted from ConfigMap %s", filepath.Dir(file), cm.Name)
	}
	text, ok := cm.Data[filepath.Base(file)]
	if !ok {
		t.Fatalf("ConfigMap %s has no key %s for %s", cm.Name, filepath.Base(file), file)
	}
	cfg := checkConfig(t, buildBaton(t), text)

	// The arithmetic: the kubelet must not kill the pod during its drain.
	delay, graceful := duration(t, "shutdown_delay", cfg.ShutdownDelay), duration(t, "graceful_timeout", cfg.GracefulTimeout)
	if delay <= 0 {
		t.Errorf("shutdown_delay is %v: the pod would stop accepting while endpoints still route to it", delay)
	}
	grace := pod.TerminationGracePeriodSeconds
	if grace == nil || time.Duration(*grace)*time.Second <= delay+graceful {
		t.Errorf("terminationGracePeriodSeconds %v must exceed shutdown_delay + graceful_timeout = %v", deref(grace), delay+graceful)
	}
	if c.Lifecycle != nil && c.Lifecycle.PreStop != nil {
		t.Errorf("a preStop hook: shutdown_delay makes it needless, and its time would count against the grace period")
	}

	// Ports: the app's and the probes' are baton's.
	appPort, metricsPort := port(t, "bind", cfg.Bind[0]), port(t, "metrics_bind", cfg.MetricsBind)
	if p := namedPort(t, c, svc.Spec.Ports[0].TargetPort.String()); p != appPort {
		t.Errorf("the Service's targetPort is container port %d, baton binds %d", p, appPort)
	}
	for _, probe := range []struct {
		name, path string
		p          *corev1.Probe
	}{{"readinessProbe", "/readyz", c.ReadinessProbe}, {"livenessProbe", "/healthz", c.LivenessProbe}} {
		if probe.p == nil || probe.p.HTTPGet == nil {
			t.Errorf("%s: want an httpGet of %s", probe.name, probe.path)
			continue
		}
		if probe.p.HTTPGet.Path != probe.path {
			t.Errorf("%s: path %s, want %s", probe.name, probe.p.HTTPGet.Path, probe.path)
		}
		if p := namedPort(t, c, probe.p.HTTPGet.Port.String()); p != metricsPort {
			t.Errorf("%s: port %d, but metrics_bind is port %d", probe.name, p, metricsPort)
		}
	}

	// Selectors: the Deployment's, the Service's and the budget's pick the pods.
	labels := d.Spec.Template.Labels
	for what, sel := range map[string]map[string]string{
		"the Deployment's selector": d.Spec.Selector.MatchLabels, "the Service's selector": svc.Spec.Selector,
		"the PodDisruptionBudget's selector": pdb.Spec.Selector.MatchLabels,
	} {
		if len(sel) == 0 {
			t.Errorf("%s is empty", what)
		}
		for k, v := range sel {
			if labels[k] != v {
				t.Errorf("%s wants %s=%s; the pod template's labels are %v", what, k, v, labels)
			}
		}
	}
	if r := d.Spec.Replicas; r == nil || pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() >= int(*r) {
		t.Errorf("the PodDisruptionBudget's minAvailable must be below the replicas, or no node can be drained")
	}
	t.Logf("terminationGracePeriodSeconds %v; shutdown_delay %v + graceful_timeout %v = %v; app port %d, probes on %d",
		deref(grace), delay, graceful, delay+graceful, appPort, metricsPort)
}

// TestTheRecipeRunsTheConfiguredBaton: the image the Deployment names is the
// container recipe's, and its baton is where the command says.
func TestTheRecipeRunsTheConfiguredBaton(t *testing.T) {
	recipe, err := os.ReadFile("../../../examples/container/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	d := load(t).deployments[0]
	image := d.Spec.Template.Spec.Containers[0].Image
	if !strings.Contains(string(recipe), "-t "+strings.TrimSuffix(image, ":latest")+" ") {
		t.Errorf("the Deployment's image %s is not the tag the recipe's build command gives", image)
	}
	if !strings.Contains(string(recipe), "/usr/local/bin/baton") {
		t.Errorf("the recipe puts no baton on PATH (/usr/local/bin/baton), which the command runs")
	}
}

func mountOf(t *testing.T, c corev1.Container, pod corev1.PodSpec, dir string) corev1.VolumeSource {
	t.Helper()
	i := slices.IndexFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == dir })
	if i < 0 {
		t.Fatalf("nothing is mounted at %s", dir)
	}
	j := slices.IndexFunc(pod.Volumes, func(v corev1.Volume) bool { return v.Name == c.VolumeMounts[i].Name })
	if j < 0 {
		t.Fatalf("volume %s is mounted but not defined", c.VolumeMounts[i].Name)
	}
	return pod.Volumes[j].VolumeSource
}

// namedPort resolves a probe's or Service's port (a name or a number) to a
// container port.
func namedPort(t *testing.T, c corev1.Container, name string) int {
	t.Helper()
	if n, err := strconv.Atoi(name); err == nil {
		return n
	}
	for _, p := range c.Ports {
		if p.Name == name {
			return int(p.ContainerPort)
		}
	}
	t.Fatalf("the container has no port named %q", name)
	return 0
}

func port(t *testing.T, key, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	n, perr := strconv.Atoi(p)
	if err != nil || perr != nil {
		t.Fatalf("%s = %q: not HOST:PORT", key, addr)
	}
	return n
}

func duration(t *testing.T, key, s string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatalf("%s = %q: %v", key, s, err)
	}
	return d
}

func deref(p *int64) any {
	if p == nil {
		return "(unset)"
	}
	return *p
}
