package deploy_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"

	"github.com/portcullis/portcullis/store/etcdtest"
)

var chartDir = filepath.Join(repoRoot, "charts", "portcullis")

// kubeVersion is the cluster version helm renders and lints for, fixed so
// that the result does not depend on the helm build's default.
const kubeVersion = "1.31.0"

// manifests are rendered objects by "Kind/name", as YAML.
type manifests map[string][]byte

// helmTemplate runs `helm template` on the chart with a values file (or
// none) and --set pairs.
func helmTemplate(t *testing.T, valuesFile string, sets ...string) (stdout, stderr string, err error) {
	t.Helper()
	args := []string{"template", "portcullis", chartDir, "--namespace", "auth", "--kube-version", kubeVersion}
	if valuesFile != "" {
		args = append(args, "--values", filepath.Join(chartDir, "ci", valuesFile))
	}
	for _, s := range sets {
		args = append(args, "--set", s)
	}
	var out, errOut bytes.Buffer
	cmd := exec.Command(helmBinary(t), args...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

// renderChart renders the chart and splits the output into objects.
func renderChart(t *testing.T, valuesFile string, sets ...string) manifests {
	t.Helper()
	out, stderr, err := helmTemplate(t, valuesFile, sets...)
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, stderr)
	}
	return splitManifests(t, out)
}

func splitManifests(t *testing.T, out string) manifests {
	t.Helper()
	m := manifests{}
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(out, -1) {
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			t.Fatalf("rendered YAML does not parse: %v\n%s", err, doc)
		}
		if head.Kind == "" && head.APIVersion == "" {
			continue // only comments
		}
		if head.APIVersion == "" || head.Kind == "" || head.Metadata.Name == "" {
			t.Fatalf("object without apiVersion, kind or metadata.name:\n%s", doc)
		}
		key := head.Kind + "/" + head.Metadata.Name
		if _, dup := m[key]; dup {
			t.Fatalf("%s rendered twice", key)
		}
		m[key] = []byte(doc)
	}
	return m
}

// decode decodes one object strictly into its API type: a misspelt or
// misplaced field is an error, as it would be for the API server.
func (m manifests) decode(t *testing.T, key string, into any) {
	t.Helper()
	raw, ok := m[key]
	if !ok {
		t.Fatalf("%s not rendered; have %v", key, m.keys())
	}
	if err := yaml.UnmarshalStrict(raw, into); err != nil {
		t.Fatalf("%s does not decode as a Kubernetes object: %v", key, err)
	}
}

func (m manifests) keys() []string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func (m manifests) has(key string) bool { _, ok := m[key]; return ok }

func TestChartLint(t *testing.T) {
	for _, values := range []string{"", "embedded-values.yaml", "external-ha-values.yaml"} {
		args := []string{"lint", "--strict", chartDir, "--kube-version", kubeVersion}
		if values != "" {
			args = append(args, "--values", filepath.Join(chartDir, "ci", values))
		}
		out, err := exec.Command(helmBinary(t), args...).CombinedOutput()
		if err != nil {
			t.Errorf("helm lint with %q: %v\n%s", values, err, out)
		}
	}
}

// chartCase is one values file and what its rendering must hold.
type chartCase struct {
	name, values string
	sets         []string

	external     bool
	replicas     int32
	pvc          string   // the claim template's storage request; "" for none
	existing     string   // persistence.existingClaim
	secretFiles  []string // files in /etc/portcullis/secrets
	grpc         bool
	pdb, monitor bool
	netpol       bool
}

