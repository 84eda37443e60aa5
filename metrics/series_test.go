package metrics_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/authz/authztest"
	"github.com/portcullis/portcullis/metrics"
	"github.com/portcullis/portcullis/proxy"
	"github.com/portcullis/portcullis/proxy/rules"
	"github.com/portcullis/portcullis/store/etcdstore"
	"github.com/portcullis/portcullis/store/etcdtest"
)

func TestMain(m *testing.M) { etcdtest.Main(m) }

// marker prefixes every random value the tests send, so that a label
// carrying one is found.
const marker = "rndq"

func randomValue() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return marker + hex.EncodeToString(b)
}

// stack is a store, a service and a proxy server on one registry, wired as
// serve wires them.
type stack struct {
	reg *prometheus.Registry
	svc *authz.Service
	srv *proxy.Server
	st  *etcdstore.Store
}

func newStack(t *testing.T, upstream string) *stack {
	t.Helper()
	reg := prometheus.NewRegistry()
	st, err := etcdstore.Open(t.Context(), etcdstore.Config{
		Endpoints: etcdtest.SharedEmbedded(t), Prefix: "/" + randomValue() + "/",
		RequestTimeout: 10 * time.Second, Logger: slog.New(slog.DiscardHandler),
		Observer: metrics.NewStore(reg),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cfg := authztest.FastConfig()
	cfg.Observer = metrics.NewAuthz(reg)
	cfg.Logger = slog.New(slog.DiscardHandler)
	svc := authztest.Start(t, st, cfg)
	metrics.RegisterService(reg, svc)
	tbl, err := rules.Compile([]rules.Rule{
		{Name: "public", Path: "/public/**", Public: true},
		{Name: "apps", Path: "/app/{app}/**", Permission: "apps/{app}#{level}"},
	})
	if err != nil {
		t.Fatal(err)
	}
	trusted, _ := proxy.ParseTrustedProxies([]string{"192.0.2.0/24"})
	pcfg := proxy.Config{Routes: tbl, TrustedProxies: trusted, Registerer: reg, Logger: slog.New(slog.DiscardHandler),
		// The per-address sign-in throttle must not hide the token endpoint
		// behind 429s: the random addresses are all one test client.
		LoginFailureRateLimit: proxy.RateLimit{Rate: 1000, Burst: 1000}}
	if upstream != "" {
		u, _ := url.Parse(upstream)
		pcfg.Upstream, pcfg.APIPrefix = u, "/.portcullis"
	}
	return &stack{reg: reg, svc: svc, srv: proxy.New(svc, pcfg), st: st}
}

// series counts the series of every family, and returns any label value
// carrying a random value the test sent.
func series(t *testing.T, reg *prometheus.Registry) (int, []string) {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	var leaked []string
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			n++
			for _, l := range m.GetLabel() {
				if strings.Contains(l.GetValue(), marker) {
					leaked = append(leaked, f.GetName()+"{"+l.GetName()+"="+l.GetValue()+"}")
				}
			}
		}
	}
	return n, leaked
}

// TestSeriesStayBounded sends 20,000 requests with random paths, hosts,
// addresses, permissions, tokens, users and grant types through every
// HTTP dialect, the reverse proxy and the token endpoint: the number of
// series must not grow, and no label may carry anything the client sent.
func TestSeriesStayBounded(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Every status class, chosen by the client's random path.
		w.WriteHeader([]int{200, 204, 302, 404, 500}[int(r.URL.Path[len(r.URL.Path)-1])%5])
	}))
	defer up.Close()
	s := newStack(t, up.URL)
	ctx := context.Background()

	// A few users with tokens; one of them may use every app.
	var tokens []string
	for i := range 8 {
		u, _, err := s.svc.CreateUser(ctx, authz.UserInput{Username: randomValue()}, false)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if _, err := s.svc.AddPermission(ctx, "users/"+u.ID, "apps#write"); err != nil {
				t.Fatal(err)
			}
		}
		tok, _, _, err := s.svc.IssueToken(ctx, authz.TokenSpec{Subject: "users/" + u.ID, Scopes: []string{"*#admin"}})
		if err != nil {
			t.Fatal(err)
		}
		tokens = append(tokens, tok)
	}
	before, _ := series(t, s.reg)
	if before < 100 {
		t.Fatalf("only %d series before any request: are the decision series pre-created?", before)
	}

	const requests = 20000
	outcomes := map[int]int{}
	for i := range requests {
		tok := tokens[mrand.IntN(len(tokens))]
		switch mrand.IntN(4) {
		case 0:
			tok = randomValue() // an unknown opaque token
		case 1:
			tok = ""
		}
		path := "/app/" + randomValue() + "/" + randomValue()
		if i%10 == 0 {
			path = "/public/" + randomValue()
		}
		var req *http.Request
		switch i % 6 {
		case 0: // Traefik
			req = httptest.NewRequest("GET", "/.portcullis/auth/forward", nil)
			req.Header.Set("X-Forwarded-Method", []string{"GET", "POST", "DELETE"}[i%3])
			req.Header.Set("X-Forwarded-Uri", path+"?q="+randomValue())
			req.Header.Set("X-Forwarded-Host", randomValue()+".example.com")
			req.Header.Set("X-Forwarded-For", fmt.Sprintf("198.51.100.%d", i%250))
		case 1: // nginx
			req = httptest.NewRequest("GET", "/.portcullis/auth/forward", nil)
			req.Header.Set("X-Original-Url", "https://"+randomValue()+".example.com"+path)
			req.Header.Set("X-Original-Method", "GET")
		case 2: // Envoy HTTP
			req = httptest.NewRequest("GET", "/.portcullis/auth/forward/envoy"+path, nil)
			req.Host = randomValue() + ".example.com"
		case 3: // reverse proxy
			req = httptest.NewRequest("GET", path, nil)
		case 4: // REST verify
			req = httptest.NewRequest("POST", "/.portcullis/auth/tokens/verify?permission="+url.QueryEscape("apps/"+randomValue()+"#read"), nil)
		case 5: // token endpoint: random grant types; a few password sign-ins of random users (bcrypt is slow)
			form := url.Values{"grant_type": {randomValue()}, "username": {randomValue()}, "password": {randomValue()}}
			if i%600 == 5 {
				form.Set("grant_type", "password")
			}
			req = httptest.NewRequest("POST", "/.portcullis/auth/oauth/token", strings.NewReader(form.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			tok = ""
		}
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		req.Header.Set("User-Agent", randomValue())
		w := httptest.NewRecorder()
		s.srv.ServeHTTP(w, req)
		outcomes[w.Code]++
	}
	// The traffic was varied: allowed, denied, unauthenticated, proxied.
	for _, code := range []int{200, 401, 403, 500} {
		if outcomes[code] == 0 {
			t.Errorf("no response with status %d among %v", code, outcomes)
		}
	}

	after, leaked := series(t, s.reg)
	t.Logf("%d series before and %d after %d requests; statuses %v", before, after, requests, outcomes)
	if after != before {
		t.Errorf("series grew from %d to %d over %d random requests", before, after, requests)
	}
	if len(leaked) > 0 {
		t.Errorf("labels carry client-sent values: %q", leaked[:min(len(leaked), 10)])
	}
}
