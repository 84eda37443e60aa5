package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/metrics"
	"github.com/portcullis/portcullis/proxy"
	"github.com/portcullis/portcullis/proxy/accesslog"
	"github.com/portcullis/portcullis/proxy/rules"
	"github.com/portcullis/portcullis/store/embedetcd"
	"github.com/portcullis/portcullis/store/etcdstore"
)

// serveBenchCmd is the hidden first argument that turns this binary into
// one of the servers under test. Each server is a process of its own so
// that /proc/<pid>/stat charges it, and only it, for its CPU time.
const serveBenchCmd = "serve-bench"

// The kinds of server a child runs.
const (
	kindUpstream   = "upstream"   // the direct upstream: 200 with a small body
	kindEcho       = "echo"       // baseline A: a bare echo v4 handler answering 200
	kindStdProxy   = "stdproxy"   // baseline B: the tuned httputil.ReverseProxy
	kindPortcullis = "portcullis" // proxy.Server; reverse proxy when -upstream is set
)

// upstreamBody is what the direct upstream answers.
var upstreamBody = []byte("ok: a small upstream response body\n")

// Paths and permissions the load uses.
const (
	forwardPath     = "/auth/forward"
	allowPermission = "projects/p1#read"  // alice holds projects/p1#write
	denyPermission  = "projects/p1#admin" // one level more than she holds
	proxyAllowPath  = "/projects/p1/services/s1/items"
	proxyDenyPath   = "/projects/p2/services/s1/items"
)

// benchRules are the reverse proxy's route rules.
var benchRules = []rules.Rule{
	{Name: "public", Path: "/public/**", Public: true},
	{Name: "project", Path: "/projects/{project}/**", Permission: "projects/{project}#{level}"},
}

// ready is the one JSON line a child prints on standard output once it
// serves.
type ready struct {
	Addr    string `json:"addr"`
	Token   string `json:"token,omitempty"`
	Metrics string `json:"metrics,omitempty"` // address of the /metrics listener, with -metrics
}

// serveBench runs one server until its standard input closes (the parent
// went away or is done) or it gets SIGTERM/SIGINT.
func serveBench(args []string) error {
	fs := flag.NewFlagSet(serveBenchCmd, flag.ContinueOnError)
	kind := fs.String("kind", "", "upstream, echo, stdproxy or portcullis")
	upstream := fs.String("upstream", "", "upstream URL (stdproxy; portcullis reverse proxy)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	var pc portcullisOptions
	etcd := fs.String("etcd", "", "portcullis: comma-separated endpoints of an external etcd instead of an embedded one; nothing is seeded unless -seed")
	fs.BoolVar(&pc.seed, "seed", false, "portcullis with -etcd: seed the user alice as on the embedded etcd (an empty store)")
	metrics := fs.Bool("metrics", false, "serve /metrics (with the Go and process collectors, as `portcullis serve` does) on a second listener")
	fs.Int64Var(&pc.cacheMaxCost, "cache-max-cost", 0, "portcullis: authz cache size in bytes (0: the default)")
	fs.DurationVar(&pc.trickle, "trickle", 0, "portcullis: every interval, one write through the authz service (grant added or removed, token issued or revoked)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *etcd != "" {
		pc.etcd = strings.Split(*etcd, ",")
	}
	if pc.etcd == nil {
		pc.seed = true // the embedded etcd starts empty
	}
	if pc.trickle > 0 && !pc.seed {
		return errors.New("-trickle writes for the seeded user: it needs the embedded etcd or -seed")
	}
	reg := prometheus.NewRegistry()
	if *metrics {
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		// Ends when the parent closes our stdin or dies.
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	var target *url.URL
	if *upstream != "" {
		u, err := url.Parse(*upstream)
		if err != nil {
			return fmt.Errorf("upstream: %w", err)
		}
		target = u
	}
	var (
		h     http.Handler
		token string
		// apiServer: the http.Server settings `portcullis serve` uses
		// for its API; proxies drop the read/write deadlines as it does
		// in proxy mode.
		apiServer = true
	)
	switch *kind {
	case kindUpstream:
		h = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			_, _ = w.Write(upstreamBody)
		})
		apiServer = false
	case kindEcho:
		e := echo.New()
		e.HideBanner, e.HidePort = true, true
		e.GET(forwardPath, func(c echo.Context) error { return c.NoContent(http.StatusOK) })
		h = e
	case kindStdProxy:
		if target == nil {
			return errors.New("stdproxy needs -upstream")
		}
		h = tunedProxy(target)
		apiServer = false
	case kindPortcullis:
		pc.upstream, pc.registry = target, reg
		srv, tok, closeFn, err := portcullis(ctx, log, pc)
		if err != nil {
			return err
		}
		defer closeFn()
		h, token = srv, tok
		apiServer = target == nil
	default:
		return fmt.Errorf("unknown -kind %q", *kind)
	}

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
	}
	if apiServer {
		srv.ReadTimeout, srv.WriteTimeout = 60*time.Second, 60*time.Second
	}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ln) }()
	r := ready{Addr: ln.Addr().String(), Token: token}
	if *metrics {
		mln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		msrv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 10 * time.Second}
		go func() { errc <- msrv.Serve(mln) }()
		defer msrv.Close()
		r.Metrics = mln.Addr().String()
	}
	if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
		return err
	}
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancelShutdown := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelShutdown()
	_ = srv.Shutdown(shutdownCtx)
	return nil
}

// tunedProxy is baseline B, the best plain standard-library proxy:
// Rewrite, a Transport that keeps enough idle connections for 64 clients,
// and pooled copy buffers.
func tunedProxy(target *url.URL) http.Handler {
	transport := &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
		},
		Transport:  transport,
		BufferPool: &bufferPool{},
	}
}