func TestChartRenders(t *testing.T) {
	cases := []chartCase{
		{name: "defaults", replicas: 1, pvc: "1Gi"},
		{name: "embedded single replica with PVC", values: "embedded-values.yaml", replicas: 1, pvc: "5Gi",
			secretFiles: []string{"admin-password", "jwt-secret"}},
		{name: "embedded on an existing claim", sets: []string{"persistence.existingClaim=portcullis-data"}, replicas: 1, existing: "portcullis-data"},
		{name: "embedded without persistence", sets: []string{"persistence.enabled=false"}, replicas: 1},
		{name: "external etcd, 3 replicas, monitor, network policy", values: "external-ha-values.yaml", external: true, replicas: 3,
			secretFiles: []string{"admin-password", "etcd-password", "etcd-ca.crt", "etcd-client.crt", "etcd-client.key"},
			grpc:        true, pdb: true, monitor: true, netpol: true},
		{name: "external etcd, CA only", sets: []string{"etcd.endpoints={https://etcd:2379}", "etcd.tlsSecret.name=etcd-ca", "etcd.tlsSecret.certKey=", "etcd.tlsSecret.keyKey="},
			external: true, replicas: 1, secretFiles: []string{"etcd-ca.crt"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := renderChart(t, tc.values, tc.sets...)
			const name = "portcullis"
			var pod corev1.PodTemplateSpec
			if tc.external {
				var d appsv1.Deployment
				m.decode(t, "Deployment/"+name, &d)
				if m.has("StatefulSet/" + name) {
					t.Error("external etcd renders a StatefulSet too")
				}
				if *d.Spec.Replicas != tc.replicas {
					t.Errorf("replicas = %d, want %d", *d.Spec.Replicas, tc.replicas)
				}
				pod = d.Spec.Template
			} else {
				var s appsv1.StatefulSet
				m.decode(t, "StatefulSet/"+name, &s)
				if m.has("Deployment/" + name) {
					t.Error("embedded mode renders a Deployment too")
				}
				if *s.Spec.Replicas != 1 {
					t.Errorf("embedded replicas = %d, want 1", *s.Spec.Replicas)
				}
				if !m.has("Service/" + s.Spec.ServiceName) {
					t.Errorf("StatefulSet's serviceName %q is not rendered", s.Spec.ServiceName)
				}
				checkClaims(t, tc, s)
				pod = s.Spec.Template
			}
			cfg := checkChartConfig(t, m, name)
			checkPod(t, tc, pod, cfg)
			checkService(t, tc, m, name, pod)

			var sa corev1.ServiceAccount
			m.decode(t, "ServiceAccount/"+name, &sa)
			if pod.Spec.ServiceAccountName != name || sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
				t.Error("the pod must run as the chart's service account, without its token")
			}
			if tc.pdb {
				var pdb policyv1.PodDisruptionBudget
				m.decode(t, "PodDisruptionBudget/"+name, &pdb)
				if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 || !selects(pdb.Spec.Selector.MatchLabels, pod.Labels) {
					t.Errorf("PodDisruptionBudget = %+v, want maxUnavailable 1 selecting the pods", pdb.Spec)
				}
			} else if m.has("PodDisruptionBudget/" + name) {
				t.Error("a PodDisruptionBudget on a single replica blocks node drains")
			}
			if m.has("ServiceMonitor/"+name) != tc.monitor {
				t.Errorf("ServiceMonitor rendered = %v, want %v", !tc.monitor, tc.monitor)
			}
			if tc.monitor {
				checkServiceMonitor(t, m, name, pod)
			}
			if m.has("NetworkPolicy/"+name) != tc.netpol {
				t.Errorf("NetworkPolicy rendered = %v, want %v", !tc.netpol, tc.netpol)
			}
			if tc.netpol {
				checkNetworkPolicy(t, tc, m, name, pod)
			}
		})
	}
}

// checkChartConfig reads the configuration file out of the ConfigMap, has
// the binary load it, and returns it.
func checkChartConfig(t *testing.T, m manifests, name string) map[string]any {
	t.Helper()
	var cm corev1.ConfigMap
	m.decode(t, "ConfigMap/"+name, &cm)
	raw, ok := cm.Data["portcullis.yaml"]
	if !ok {
		t.Fatalf("ConfigMap has no portcullis.yaml: %v", cm.Data)
	}
	checkConfig(t, "the chart's ConfigMap", []byte(raw))
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(raw), &cfg); err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"admin_password", "etcd_password"} {
		if _, ok := cfg[secret]; ok {
			t.Errorf("%s is in the ConfigMap; secrets go in files", secret)
		}
	}
	return cfg
}

