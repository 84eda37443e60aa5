package proxy_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/authz/authztest"
	"github.com/portcullis/portcullis/metrics"
	"github.com/portcullis/portcullis/proxy"
	"github.com/portcullis/portcullis/proxy/accesslog"
	"github.com/portcullis/portcullis/proxy/rules"
	"github.com/portcullis/portcullis/store/etcdtest"
)

// BenchmarkForwardAuth measures one warm forward-auth decision through
// ServeHTTP (no network), against a bare echo handler in the same run.
//
// Metrics are on, as in production: the decision counter and the verify
// latency histogram are part of what is measured.
func BenchmarkForwardAuth(b *testing.B) {
	reg := prometheus.NewRegistry()
	cfg := authztest.FastConfig()
	cfg.Observer = metrics.NewAuthz(reg)
	svc := authztest.Start(b, etcdtest.NewStore(b, etcdtest.SharedEmbedded(b)), cfg)
	u, _, err := svc.CreateUser(bg, authz.UserInput{Username: "bench", Password: "benchpassword"}, false)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := svc.AddPermission(bg, "users/"+u.ID, "projects/p1#write"); err != nil {
		b.Fatal(err)
	}
	tok, _, _, err := svc.IssueToken(bg, authz.TokenSpec{Subject: "users/" + u.ID, Scopes: []string{"*#admin"}})
	if err != nil {
		b.Fatal(err)
	}
	tbl, err := rules.Compile(sidecarRules)
	if err != nil {
		b.Fatal(err)
	}
	trusted, _ := proxy.ParseTrustedProxies([]string{"192.0.2.0/24"})
	srv := proxy.New(svc, proxy.Config{Routes: tbl, TrustedProxies: trusted, Registerer: reg})
	run := func(b *testing.B, h http.Handler, req *http.Request) {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != 200 {
			b.Fatalf("status %d: %s", w.Code, w.Body)
		}
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
		}
	}
	traefik := func() *http.Request {
		req := httptest.NewRequest("GET", "/auth/forward", nil)
		req.Header.Set("X-Forwarded-Method", "GET")
		req.Header.Set("X-Forwarded-Uri", "/projects/p1/services/s1/x?y=1")
		req.Header.Set("X-Forwarded-Host", "api.example.com")
		req.Header.Set("X-Forwarded-Proto", "https")
		req.Header.Set("Authorization", "Bearer "+tok)
		return req
	}
	b.Run("traefik-rules", func(b *testing.B) { run(b, srv, traefik()) })
	// The same with the access log on (the default of portcullis serve),
	// written in the background to io.Discard.
	b.Run("traefik-rules-access-log", func(b *testing.B) {
		access := accesslog.New(accesslog.NewWriter(io.Discard, 0, 0), accesslog.JSON)
		defer access.Close()
		logged := proxy.New(svc, proxy.Config{Routes: tbl, TrustedProxies: trusted, AccessLog: access})
		run(b, logged, traefik())
		if d := access.Dropped(); d > 0 {
			b.Logf("%d access lines dropped", d)
		}
	})
	// With tracing on, every request sampled (spans go nowhere): the
	// price of tracing; with it off (above) the hot path pays a nil check.
	b.Run("traefik-rules-tracing-sampled", func(b *testing.B) {
		tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
		defer tp.Shutdown(bg)
		traced := proxy.New(svc, proxy.Config{Routes: tbl, TrustedProxies: trusted, Tracer: tp.Tracer("bench")})
		run(b, traced, traefik())
	})
	b.Run("permission-parameter", func(b *testing.B) {
		req := httptest.NewRequest("GET", "/auth/forward?permission="+url.QueryEscape("projects/p1#read"), nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		run(b, srv, req)
	})
	b.Run("baseline-bare-echo-handler", func(b *testing.B) {
		e := echo.New()
		e.GET("/auth/forward", func(c echo.Context) error { return c.NoContent(http.StatusOK) })
		run(b, e, httptest.NewRequest("GET", "/auth/forward", nil))
	})
}