type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, 32<<10)
}

func (b *bufferPool) Put(buf []byte) { b.p.Put(&buf) }

// portcullisOptions configure the Portcullis child.
type portcullisOptions struct {
	upstream     *url.URL // reverse proxy to it; nil: the API with forward-auth only
	registry     *prometheus.Registry
	etcd         []string      // external etcd; nil: an embedded one
	seed         bool          // seed alice (always with the embedded etcd)
	cacheMaxCost int64         // 0: authz's default
	trickle      time.Duration // 0: no background writes
}

// portcullis starts the authz service with its store watch and the HTTP
// server (a reverse proxy to o.upstream when it is set). Without o.etcd it
// runs an embedded etcd in a temporary directory. With o.seed it seeds a
// user alice holding projects/p1#write with one API token, returned as
// token; otherwise it uses the store as it is (the parent seeded it).
// closeFn stops everything and removes the directory.
func portcullis(ctx context.Context, log *slog.Logger, o portcullisOptions) (h http.Handler, token string, closeFn func(), err error) {
	var closers []func()
	closeFn = func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	defer func() {
		if err != nil {
			closeFn()
		}
	}()
	endpoints := o.etcd
	if endpoints == nil {
		dir, err := os.MkdirTemp("", "portcullis-loadtest-")
		if err != nil {
			return nil, "", closeFn, err
		}
		closers = append(closers, func() { os.RemoveAll(dir) })
		etcd, err := embedetcd.Start(ctx, embedetcd.Config{DataDir: dir, Logger: log})
		if err != nil {
			return nil, "", closeFn, err // it says "start embedded etcd: …" itself
		}
		closers = append(closers, func() { etcd.Close() })
		endpoints = etcd.Endpoints()
	}
	// The same registry wiring as `portcullis serve`, so metrics cost
	// what they cost in production.
	reg := o.registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	openCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	st, err := etcdstore.Open(openCtx, etcdstore.Config{Endpoints: endpoints, Logger: log, Observer: metrics.NewStore(reg)})
	cancel()
	if err != nil {
		return nil, "", closeFn, fmt.Errorf("open store: %w", err)
	}
	closers = append(closers, func() { st.Close() })

	runCtx, stopRun := context.WithCancel(ctx)
	svc, err := authz.New(runCtx, st, authz.Config{BcryptCost: 10, Logger: log, CacheMaxCost: o.cacheMaxCost, Observer: metrics.NewAuthz(reg)})
	if err != nil {
		stopRun()
		return nil, "", closeFn, err
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := svc.Run(runCtx); err != nil {
			log.Error("authz service stopped", "err", err)
		}
	})
	closers = append(closers, func() {
		stopRun()
		wg.Wait()
		svc.Close()
	})
	select {
	case <-svc.Ready():
	case <-time.After(30 * time.Second):
		return nil, "", closeFn, errors.New("authz service: store watch not current after 30s")
	}

	if o.seed {
		u, _, err := svc.CreateUser(ctx, authz.UserInput{Username: "alice", Email: "alice@example.com", Password: "alicepassword"}, false)
		if err != nil {
			return nil, "", closeFn, fmt.Errorf("create user: %w", err)
		}
		sub := authz.UserSubject(u.ID)
		if _, err := svc.AddPermission(ctx, sub, "projects/p1#write"); err != nil {
			return nil, "", closeFn, fmt.Errorf("grant: %w", err)
		}
		token, _, _, err = svc.IssueToken(ctx, authz.TokenSpec{Subject: sub, Scopes: []string{"*#admin"}, Purpose: authz.PurposeUserAPI})
		if err != nil {
			return nil, "", closeFn, fmt.Errorf("issue token: %w", err)
		}
		if o.trickle > 0 {
			wg.Go(func() { trickleWrites(runCtx, log, svc, sub, o.trickle) })
		}
	}

	tbl, err := rules.Compile(benchRules)
	if err != nil {
		return nil, "", closeFn, err
	}
	metrics.RegisterService(reg, svc)
	// The access log is on by default in `portcullis serve`: write it,
	// with its system calls, to /dev/null.
	devNull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return nil, "", closeFn, err
	}
	access := accesslog.New(accesslog.NewWriter(devNull, 0, 0), accesslog.JSON)
	closers = append(closers, func() { access.Close(); devNull.Close() })
	// The same registry wiring as `portcullis serve`, so metrics cost
	// what they cost in production.
	cfg := proxy.Config{Logger: log, Routes: tbl, Registerer: reg, Upstream: o.upstream, AccessLog: access}
	return proxy.New(svc, cfg), token, closeFn, nil
}

// trickleWrites writes through svc once per interval until ctx ends, in a
// cycle of four: a grant for sub added, that grant removed, an API token
// for sub issued, that token revoked. Each write invalidates sub's cached
// decisions on this replica (the watch sees it too), so the load's user
// keeps passing through the cache-miss path now and then. The grants and
// tokens are never the ones the load relies on.
func trickleWrites(ctx context.Context, log *slog.Logger, svc *authz.Service, sub string, interval time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var token string
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		grant := fmt.Sprintf("projects/trickle-%d#read", i/4)
		var err error
		switch i % 4 {
		case 0:
			_, err = svc.AddPermission(ctx, sub, grant)
		case 1:
			_, err = svc.RemovePermission(ctx, sub, grant, false)
		case 2:
			token, _, _, err = svc.IssueToken(ctx, authz.TokenSpec{Subject: sub, Scopes: []string{"projects/p1#read"}, Purpose: authz.PurposeUserAPI})
		case 3:
			_, err = svc.RevokeToken(ctx, nil, token)
		}
		if err != nil && ctx.Err() == nil {
			log.Error("trickle write failed", "step", i%4, "err", err)
		}
	}
}