func checkPod(t *testing.T, tc chartCase, pod corev1.PodTemplateSpec, cfg map[string]any) {
	t.Helper()
	spec := pod.Spec
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(spec.Containers))
	}
	c := spec.Containers[0]

	// The image the Dockerfile builds: /portcullis as user 65532.
	if !regexp.MustCompile(`^ghcr\.io/portcullis/portcullis:\d+\.\d+\.\d+`).MatchString(c.Image) {
		t.Errorf("image = %q", c.Image)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Error("automountServiceAccountToken must be false: Portcullis never calls the Kubernetes API")
	}

	// securityContext, pod and container.
	psc := spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod securityContext = %+v", psc)
	}
	checkHardened(t, c)
	if c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources = %+v, want memory requests and limits", c.Resources)
	}

	// Ports: the container's, and the addresses the configuration listens on.
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	want := map[string]int32{"http": 8080, "metrics": 9090}
	if tc.grpc {
		want["grpc"] = 9191
	}
	if len(ports) != len(want) {
		t.Errorf("ports = %v, want %v", ports, want)
	}
	for name, port := range want {
		if ports[name] != port {
			t.Errorf("port %s = %d, want %d", name, ports[name], port)
		}
	}
	for key, port := range map[string]string{"listen": ":8080", "metrics_listen": ":9090"} {
		if cfg[key] != port {
			t.Errorf("config %s = %v, want %s", key, cfg[key], port)
		}
	}
	if got, _ := cfg["grpc_listen"].(string); (got == ":9191") != tc.grpc {
		t.Errorf("config grpc_listen = %q with grpc %v", got, tc.grpc)
	}

	// Probes on the metrics port.
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}, {"startup", c.StartupProbe, "/healthz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("%s probe: none", p.name)
			continue
		}
		if p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port.String() != "metrics" {
			t.Errorf("%s probe = %s on %s, want %s on metrics", p.name, p.probe.HTTPGet.Path, p.probe.HTTPGet.Port.String(), p.path)
		}
	}

	// Volumes: the configuration file, the secret files, the data directory.
	mounts := map[string]corev1.VolumeMount{}
	for _, vm := range c.VolumeMounts {
		mounts[vm.Name] = vm
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
	}
	cfgMount, ok := mounts["config"]
	if !ok || volumes["config"].ConfigMap == nil || volumes["config"].ConfigMap.Name != "portcullis" {
		t.Fatalf("the ConfigMap is not mounted: %+v", volumes["config"])
	}
	wantArgs := []string{"serve", "--config=" + path.Join(cfgMount.MountPath, "portcullis.yaml")}
	if !slices.Equal(c.Args, wantArgs) || len(c.Command) > 0 {
		t.Errorf("command %v args %v, want the image's entrypoint with %v", c.Command, c.Args, wantArgs)
	}
	if _, ok := mounts["tmp"]; !ok || volumes["tmp"].EmptyDir == nil {
		t.Error("no writable /tmp beside the read-only root file system")
	}
	checkSecretFiles(t, tc, mounts["secrets"], volumes["secrets"], cfg)

	dataDir, _ := cfg["data_dir"].(string)
	if tc.external {
		if dataDir != "" {
			t.Errorf("data_dir = %q with external etcd", dataDir)
		}
		if eps, _ := cfg["etcd_endpoints"].([]any); len(eps) == 0 {
			t.Error("external mode without etcd_endpoints")
		}
		if _, ok := mounts["data"]; ok {
			t.Error("external mode mounts a data volume")
		}
	} else {
		if _, ok := cfg["etcd_endpoints"]; ok {
			t.Error("embedded mode with etcd_endpoints")
		}
		if dataDir == "" || mounts["data"].MountPath != dataDir || mounts["data"].ReadOnly {
			t.Errorf("data_dir %q is not the writable data volume's mount %+v", dataDir, mounts["data"])
		}
		v := volumes["data"]
		switch {
		case tc.pvc != "":
			if _, inPod := volumes["data"]; inPod {
				t.Error("the data volume is in the pod and in the claim templates")
			}
		case tc.existing != "":
			if v.PersistentVolumeClaim == nil || v.PersistentVolumeClaim.ClaimName != tc.existing {
				t.Errorf("data volume = %+v, want claim %s", v, tc.existing)
			}
		default:
			if v.EmptyDir == nil {
				t.Errorf("data volume = %+v, want an emptyDir without persistence", v)
			}
		}
	}
}

// checkHardened checks a Portcullis container's securityContext: non-root
// as the image's user, read-only root, no privilege escalation, no
// capabilities, the runtime's seccomp profile.
func checkHardened(t *testing.T, c corev1.Container) {
	t.Helper()
	sc := c.SecurityContext
	switch {
	case sc == nil:
		t.Errorf("container %s has no securityContext", c.Name)
	case sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot:
		t.Error("runAsNonRoot is not true")
	case sc.RunAsUser == nil || *sc.RunAsUser != 65532:
		t.Errorf("runAsUser = %v, want 65532 (the image's user)", sc.RunAsUser)
	case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
		t.Error("readOnlyRootFilesystem is not true")
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		t.Error("allowPrivilegeEscalation is not false")
	case sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0:
		t.Errorf("capabilities = %+v, want drop [ALL]", sc.Capabilities)
	case sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
		t.Error("seccompProfile is not RuntimeDefault")
	}
}

