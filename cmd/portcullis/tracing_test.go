package main

import (
	"compress/gzip"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// otlpReceiver is an OTLP/HTTP trace collector: it decodes the protobuf
// export requests the exporter sends and keeps their spans.
type otlpReceiver struct {
	mu    sync.Mutex
	spans []*tracepb.Span
	paths []string
}

func (o *otlpReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body io.Reader = r.Body
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body = zr
	}
	raw, err := io.ReadAll(body)
	if err != nil || r.Header.Get("Content-Type") != "application/x-protobuf" {
		http.Error(w, "want a protobuf body", http.StatusBadRequest)
		return
	}
	var req coltracepb.ExportTraceServiceRequest
	if err := proto.Unmarshal(raw, &req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	o.mu.Lock()
	o.paths = append(o.paths, r.URL.Path)
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			o.spans = append(o.spans, ss.GetSpans()...)
		}
	}
	o.mu.Unlock()
	out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

func (o *otlpReceiver) all() ([]*tracepb.Span, []string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]*tracepb.Span(nil), o.spans...), append([]string(nil), o.paths...)
}

// TestTracingExportsSpansAndPropagatesContext runs the binary with
// tracing on against an in-process OTLP receiver: a proxied request that
// arrives with a traceparent yields a proxy span under it, with the
// decision and the upstream call as children and store calls under the
// decision, and the upstream sees a traceparent of the same trace whose
// parent is the upstream-call span. A forward-auth request's decision
// joins the trace its proxy forwarded.
func TestTracingExportsSpansAndPropagatesContext(t *testing.T) {
	recv := &otlpReceiver{}
	collector := httptest.NewServer(recv)
	defer collector.Close()
	var upMu sync.Mutex
	var upstreamTraceparent string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upMu.Lock()
		upstreamTraceparent = r.Header.Get("Traceparent")
		upMu.Unlock()
		io.WriteString(w, "app")
	}))
	defer up.Close()
	cfg := filepath.Join(t.TempDir(), "portcullis.yaml")
	if err := os.WriteFile(cfg, []byte("upstream: "+up.URL+"\napi_prefix: /.portcullis\ntrusted_proxies: [127.0.0.1]\nroutes:\n  - name: app\n    path: /app/**\n    permission: 'apps#{level}'\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	api, _, logs, stop := startServe(t, "--data-dir", t.TempDir(), "--admin-password", "adminpassword", "--config", cfg, "--tracing-endpoint", collector.URL)
	token := passwordLogin(t, "http://"+api+"/.portcullis", "admin", "adminpassword")

	const (
		proxyTrace  = "4bf92f3577b34da6a3ce929d0e0e4736"
		clientSpan  = "00f067aa0ba902b7"
		fwdTrace    = "0af7651916cd43dd8448eb211c80319c"
		traefikSpan = "b7ad6b7169203331"
	)
	get := func(path string, hdr ...string) int {
		req, _ := http.NewRequest("GET", "http://"+api+path, nil)
		for _, h := range hdr {
			k, v, _ := strings.Cut(h, ": ")
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if st := get("/app/x", "Authorization: Bearer "+token, "Traceparent: 00-"+proxyTrace+"-"+clientSpan+"-01"); st != 200 {
		t.Fatalf("proxied: %d", st)
	}
	if st := get("/.portcullis/auth/forward", "Authorization: Bearer "+token, "X-Forwarded-Method: GET", "X-Forwarded-Host: app.example.com",
		"X-Forwarded-Uri: /app/y", "Traceparent: 00-"+fwdTrace+"-"+traefikSpan+"-01"); st != 200 {
		t.Fatalf("forward-auth: %d", st)
	}
	stop() // shutting down exports the remaining spans

	spans, paths := recv.all()
	if len(spans) == 0 {
		t.Fatalf("no spans arrived; server log:\n%s", logs)
	}
	if paths[0] != "/v1/traces" {
		t.Errorf("exported to %s, want /v1/traces", paths[0])
	}
	hexID := func(b []byte) string { return hex.EncodeToString(b) }
	find := func(trace, name string) []*tracepb.Span {
		var out []*tracepb.Span
		for _, s := range spans {
			if hexID(s.GetTraceId()) == trace && (s.GetName() == name || (strings.HasSuffix(name, "*") && strings.HasPrefix(s.GetName(), strings.TrimSuffix(name, "*")))) {
				out = append(out, s)
			}
		}
		return out
	}
	one := func(trace, name string) *tracepb.Span {
		t.Helper()
		got := find(trace, name)
		if len(got) != 1 {
			var names []string
			for _, s := range spans {
				names = append(names, hexID(s.GetTraceId())[:6]+"/"+s.GetName())
			}
			t.Fatalf("%d spans %s in trace %s; all spans: %v", len(got), name, trace, names)
		}
		return got[0]
	}
	proxySpan := one(proxyTrace, "portcullis.proxy")
	if hexID(proxySpan.GetParentSpanId()) != clientSpan || proxySpan.GetKind() != tracepb.Span_SPAN_KIND_SERVER {
		t.Errorf("proxy span: parent %s kind %v, want the client's span %s, server", hexID(proxySpan.GetParentSpanId()), proxySpan.GetKind(), clientSpan)
	}
	decide := one(proxyTrace, "portcullis.decide")
	upstream := one(proxyTrace, "portcullis.upstream")
	for _, child := range []*tracepb.Span{decide, upstream} {
		if hexID(child.GetParentSpanId()) != hexID(proxySpan.GetSpanId()) {
			t.Errorf("%s is not a child of the proxy span", child.GetName())
		}
	}
	stores := find(proxyTrace, "store.*")
	if len(stores) == 0 {
		t.Errorf("no store spans in the proxied request's trace (first use of a token reads the store)")
	}
	for _, s := range stores {
		if hexID(s.GetParentSpanId()) != hexID(decide.GetSpanId()) {
			t.Errorf("%s is not a child of the decision", s.GetName())
		}
	}
	upMu.Lock()
	tp := upstreamTraceparent
	upMu.Unlock()
	if want := "00-" + proxyTrace + "-" + hexID(upstream.GetSpanId()) + "-01"; tp != want {
		t.Errorf("upstream got traceparent %q, want %q", tp, want)
	}

	fwd := one(fwdTrace, "portcullis.decide")
	if hexID(fwd.GetParentSpanId()) != traefikSpan || fwd.GetKind() != tracepb.Span_SPAN_KIND_SERVER {
		t.Errorf("forward-auth decision: parent %s kind %v, want the proxy's span %s, server", hexID(fwd.GetParentSpanId()), fwd.GetKind(), traefikSpan)
	}
	for _, s := range spans {
		for _, kv := range s.GetAttributes() {
			if strings.Contains(kv.GetValue().GetStringValue(), token) {
				t.Errorf("span %s attribute %s holds the token", s.GetName(), kv.GetKey())
			}
		}
	}
}
