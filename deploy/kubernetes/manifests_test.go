// Package kubernetes_test checks pj's Kubernetes manifests by decoding
// them strictly into the API's own types (an unknown or misspelt field is
// an error, as `kubectl apply --validate=strict` makes it) and checking
// what running pj there needs. Only this test imports the Kubernetes API:
// pj itself does not.
package kubernetes_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"

	"github.com/pj-proxy/pj/internal/config"
)

// kustomization is the part of kustomize's Kustomization these manifests
// use; decoding into it strictly catches any other field.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
	Images     []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
	} `json:"images"`
}

// manifests holds the decoded objects of the kustomization.
type manifests struct {
	deployment *appsv1.Deployment
	configMap  *corev1.ConfigMap
	service    *corev1.Service
	pdb        *policyv1.PodDisruptionBudget
}

func decoder(t *testing.T) runtime.Decoder {
	t.Helper()
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{appsv1.AddToScheme, corev1.AddToScheme, policyv1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	return serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
}

// load decodes every resource the kustomization lists, strictly.
func load(t *testing.T) manifests {
	t.Helper()
	data, err := os.ReadFile("kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		t.Fatal(err)
	}
	var k kustomization
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		t.Fatalf("kustomization.yaml: %s %s, want kustomize.config.k8s.io/v1beta1 Kustomization", k.APIVersion, k.Kind)
	}
	if len(k.Images) != 1 || k.Images[0].Name != "pj" {
		t.Errorf("kustomization.yaml: images %+v, want one entry for pj, to point at a registry", k.Images)
	}

	var m manifests
	d := decoder(t)
	for _, res := range k.Resources {
		data, err := os.ReadFile(res)
		if err != nil {
			t.Fatalf("kustomization.yaml lists %s: %v", res, err)
		}
		for i, doc := range bytes.Split(data, []byte("\n---\n")) {
			obj, _, err := d.Decode(doc, nil, nil)
			if err != nil {
				t.Fatalf("%s, document %d: %v", res, i+1, err)
			}
			switch o := obj.(type) {
			case *appsv1.Deployment:
				m.deployment = o
			case *corev1.ConfigMap:
				m.configMap = o
			case *corev1.Service:
				m.service = o
			case *policyv1.PodDisruptionBudget:
				m.pdb = o
			default:
				t.Fatalf("%s: unexpected %T", res, obj)
			}
		}
	}
	if m.deployment == nil || m.configMap == nil || m.service == nil || m.pdb == nil {
		t.Fatalf("the kustomization lacks a Deployment, ConfigMap, Service or PodDisruptionBudget: %+v", m)
	}

	// Every manifest of the folder but the example backend is in the
	// kustomization.
	files, _ := filepath.Glob("*.yaml")
	for _, f := range files {
		if f != "kustomization.yaml" && f != "example-backend.yaml" && !slices.Contains(k.Resources, f) {
			t.Errorf("%s is not listed in kustomization.yaml", f)
		}
	}
	return m
}

// pjConfig decodes the pj.yaml the ConfigMap holds, as pj would.
func pjConfig(t *testing.T, cm *corev1.ConfigMap) config.Config {
	t.Helper()
	text, ok := cm.Data["pj.yaml"]
	if !ok {
		t.Fatal("the ConfigMap has no pj.yaml")
	}
	cfg, err := config.Decode("pj.yaml", []byte(text), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatalf("the ConfigMap's pj.yaml: %v", err)
	}
	return cfg
}