// checkSecretFiles checks that every *_file key of the configuration names
// a file of the projected secrets volume, and that there are no others.
func checkSecretFiles(t *testing.T, tc chartCase, mount corev1.VolumeMount, vol corev1.Volume, cfg map[string]any) {
	t.Helper()
	var projected []string
	if vol.Projected != nil {
		if vol.Projected.DefaultMode == nil || *vol.Projected.DefaultMode&0o007 != 0 {
			t.Errorf("secret files are readable by others: mode %v", vol.Projected.DefaultMode)
		}
		for _, src := range vol.Projected.Sources {
			if src.Secret == nil || src.Secret.Name == "" {
				t.Errorf("projected source %+v is not a named Secret", src)
				continue
			}
			for _, item := range src.Secret.Items {
				projected = append(projected, item.Path)
			}
		}
	}
	slices.Sort(projected)
	want := slices.Sorted(slices.Values(tc.secretFiles))
	if !slices.Equal(projected, want) {
		t.Errorf("secret files = %v, want %v", projected, want)
	}
	var referenced []string
	for key, v := range cfg {
		if !strings.HasSuffix(key, "_file") {
			continue
		}
		file, _ := v.(string)
		dir, base := path.Split(file)
		if mount.MountPath == "" || path.Clean(dir) != mount.MountPath || !mount.ReadOnly {
			t.Errorf("%s = %q is not in the read-only secrets mount %+v", key, file, mount)
		}
		referenced = append(referenced, base)
	}
	slices.Sort(referenced)
	if !slices.Equal(referenced, want) {
		t.Errorf("the configuration reads secret files %v, want %v", referenced, want)
	}
}

func checkClaims(t *testing.T, tc chartCase, s appsv1.StatefulSet) {
	t.Helper()
	claims := s.Spec.VolumeClaimTemplates
	if tc.pvc == "" {
		if len(claims) > 0 {
			t.Errorf("claim templates %v, want none", claims)
		}
		return
	}
	if len(claims) != 1 || claims[0].Name != "data" {
		t.Fatalf("claim templates = %+v, want one named data", claims)
	}
	got := claims[0].Spec.Resources.Requests[corev1.ResourceStorage]
	if got.String() != tc.pvc || !slices.Equal(claims[0].Spec.AccessModes, []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}) {
		t.Errorf("claim = %s %v, want %s ReadWriteOnce", got.String(), claims[0].Spec.AccessModes, tc.pvc)
	}
	if p := s.Spec.PersistentVolumeClaimRetentionPolicy; p == nil || p.WhenDeleted != appsv1.RetainPersistentVolumeClaimRetentionPolicyType {
		t.Errorf("the store's claim is not retained on delete: %+v", p)
	}
}

func checkService(t *testing.T, tc chartCase, m manifests, name string, pod corev1.PodTemplateSpec) {
	t.Helper()
	var svc corev1.Service
	m.decode(t, "Service/"+name, &svc)
	if !selects(svc.Spec.Selector, pod.Labels) {
		t.Errorf("Service selector %v does not select the pods %v", svc.Spec.Selector, pod.Labels)
	}
	named := map[string]bool{}
	for _, p := range pod.Spec.Containers[0].Ports {
		named[p.Name] = true
	}
	got := map[string]int32{}
	for _, p := range svc.Spec.Ports {
		if !named[p.TargetPort.String()] {
			t.Errorf("Service port %s targets %s, which the container does not have", p.Name, p.TargetPort.String())
		}
		got[p.Name] = p.Port
	}
	want := map[string]int32{"http": 8080, "metrics": 9090}
	if tc.grpc {
		want["grpc"] = 9191
	}
	if len(got) != len(want) {
		t.Errorf("Service ports = %v, want %v", got, want)
	}
	for n, p := range want {
		if got[n] != p {
			t.Errorf("Service port %s = %d, want %d", n, got[n], p)
		}
	}
}

