package deploy_test

import (
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"
)

// identityHeaders are what Portcullis sets on every allow
// (docs/sidecar.md); every recipe must hand all of them to the app, so that
// a client's own copies are overwritten.
var identityHeaders = []string{"X-Auth-Subject", "X-Auth-User-Id", "X-Auth-Username", "X-Auth-Email", "X-Auth-Permission"}

// readManifests splits YAML files into objects by "Kind/name".
func readManifests(t *testing.T, files ...string) manifests {
	t.Helper()
	var all strings.Builder
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		all.WriteString("\n---\n")
		all.Write(raw)
	}
	return splitManifests(t, all.String())
}

func TestKubernetesSidecarManifests(t *testing.T) {
	dir := filepath.Join(repoRoot, "deploy", "kubernetes")
	var kust struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Resources  []string `json:"resources"`
	}
	raw, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(raw, &kust); err != nil || kust.Kind != "Kustomization" {
		t.Fatalf("kustomization.yaml: %v %+v", err, kust)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
	var listed []string
	for _, f := range files {
		if base := filepath.Base(f); base != "kustomization.yaml" {
			listed = append(listed, base)
		}
	}
	if !slices.Equal(slices.Sorted(slices.Values(kust.Resources)), listed) {
		t.Errorf("kustomization lists %v, the directory has %v", kust.Resources, listed)
	}
	var paths []string
	for _, r := range kust.Resources {
		paths = append(paths, filepath.Join(dir, r))
	}
	m := readManifests(t, paths...)

	var d appsv1.Deployment
	m.decode(t, "Deployment/app", &d)
	pod := d.Spec.Template
	var sidecar *corev1.Container
	for i, c := range pod.Spec.Containers {
		if c.Image == "" {
			t.Errorf("container %s has no image", c.Name)
		}
		if strings.Contains(c.Image, "/portcullis:") {
			sidecar = &pod.Spec.Containers[i]
		}
	}
	if sidecar == nil || len(pod.Spec.Containers) != 2 {
		t.Fatalf("want the app and the Portcullis sidecar, have %+v", pod.Spec.Containers)
	}
	checkHardened(t, *sidecar)
	if !selects(d.Spec.Selector.MatchLabels, pod.Labels) {
		t.Error("the Deployment's selector does not select its pods")
	}
	ports := map[string]int32{}
	for _, p := range sidecar.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if ports["http"] != 8080 || ports["metrics"] != 9090 {
		t.Errorf("sidecar ports %v, want http 8080 and metrics 9090", ports)
	}
	if sidecar.LivenessProbe == nil || sidecar.LivenessProbe.HTTPGet.Path != "/healthz" || sidecar.LivenessProbe.HTTPGet.Port.String() != "metrics" ||
		sidecar.ReadinessProbe == nil || sidecar.ReadinessProbe.HTTPGet.Path != "/readyz" || sidecar.ReadinessProbe.HTTPGet.Port.String() != "metrics" {
		t.Error("the sidecar's probes are not /healthz and /readyz on the metrics port")
	}

	// The configuration file named by --config is the ConfigMap's.
	mounts := map[string]string{}
	for _, vm := range sidecar.VolumeMounts {
		mounts[vm.MountPath] = vm.Name
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Spec.Volumes {
		volumes[v.Name] = v
	}
	var configFile string
	for _, a := range sidecar.Args {
		if f, ok := strings.CutPrefix(a, "--config="); ok {
			configFile = f
		}
	}
	vol := volumes[mounts[path.Dir(configFile)]]
	if configFile == "" || vol.ConfigMap == nil {
		t.Fatalf("--config=%q is not in a mounted ConfigMap", configFile)
	}
	var cm corev1.ConfigMap
	m.decode(t, "ConfigMap/"+vol.ConfigMap.Name, &cm)
	rawCfg, ok := cm.Data[path.Base(configFile)]
	if !ok {
		t.Fatalf("ConfigMap %s has no %s", cm.Name, path.Base(configFile))
	}
	checkConfig(t, "deploy/kubernetes/configmap.yaml", []byte(rawCfg))
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(rawCfg), &cfg); err != nil {
		t.Fatal(err)
	}
	// The app is reached on loopback, inside the pod.
	if u, err := url.Parse(cfg["upstream"].(string)); err != nil || u.Hostname() != "127.0.0.1" {
		t.Errorf("upstream = %v, want http://127.0.0.1:<app port>", cfg["upstream"])
	}
	if cfg["listen"] != ":8080" || cfg["metrics_listen"] != ":9090" {
		t.Errorf("listen %v, metrics_listen %v: not the container ports", cfg["listen"], cfg["metrics_listen"])
	}
	// The Secret reference: the password file is an item of a mounted Secret.
	pwFile, _ := cfg["etcd_password_file"].(string)
	secretVol := volumes[mounts[path.Dir(pwFile)]]
	if secretVol.Secret == nil || secretVol.Secret.SecretName == "" ||
		!slices.ContainsFunc(secretVol.Secret.Items, func(k corev1.KeyToPath) bool { return k.Path == path.Base(pwFile) }) {
		t.Errorf("etcd_password_file %q is not an item of a mounted Secret: %+v", pwFile, secretVol)
	}

	// The Service reaches the sidecar, never the app's port.
	var svc corev1.Service
	m.decode(t, "Service/app", &svc)
	if !selects(svc.Spec.Selector, pod.Labels) {
		t.Error("the Service does not select the app's pods")
	}
	for _, p := range svc.Spec.Ports {
		if _, ok := ports[p.TargetPort.String()]; !ok {
			t.Errorf("Service port %s targets %s, not a sidecar port", p.Name, p.TargetPort.String())
		}
	}
	var np networkingv1.NetworkPolicy
	m.decode(t, "NetworkPolicy/app", &np)
	if !selects(np.Spec.PodSelector.MatchLabels, pod.Labels) {
		t.Error("the NetworkPolicy does not select the app's pods")
	}
	for _, r := range np.Spec.Ingress {
		for _, p := range r.Ports {
			if _, ok := ports[p.Port.String()]; !ok {
				t.Errorf("the NetworkPolicy opens %s, not a sidecar port", p.Port.String())
			}
		}
	}
}

