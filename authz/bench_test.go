package authz_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/labstack/echo/v4"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/store/etcdstore"
)

// countingStore counts store round trips made by decisions.
type countingStore struct {
	authz.Store
	trips atomic.Int64
}

func (c *countingStore) Token(ctx context.Context, d string) (authz.TokenRecord, error) {
	c.trips.Add(1)
	return c.Store.Token(ctx, d)
}

func (c *countingStore) Subject(ctx context.Context, s, jti string) (authz.SubjectSnapshot, error) {
	c.trips.Add(1)
	return c.Store.Subject(ctx, s, jti)
}

func (c *countingStore) Grants(ctx context.Context, r []string) (map[string][]string, authz.Revision, error) {
	c.trips.Add(1)
	return c.Store.Grants(ctx, r)
}

func (c *countingStore) SessionRevoked(ctx context.Context, jti string) (bool, error) {
	c.trips.Add(1)
	return c.Store.SessionRevoked(ctx, jti)
}

func (c *countingStore) Client(ctx context.Context, id string) (authz.ClientRecord, error) {
	c.trips.Add(1)
	return c.Store.Client(ctx, id)
}

func benchService(b *testing.B) (*authz.Service, *countingStore, *etcdstore.Store) {
	st := openStore(b, embeddedEndpoints(b), "")
	cs := &countingStore{Store: st}
	return startService(b, cs, testConfig()), cs, st
}

// benchTokens returns an API token and a session token of a user holding
// roles/user, which holds projects/p#write.
func benchTokens(b *testing.B, svc *authz.Service) (api, session string) {
	u := mustUser(b, svc, authz.UserInput{Username: "bench", Password: "password1"})
	if _, err := svc.AddPermission(bg, "roles/user", "projects/p#write"); err != nil {
		b.Fatal(err)
	}
	api, _, _, err := svc.IssueToken(bg, authz.TokenSpec{Subject: "users/" + u.ID, Scopes: []string{"*#admin"}, Purpose: authz.PurposeUserAPI})
	if err != nil {
		b.Fatal(err)
	}
	return api, login(b, svc, "bench", "password1").AccessToken
}

const benchPerm = "projects/p/services/s#read"