func checkServiceMonitor(t *testing.T, m manifests, name string, pod corev1.PodTemplateSpec) {
	t.Helper()
	var sm struct {
		APIVersion string         `json:"apiVersion"`
		Kind       string         `json:"kind"`
		Metadata   map[string]any `json:"metadata"`
		Spec       struct {
			Selector  struct{ MatchLabels map[string]string } `json:"selector"`
			Endpoints []struct {
				Port, Path, Interval, ScrapeTimeout string
			} `json:"endpoints"`
			NamespaceSelector struct{ MatchNames []string } `json:"namespaceSelector"`
		} `json:"spec"`
	}
	m.decode(t, "ServiceMonitor/"+name, &sm)
	if sm.APIVersion != "monitoring.coreos.com/v1" {
		t.Errorf("ServiceMonitor apiVersion %q", sm.APIVersion)
	}
	var svc corev1.Service
	m.decode(t, "Service/"+name, &svc)
	if !selects(sm.Spec.Selector.MatchLabels, svc.Labels) {
		t.Errorf("ServiceMonitor selector %v does not select the Service %v", sm.Spec.Selector.MatchLabels, svc.Labels)
	}
	if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "metrics" || sm.Spec.Endpoints[0].Path != "/metrics" || sm.Spec.Endpoints[0].Interval != "15s" {
		t.Errorf("ServiceMonitor endpoints = %+v, want metrics /metrics every 15s", sm.Spec.Endpoints)
	}
	if !slices.Equal(sm.Spec.NamespaceSelector.MatchNames, []string{"auth"}) {
		t.Errorf("ServiceMonitor namespaces = %v, want the release's", sm.Spec.NamespaceSelector.MatchNames)
	}
}

func checkNetworkPolicy(t *testing.T, tc chartCase, m manifests, name string, pod corev1.PodTemplateSpec) {
	t.Helper()
	var np networkingv1.NetworkPolicy
	m.decode(t, "NetworkPolicy/"+name, &np)
	if !selects(np.Spec.PodSelector.MatchLabels, pod.Labels) {
		t.Errorf("NetworkPolicy selects %v, not the pods", np.Spec.PodSelector.MatchLabels)
	}
	open := map[string]int{} // port name → number of peers allowed
	for _, rule := range np.Spec.Ingress {
		for _, p := range rule.Ports {
			open[p.Port.String()] = len(rule.From)
		}
	}
	want := map[string]int{"http": 1, "metrics": 1}
	if tc.grpc {
		want["grpc"] = 1
	}
	if len(open) != len(want) {
		t.Errorf("NetworkPolicy opens %v, want %v", open, want)
	}
	for port, peers := range want {
		if open[port] != peers {
			t.Errorf("NetworkPolicy port %s: %d peers, want %d", port, open[port], peers)
		}
	}
	if !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) || len(np.Spec.Egress) != 2 {
		t.Errorf("egress: types %v, %d rules", np.Spec.PolicyTypes, len(np.Spec.Egress))
	}
}

// selects reports whether a selector's labels are all on the object.
func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func TestChartRefuses(t *testing.T) {
	cases := []struct {
		name, values string
		sets         []string
		want         string
	}{
		{"embedded with 3 replicas", "refused-embedded-replicas.yaml", nil,
			"replicaCount 3 needs external etcd: the embedded store lives in one pod's volume"},
		{"embedded with 2 replicas", "", []string{"replicaCount=2"}, "replicaCount 2 needs external etcd"},
		{"a password in the ConfigMap", "", []string{"config.admin_password=hunter2"}, "config.admin_password is set by the chart"},
		{"listen overridden by config", "", []string{"config.listen=:1"}, "config.listen is set by the chart"},
		{"client certificate without key", "", []string{"etcd.endpoints={https://etcd:2379}", "etcd.tlsSecret.name=tls", "etcd.tlsSecret.keyKey="},
			"etcd.tlsSecret: give both certKey and keyKey"},
		{"unknown value", "", []string{"replicas=3"}, "additional properties 'replicas' not allowed"},
		{"etcd endpoint without scheme", "", []string{"etcd.endpoints={etcd:2379}"}, "/etcd/endpoints/0"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, stderr, err := helmTemplate(t, tc.values, tc.sets...)
			if err == nil {
				t.Fatalf("rendered, want the chart to refuse:\n%s", out)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("helm says %q, want it to say %q", stderr, tc.want)
			}
		})
	}
	// The same values with external etcd render: the refusal is about the
	// embedded store only.
	if _, stderr, err := helmTemplate(t, "refused-embedded-replicas.yaml", "etcd.endpoints={https://etcd:2379}"); err != nil {
		t.Errorf("3 replicas with external etcd: %v\n%s", err, stderr)
	}
}