// ingressNginx reads deploy/ingress-nginx/ingress.yaml as networking/v1
// Ingresses.
func ingressNginx(t *testing.T) (app, portcullis networkingv1.Ingress) {
	t.Helper()
	m := readManifests(t, filepath.Join(repoRoot, "deploy", "ingress-nginx", "ingress.yaml"))
	m.decode(t, "Ingress/app", &app)
	m.decode(t, "Ingress/portcullis", &portcullis)
	return app, portcullis
}

func TestIngressNginx(t *testing.T) {
	app, portcullis := ingressNginx(t)
	const prefix = "nginx.ingress.kubernetes.io/"
	authURL, err := url.Parse(app.Annotations[prefix+"auth-url"])
	if err != nil || authURL.Path != "/auth/forward" || authURL.Port() != "8080" || !strings.HasPrefix(authURL.Hostname(), "portcullis.") {
		t.Errorf("auth-url %q: want Portcullis's Service, port 8080, /auth/forward", app.Annotations[prefix+"auth-url"])
	}
	signin, err := url.Parse(app.Annotations[prefix+"auth-signin"])
	if err != nil || signin.Path != "/auth/login-page" || signin.Scheme != "https" {
		t.Errorf("auth-signin %q: want the public login page", app.Annotations[prefix+"auth-signin"])
	}
	// The login page reads the return target from rd.
	if got := app.Annotations[prefix+"auth-signin-redirect-param"]; got != "rd" {
		t.Errorf("auth-signin-redirect-param = %q, want rd", got)
	}
	if len(portcullis.Spec.Rules) != 1 || portcullis.Spec.Rules[0].Host != signin.Host {
		t.Errorf("no Ingress serves the sign-in host %s", signin.Host)
	}
	if b := portcullis.Spec.Rules[0].HTTP.Paths[0].Backend.Service; b == nil || b.Name != "portcullis" || b.Port.Number != 8080 {
		t.Errorf("the sign-in Ingress's backend %+v is not Portcullis's Service", b)
	}
	var headers []string
	for _, h := range strings.Split(app.Annotations[prefix+"auth-response-headers"], ",") {
		headers = append(headers, strings.TrimSpace(h))
	}
	for _, h := range append(identityHeaders, "Authorization", "Cookie") {
		if !slices.Contains(headers, h) {
			t.Errorf("auth-response-headers lacks %s: %v", h, headers)
		}
	}
	// The app's backend is the sidecar example's Service.
	if b := app.Spec.Rules[0].HTTP.Paths[0].Backend.Service; b == nil || b.Name != "app" || b.Port.Number != 80 {
		t.Errorf("the app Ingress's backend is %+v", b)
	}
}