// BenchmarkVerifyWarm measures a cached decision: the hot path of every
// forward-auth request. Baseline: a bare echo handler answering 200
// through ServeHTTP, measured in the same run.
func BenchmarkVerifyWarm(b *testing.B) {
	svc, _, _ := benchService(b)
	api, session := benchTokens(b, svc)
	for name, tok := range map[string]string{"api-token": api, "session-jwt": session} {
		b.Run(name, func(b *testing.B) {
			if _, err := svc.VerifyAccess(bg, tok, benchPerm, authz.VerifyOptions{}); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := svc.VerifyAccess(bg, tok, benchPerm, authz.VerifyOptions{}); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"-parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := svc.VerifyAccess(bg, tok, benchPerm, authz.VerifyOptions{}); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
	b.Run("baseline-bare-echo-handler", func(b *testing.B) {
		e := echo.New()
		e.GET("/", func(c echo.Context) error { return c.NoContent(http.StatusOK) })
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		w := httptest.NewRecorder()
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			e.ServeHTTP(w, req)
		}
	})
}

// BenchmarkVerifyCold measures decisions whose token and subject are not
// cached (every iteration uses a token of its own subject), with the shared
// role warm, against the embedded etcd. It reports store round trips per
// decision and latency percentiles.
func BenchmarkVerifyCold(b *testing.B) {
	svc, cs, _ := benchService(b)
	if _, err := svc.AddPermission(bg, "roles/user", "projects/p#write"); err != nil {
		b.Fatal(err)
	}
	for _, kind := range []string{"api-token", "session-jwt"} {
		b.Run(kind, func(b *testing.B) {
			b.StopTimer()
			toks := make([]string, b.N)
			for i := range toks {
				sub := fmt.Sprintf("agents/cold-%s-%d-%d", kind, time.Now().UnixNano(), i)
				if _, err := svc.AddPermission(bg, sub, "roles/user"); err != nil {
					b.Fatal(err)
				}
				typ := authz.TokenTypeAPI
				if kind == "session-jwt" {
					typ = authz.TokenTypeSession
				}
				tok, _, _, err := svc.IssueToken(bg, authz.TokenSpec{Subject: sub, Scopes: []string{"*#admin"}, Type: typ})
				if err != nil {
					b.Fatal(err)
				}
				toks[i] = tok
			}
			// Warm the role once, as a live replica has it.
			if _, err := svc.VerifyAccess(bg, toks[0], benchPerm, authz.VerifyOptions{}); err != nil {
				b.Fatal(err)
			}
			lat := make([]time.Duration, 0, b.N)
			before := cs.trips.Load()
			b.StartTimer()
			for i := 0; i < b.N; i++ {
				start := time.Now()
				if _, err := svc.VerifyAccess(bg, toks[i], benchPerm, authz.VerifyOptions{}); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			reportLatency(b, lat)
			b.ReportMetric(float64(cs.trips.Load()-before)/float64(b.N), "round-trips/op")
		})
	}
}

func reportLatency(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

// BenchmarkRoleResolution resolves (uncached) a subject holding 1,000
// grants and a role chain three levels deep, and decides warm for it.
func BenchmarkRoleResolution(b *testing.B) {
	svc, _, st := benchService(b)
	sub := "agents/roles-bench"
	ops := []clientv3.Op{}
	for i := 0; i < 1000; i++ {
		g := fmt.Sprintf("projects/p%d#read", i)
		ops = append(ops, clientv3.OpPut(st.Prefix()+"grants/"+sub+"|"+g, "{}"), clientv3.OpPut(st.Prefix()+"holders/"+g+"|"+sub, "{}"))
	}
	bulkPut(b, st.EtcdClient(), ops)
	for _, g := range [][2]string{{sub, "roles/l1"}, {"roles/l1", "roles/l2"}, {"roles/l2", "roles/l3"}, {"roles/l3", "deep/resource#admin"}} {
		if _, err := svc.AddPermission(bg, g[0], g[1]); err != nil {
			b.Fatal(err)
		}
	}
	tok, _, _, err := svc.IssueToken(bg, authz.TokenSpec{Subject: sub, Scopes: []string{"*#admin"}})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("uncached", func(b *testing.B) {
		lat := make([]time.Duration, 0, b.N)
		for i := 0; i < b.N; i++ {
			start := time.Now()
			if _, err := svc.VerifyAccess(bg, tok, "deep/resource/x#write", authz.VerifyOptions{NoCache: true}); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(start))
		}
		reportLatency(b, lat)
	})
	b.Run("warm", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, err := svc.VerifyAccess(bg, tok, "deep/resource/x#write", authz.VerifyOptions{}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func bulkPut(b *testing.B, cli *clientv3.Client, ops []clientv3.Op) {
	for len(ops) > 0 {
		n := min(len(ops), 5000)
		if _, err := cli.Txn(bg).Then(ops[:n]...).Commit(); err != nil {
			b.Fatalf("bulk load: %v", err)
		}
		ops = ops[n:]
	}
}

// BenchmarkVerifyStoreSize shows that decisions do not get slower as the
// store grows. Sizes come from PORTCULLIS_BENCH_GRANTS (default "1000";
// docs/PERFORMANCE.md uses "1000,100000,1000000").
func BenchmarkVerifyStoreSize(b *testing.B) {
	sizes := []int{1000}
	if env := os.Getenv("PORTCULLIS_BENCH_GRANTS"); env != "" {
		sizes = nil
		for _, f := range splitComma(env) {
			n, err := strconv.Atoi(f)
			if err != nil {
				b.Fatalf("PORTCULLIS_BENCH_GRANTS: %v", err)
			}
			sizes = append(sizes, n)
		}
	}
	for _, n := range sizes {
		b.Run(fmt.Sprintf("grants=%d", n), func(b *testing.B) {
			svc, _, st := benchService(b)
			var ops []clientv3.Op
			for i := 0; i < n; i++ {
				res := fmt.Sprintf("agents/filler-%d", i%10000)
				g := fmt.Sprintf("projects/f%d#read", i)
				ops = append(ops, clientv3.OpPut(st.Prefix()+"grants/"+res+"|"+g, "{}"), clientv3.OpPut(st.Prefix()+"holders/"+g+"|"+res, "{}"))
				if len(ops) >= 10000 {
					bulkPut(b, st.EtcdClient(), ops)
					ops = ops[:0]
				}
			}
			bulkPut(b, st.EtcdClient(), ops)
			api, _ := benchTokens(b, svc)
			b.Run("warm", func(b *testing.B) {
				b.ReportAllocs()
				for i := 0; i < b.N; i++ {
					if _, err := svc.VerifyAccess(bg, api, benchPerm, authz.VerifyOptions{}); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("cold", func(b *testing.B) {
				lat := make([]time.Duration, 0, b.N)
				for i := 0; i < b.N; i++ {
					start := time.Now()
					if _, err := svc.VerifyAccess(bg, api, benchPerm, authz.VerifyOptions{NoCache: true}); err != nil {
						b.Fatal(err)
					}
					lat = append(lat, time.Since(start))
				}
				reportLatency(b, lat)
			})
		})
	}
}

func splitComma(s string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ',' {
			if i > start {
				out = append(out, s[start:i])
			}
			start = i + 1
		}
	}
	return out
}
