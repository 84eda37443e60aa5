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
	"sync"
	"syscall"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"

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
	Addr  string `json:"addr"`
	Token string `json:"token,omitempty"`
}

// serveBench runs one server until its standard input closes (the parent
// went away or is done) or it gets SIGTERM/SIGINT.
func serveBench(args []string) error {
	fs := flag.NewFlagSet(serveBenchCmd, flag.ContinueOnError)
	kind := fs.String("kind", "", "upstream, echo, stdproxy or portcullis")
	upstream := fs.String("upstream", "", "upstream URL (stdproxy; portcullis reverse proxy)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	if err := fs.Parse(args); err != nil {
		return err
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
		srv, tok, closeFn, err := portcullis(ctx, log, target)
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
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	if err := json.NewEncoder(os.Stdout).Encode(ready{Addr: ln.Addr().String(), Token: token}); err != nil {
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

// portcullis starts an embedded etcd in a temporary directory, the authz
// service with its store watch, a user alice holding projects/p1#write
// with one API token, and the HTTP server (a reverse proxy to upstream
// when it is set). closeFn stops everything and removes the directory.
func portcullis(ctx context.Context, log *slog.Logger, upstream *url.URL) (h http.Handler, token string, closeFn func(), err error) {
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
	dir, err := os.MkdirTemp("", "portcullis-loadtest-")
	if err != nil {
		return nil, "", closeFn, err
	}
	closers = append(closers, func() { os.RemoveAll(dir) })
	etcd, err := embedetcd.Start(ctx, embedetcd.Config{DataDir: dir, Logger: log})
	if err != nil {
		return nil, "", closeFn, fmt.Errorf("start embedded etcd: %w", err)
	}
	closers = append(closers, func() { etcd.Close() })
	// The same registry wiring as `portcullis serve`, so metrics cost
	// what they cost in production.
	reg := prometheus.NewRegistry()
	openCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	st, err := etcdstore.Open(openCtx, etcdstore.Config{Endpoints: etcd.Endpoints(), Logger: log, Observer: metrics.NewStore(reg)})
	cancel()
	if err != nil {
		return nil, "", closeFn, fmt.Errorf("open store: %w", err)
	}
	closers = append(closers, func() { st.Close() })

	runCtx, stopRun := context.WithCancel(ctx)
	svc, err := authz.New(runCtx, st, authz.Config{BcryptCost: 10, Logger: log, Observer: metrics.NewAuthz(reg)})
	if err != nil {
		stopRun()
		return nil, "", closeFn, err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := svc.Run(runCtx); err != nil {
			log.Error("authz service stopped", "err", err)
		}
	}()
	closers = append(closers, func() {
		stopRun()
		<-done
		svc.Close()
	})
	select {
	case <-svc.Ready():
	case <-time.After(30 * time.Second):
		return nil, "", closeFn, errors.New("authz service: store watch not current after 30s")
	}

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
	cfg := proxy.Config{Logger: log, Routes: tbl, Registerer: reg, Upstream: upstream, AccessLog: access}
	return proxy.New(svc, cfg), token, closeFn, nil
}