func TestDeployment(t *testing.T) {
	m := load(t)
	cfg := pjConfig(t, m.configMap)
	d := m.deployment
	spec := d.Spec.Template.Spec

	if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
		t.Errorf("replicas %v, want 2", d.Spec.Replicas)
	}
	if ru := d.Spec.Strategy.RollingUpdate; ru == nil || ru.MaxUnavailable == nil || ru.MaxUnavailable.IntValue() != 0 {
		t.Errorf("rolling update %+v: want maxUnavailable 0, a new replica ready before an old one goes", ru)
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(spec.Containers))
	}
	c := spec.Containers[0]
	if c.Image != "pj:latest" {
		t.Errorf("image %q, want pj:latest (kustomization.yaml's images: sets the registry)", c.Image)
	}

	t.Run("configuration from the ConfigMap, watched", func(t *testing.T) {
		if strings.Join(c.Args, " ") != "-c /etc/pj/pj.yaml --watch" {
			t.Errorf("args %q, want -c /etc/pj/pj.yaml --watch", c.Args)
		}
		var mount *corev1.VolumeMount
		for i := range c.VolumeMounts {
			if c.VolumeMounts[i].MountPath == "/etc/pj" {
				mount = &c.VolumeMounts[i]
			}
		}
		if mount == nil || !mount.ReadOnly || mount.SubPath != "" {
			t.Fatalf("mounts %+v: want /etc/pj read-only and without subPath (a subPath mount never sees ConfigMap updates)", c.VolumeMounts)
		}
		var vol *corev1.Volume
		for i := range spec.Volumes {
			if spec.Volumes[i].Name == mount.Name {
				vol = &spec.Volumes[i]
			}
		}
		if vol == nil || vol.ConfigMap == nil || vol.ConfigMap.Name != m.configMap.Name {
			t.Errorf("volume %q is not the ConfigMap %q", mount.Name, m.configMap.Name)
		}
	})

	for _, p := range c.Ports {
		if errs := validation.IsValidPortName(p.Name); len(errs) > 0 {
			t.Errorf("container port name %q: %s", p.Name, strings.Join(errs, "; "))
		}
	}
	port := func(name string) int32 {
		for _, p := range c.Ports {
			if p.Name == name {
				return p.ContainerPort
			}
		}
		t.Fatalf("no container port named %q", name)
		return 0
	}
	probePort := func(what string, p *corev1.Probe, path string) {
		t.Helper()
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != path {
			t.Fatalf("%s probe %+v, want GET %s", what, p, path)
		}
		_, adminPort, err := config.SplitHostPort(cfg.Admin.Listen)
		if err != nil {
			t.Fatalf("admin.listen %q: %v", cfg.Admin.Listen, err)
		}
		if p.HTTPGet.Port.Type != intstr.String || port(p.HTTPGet.Port.StrVal) != int32(adminPort) {
			t.Errorf("%s probe on port %s, want the admin listener's port %d", what, p.HTTPGet.Port.String(), adminPort)
		}
	}
	t.Run("probes on the admin listener", func(t *testing.T) {
		host, _, _ := config.SplitHostPort(cfg.Admin.Listen)
		if host != "0.0.0.0" && host != "" && host != "::" {
			t.Fatalf("admin.listen %q: the kubelet probes the pod's address, not loopback", cfg.Admin.Listen)
		}
		probePort("readiness", c.ReadinessProbe, "/readyz")
		probePort("liveness", c.LivenessProbe, "/healthz")
	})

	t.Run("every listener has a container port", func(t *testing.T) {
		for _, p := range cfg.Proxies {
			_, lp, err := config.SplitHostPort(p.Listen)
			if err != nil {
				t.Fatal(err)
			}
			if port(p.Name) != int32(lp) {
				t.Errorf("proxy %s listens on %d, its container port is %d", p.Name, lp, port(p.Name))
			}
		}
	})

	t.Run("termination outlasts preStop and the drain", func(t *testing.T) {
		if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil {
			t.Fatal("no preStop sleep: clients would still be sent to a replica that stopped accepting")
		}
		preStop := time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
		if preStop < 3*time.Second {
			t.Errorf("preStop sleep %s: too short for endpoints to be removed everywhere", preStop)
		}
		if spec.TerminationGracePeriodSeconds == nil {
			t.Fatal("no terminationGracePeriodSeconds: the default (30 s) is not above grace_period")
		}
		term := time.Duration(*spec.TerminationGracePeriodSeconds) * time.Second
		if term <= preStop+cfg.GracePeriod {
			t.Errorf("terminationGracePeriodSeconds %s is not above preStop %s + grace_period %s", term, preStop, cfg.GracePeriod)
		}
	})

	t.Run("resources", func(t *testing.T) {
		r := c.Resources.Requests
		if r.Cpu().IsZero() || r.Memory().IsZero() {
			t.Errorf("requests %v: want cpu and memory", r)
		}
		if c.Resources.Limits.Memory().IsZero() {
			t.Errorf("limits %v: want a memory limit", c.Resources.Limits)
		}
	})

	t.Run("non-root, read-only, unprivileged", func(t *testing.T) {
		psc, sc := spec.SecurityContext, c.SecurityContext
		if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
			t.Errorf("pod security context %+v: want runAsNonRoot and a non-zero runAsUser", psc)
		}
		if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Error("want the RuntimeDefault seccomp profile")
		}
		if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Error("want readOnlyRootFilesystem")
		}
		if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Error("want allowPrivilegeEscalation false")
		}
		if sc == nil || sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 {
			t.Error("want every capability dropped and none added")
		}
		if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
			t.Error("want automountServiceAccountToken false: pj does not talk to the API server")
		}
	})
}