// traefikMiddlewares reads the ForwardAuth middlewares of deploy/traefik.
func traefikMiddlewares(t *testing.T) map[string]struct {
	ForwardAuth struct {
		Address             string   `json:"address"`
		TrustForwardHeader  bool     `json:"trustForwardHeader"`
		AuthResponseHeaders []string `json:"authResponseHeaders"`
	} `json:"forwardAuth"`
} {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "traefik", "dynamic.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var dyn struct {
		HTTP struct {
			Middlewares map[string]struct {
				ForwardAuth struct {
					Address             string   `json:"address"`
					TrustForwardHeader  bool     `json:"trustForwardHeader"`
					AuthResponseHeaders []string `json:"authResponseHeaders"`
				} `json:"forwardAuth"`
			} `json:"middlewares"`
		} `json:"http"`
	}
	if err := yaml.Unmarshal(raw, &dyn); err != nil {
		t.Fatal(err)
	}
	if len(dyn.HTTP.Middlewares) == 0 {
		t.Fatal("dynamic.yml has no middlewares")
	}
	return dyn.HTTP.Middlewares
}

func TestTraefikForwardAuth(t *testing.T) {
	for name, mw := range traefikMiddlewares(t) {
		fa := mw.ForwardAuth
		if u, err := url.Parse(fa.Address); err != nil || u.Path != "/auth/forward" {
			t.Errorf("%s: address %q is not /auth/forward", name, fa.Address)
		}
		if fa.TrustForwardHeader {
			t.Errorf("%s: trustForwardHeader lets clients describe another request", name)
		}
		for _, h := range append(identityHeaders, "Authorization", "Cookie") {
			if !slices.Contains(fa.AuthResponseHeaders, h) {
				t.Errorf("%s: authResponseHeaders lacks %s", name, h)
			}
		}
	}
}

// envoyConfig is the part of an Envoy bootstrap file the tests read.
type envoyConfig struct {
	StaticResources struct {
		Listeners []struct {
			FilterChains []struct {
				Filters []struct {
					TypedConfig struct {
						HTTPFilters []struct {
							Name        string         `json:"name"`
							TypedConfig map[string]any `json:"typed_config"`
						} `json:"http_filters"`
					} `json:"typed_config"`
				} `json:"filters"`
			} `json:"filter_chains"`
		} `json:"listeners"`
		Clusters []struct {
			Name           string `json:"name"`
			LoadAssignment struct {
				Endpoints []struct {
					LbEndpoints []struct {
						Endpoint struct {
							Address struct {
								SocketAddress struct {
									PortValue int `json:"port_value"`
								} `json:"socket_address"`
							} `json:"address"`
						} `json:"endpoint"`
					} `json:"lb_endpoints"`
				} `json:"endpoints"`
			} `json:"load_assignment"`
		} `json:"clusters"`
	} `json:"static_resources"`
}