// TestChartConfigStartsPortcullis runs Portcullis on the configuration the
// chart renders for the embedded store, with the Secret files at the paths
// the pod would have them (moved into a temporary directory): it must
// start, create the admin from admin_password_file and sign sessions with
// the HS256 secret from jwt_secret_file.
func TestChartConfigStartsPortcullis(t *testing.T) {
	m := renderChart(t, "embedded-values.yaml")
	cfg := checkChartConfig(t, m, "portcullis")
	dir := t.TempDir()
	const adminPassword = "chart-test-admin-password"
	secrets := map[string]string{
		"admin-password": adminPassword + "\n", // as `kubectl create secret --from-file` keeps it
		"jwt-secret":     "an-hs256-secret-of-at-least-32-bytes!!",
	}
	for key, v := range cfg {
		if strings.HasSuffix(key, "_file") {
			base := path.Base(v.(string))
			content, ok := secrets[base]
			if !ok {
				t.Fatalf("%s names %s, which this test has no content for", key, base)
			}
			file := filepath.Join(dir, base)
			if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg[key] = file
		}
	}
	cfg["data_dir"] = filepath.Join(dir, "data")
	base := startPortcullis(t, func(listen, metrics, _ string) []string {
		cfg["listen"], cfg["metrics_listen"] = listen, metrics
		return []string{"serve", "--config=" + writeConfig(t, dir, "portcullis.yaml", cfg)}
	})

	resp, err := http.PostForm(base+"/auth/oauth/token", url.Values{"grant_type": {"password"}, "username": {"admin"}, "password": {adminPassword}})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&tok); err != nil || resp.StatusCode != http.StatusOK || tok.AccessToken == "" {
		t.Fatalf("admin sign-in with the password file's content: %d %v", resp.StatusCode, err)
	}
	header, _, _ := strings.Cut(tok.AccessToken, ".")
	rawHeader, err := base64.RawURLEncoding.DecodeString(header)
	if err != nil || !strings.Contains(string(rawHeader), `"HS256"`) {
		t.Errorf("session token header %s (%v): want HS256 from jwt_secret_file", rawHeader, err)
	}
}

// TestChartExternalReplicasShareOneStore runs two replicas on the
// configuration the chart renders for external etcd (a real etcd process;
// the TLS and password Secrets left out): a session signed in at one
// replica is accepted by the other, so replicas behind one Service are
// interchangeable.
func TestChartExternalReplicasShareOneStore(t *testing.T) {
	endpoints := etcdtest.External(t)
	m := renderChart(t, "external-ha-values.yaml",
		"etcd.endpoints={"+strings.Join(endpoints, ",")+"}", "etcd.username=", "etcd.passwordSecret.name=", "etcd.tlsSecret.name=")
	cfg := checkChartConfig(t, m, "portcullis")
	dir := t.TempDir()
	const adminPassword = "chart-test-admin-password"
	pwFile := filepath.Join(dir, "admin-password")
	if err := os.WriteFile(pwFile, []byte(adminPassword), 0o600); err != nil {
		t.Fatal(err)
	}
	if cfg["admin_password_file"] == nil {
		t.Fatal("no admin_password_file in the rendered configuration")
	}
	cfg["admin_password_file"] = pwFile

	var replicas []string
	for i := range 2 {
		replicas = append(replicas, startPortcullis(t, func(listen, metrics, grpc string) []string {
			cfg["listen"], cfg["metrics_listen"], cfg["grpc_listen"] = listen, metrics, grpc
			return []string{"serve", "--config=" + writeConfig(t, dir, fmt.Sprintf("replica-%d.yaml", i), cfg)}
		}))
	}

	resp, err := http.PostForm(replicas[0]+"/auth/oauth/token", url.Values{"grant_type": {"password"}, "username": {"admin"}, "password": {adminPassword}})
	if err != nil {
		t.Fatal(err)
	}
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	err = json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || tok.AccessToken == "" {
		t.Fatalf("admin sign-in at replica 0: %d %v", resp.StatusCode, err)
	}
	req, _ := http.NewRequest(http.MethodGet, replicas[1]+"/users/me", nil)
	req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var me struct {
		Username string `json:"username"`
	}
	err = json.NewDecoder(resp.Body).Decode(&me)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || me.Username != "admin" {
		t.Errorf("replica 1 with replica 0's session: %d %q %v, want 200 admin", resp.StatusCode, me.Username, err)
	}
}

// writeConfig writes a configuration file into dir and returns its path.
func writeConfig(t *testing.T, dir, name string, cfg map[string]any) string {
	t.Helper()
	raw, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, name)
	if err := os.WriteFile(file, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}