func TestServiceAndDisruptionBudget(t *testing.T) {
	m := load(t)
	cfg := pjConfig(t, m.configMap)
	labels := m.deployment.Spec.Template.Labels
	matches := func(sel map[string]string) bool {
		for k, v := range sel {
			if labels[k] != v {
				return false
			}
		}
		return len(sel) > 0
	}
	if !matches(m.service.Spec.Selector) {
		t.Errorf("the Service selects %v, not pj's pods (%v)", m.service.Spec.Selector, labels)
	}
	if !matches(m.deployment.Spec.Selector.MatchLabels) {
		t.Errorf("the Deployment selects %v, not its pods (%v)", m.deployment.Spec.Selector.MatchLabels, labels)
	}
	if m.pdb.Spec.Selector == nil || !matches(m.pdb.Spec.Selector.MatchLabels) {
		t.Errorf("the PodDisruptionBudget selects %v, not pj's pods", m.pdb.Spec.Selector)
	}
	if m.pdb.Spec.MinAvailable == nil || m.pdb.Spec.MinAvailable.IntValue() < 1 ||
		m.pdb.Spec.MinAvailable.IntValue() >= int(*m.deployment.Spec.Replicas) {
		t.Errorf("minAvailable %v: want at least 1 and fewer than the replicas, or no drain could proceed", m.pdb.Spec.MinAvailable)
	}

	// Every proxy is reachable through the Service, and the admin
	// listener is not.
	byTarget := map[string]corev1.ServicePort{}
	for _, p := range m.service.Spec.Ports {
		byTarget[p.TargetPort.String()] = p
	}
	for _, p := range cfg.Proxies {
		sp, ok := byTarget[p.Name]
		if !ok {
			t.Errorf("proxy %s is not exposed by the Service", p.Name)
			continue
		}
		if sp.Protocol != corev1.ProtocolTCP {
			t.Errorf("Service port %s: protocol %s, want TCP", sp.Name, sp.Protocol)
		}
	}
	if _, ok := byTarget["admin"]; ok {
		t.Error("the Service exposes the admin listener")
	}
}

func TestConfigMapBackendsFollowDNS(t *testing.T) {
	cfg := pjConfig(t, load(t).configMap)
	var srv, names int
	for _, p := range cfg.Proxies {
		for _, b := range p.Backends {
			if config.IsSRV(b.Address) {
				srv++
				continue
			}
			host, _, err := config.SplitHostPort(b.Address)
			if err == nil && strings.Trim(host, "0123456789.:[]") != "" {
				names++
			}
		}
		if p.Settings.DNSRefresh <= 0 {
			t.Errorf("proxy %s: dns_refresh %s, want names resolved again as pods come and go", p.Name, p.Settings.DNSRefresh)
		}
	}
	if srv == 0 || names == 0 {
		t.Errorf("%d SRV and %d host-name backends: the example shows both ways to find pods", srv, names)
	}
}

// TestExampleBackendIsHeadless checks the example backend the README
// uses: a headless Service, whose DNS name gives every ready pod, with the
// named port the SRV backend asks for.
func TestExampleBackendIsHeadless(t *testing.T) {
	data, err := os.ReadFile("example-backend.yaml")
	if err != nil {
		t.Fatal(err)
	}
	d := decoder(t)
	var svc *corev1.Service
	for i, doc := range bytes.Split(data, []byte("\n---\n")) {
		obj, _, err := d.Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("example-backend.yaml, document %d: %v", i+1, err)
		}
		if s, ok := obj.(*corev1.Service); ok {
			svc = s
		}
	}
	if svc == nil || svc.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Fatal("the example backend's Service is not headless (clusterIP: None)")
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Name != "http" || svc.Spec.Ports[0].Port != 8080 {
		t.Errorf("ports %+v: want one named http on 8080, as pj.yaml's web:8080 and _http._tcp.web", svc.Spec.Ports)
	}
}