// extAuthz returns the ext_authz filter's configuration and the port of the
// cluster it calls.
func extAuthz(t *testing.T, file string) (filter map[string]any, cluster string, port int) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "envoy", file))
	if err != nil {
		t.Fatal(err)
	}
	var cfg envoyConfig
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	for _, l := range cfg.StaticResources.Listeners {
		for _, fc := range l.FilterChains {
			for _, f := range fc.Filters {
				for _, hf := range f.TypedConfig.HTTPFilters {
					if hf.Name == "envoy.filters.http.ext_authz" {
						if filter != nil {
							t.Fatalf("%s: two ext_authz filters", file)
						}
						filter = hf.TypedConfig
					}
				}
			}
		}
	}
	if filter == nil {
		t.Fatalf("%s: no envoy.filters.http.ext_authz filter", file)
	}
	if http, ok := filter["http_service"].(map[string]any); ok {
		cluster, _ = http["server_uri"].(map[string]any)["cluster"].(string)
	} else if grpc, ok := filter["grpc_service"].(map[string]any); ok {
		cluster, _ = grpc["envoy_grpc"].(map[string]any)["cluster_name"].(string)
	}
	for _, c := range cfg.StaticResources.Clusters {
		if c.Name == cluster {
			port = c.LoadAssignment.Endpoints[0].LbEndpoints[0].Endpoint.Address.SocketAddress.PortValue
		}
	}
	if port == 0 {
		t.Fatalf("%s: ext_authz calls cluster %q, which is not defined", file, cluster)
	}
	return filter, cluster, port
}

func TestEnvoyExtAuthz(t *testing.T) {
	filter, cluster, port := extAuthz(t, "envoy-http.yaml")
	if port != 8080 || filter["http_service"].(map[string]any)["path_prefix"] != "/auth/forward/envoy" {
		t.Errorf("HTTP ext_authz: cluster %s port %d prefix %v, want Portcullis's port 8080 and /auth/forward/envoy", cluster, port, filter["http_service"])
	}
	filter2, cluster, port := extAuthz(t, "envoy-grpc.yaml")
	if port != 9191 {
		t.Errorf("gRPC ext_authz: cluster %s port %d, want the grpc_listen port 9191 (the chart's ports.grpc in external-ha-values.yaml)", cluster, port)
	}
	for file, f := range map[string]map[string]any{"envoy-http.yaml": filter, "envoy-grpc.yaml": filter2} {
		if f["failure_mode_allow"] != false || f["transport_api_version"] != "V3" {
			t.Errorf("%s: failure_mode_allow %v, transport_api_version %v: want false and V3", file, f["failure_mode_allow"], f["transport_api_version"])
		}
	}
}

// TestRecipesNameRealEndpoints asks a running Portcullis for every endpoint
// the recipes send requests to: the forward-auth endpoints answer a request
// without credentials with 401 or 403 (never 404), the login page with 200.
func TestRecipesNameRealEndpoints(t *testing.T) {
	base := runningPortcullis(t)
	type endpoint struct{ from, path string }
	var decisions []endpoint

	app, _ := ingressNginx(t)
	authURL, _ := url.Parse(app.Annotations["nginx.ingress.kubernetes.io/auth-url"])
	decisions = append(decisions, endpoint{"ingress-nginx auth-url", authURL.RequestURI()})
	for name, mw := range traefikMiddlewares(t) {
		u, _ := url.Parse(mw.ForwardAuth.Address)
		decisions = append(decisions, endpoint{"traefik " + name, u.RequestURI()})
	}
	nginxConf, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "nginx", "portcullis.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, match := range regexp.MustCompile(`proxy_pass http://portcullis:8080(/\S*);`).FindAllStringSubmatch(string(nginxConf), -1) {
		decisions = append(decisions, endpoint{"nginx proxy_pass", match[1]})
	}
	filter, _, _ := extAuthz(t, "envoy-http.yaml")
	prefix := filter["http_service"].(map[string]any)["path_prefix"].(string)
	decisions = append(decisions, endpoint{"envoy path_prefix", prefix + "/some/app/path"})
	if len(decisions) < 5 {
		t.Fatalf("found only %v", decisions)
	}

	get := func(p string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, base+p, nil)
		req.Header.Set("Accept", "text/html")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	for _, e := range decisions {
		if resp := get(e.path); resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s: GET %s = %d, want a decision (401 or 403)", e.from, e.path, resp.StatusCode)
		}
	}
	signin, _ := url.Parse(app.Annotations["nginx.ingress.kubernetes.io/auth-signin"])
	if resp := get(signin.Path + "?rd=https://app.example.com/x"); resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Errorf("ingress-nginx auth-signin: GET %s = %d %s, want the login page", signin.Path, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	// And the check tells endpoints from non-endpoints.
	if resp := get("/auth/forwardx"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /auth/forwardx = %d, want 404", resp.StatusCode)
	}
}
