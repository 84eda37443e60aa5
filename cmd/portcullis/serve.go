package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/metrics"
	"github.com/portcullis/portcullis/proxy"
	"github.com/portcullis/portcullis/proxy/envoyauthz"
	"github.com/portcullis/portcullis/store/embedetcd"
	"github.com/portcullis/portcullis/store/etcdstore"
)

func newLogger(cfg Config, w io.Writer) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: lvl}
	if cfg.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// serve runs Portcullis until ctx ends: the store (embedded etcd unless
// endpoints are configured), the authz service with its store watch, the
// API server and the metrics server, in one errgroup.
func serve(ctx context.Context, cfg Config, logOut io.Writer) error {
	log := newLogger(cfg, logOut)
	obs, err := newObservability(cfg, logOut)
	if err != nil {
		return err
	}
	// Deferred first, so it runs last: after the servers stopped.
	defer obs.closeWithin(10*time.Second, log)
	sec, err := readSecrets(cfg)
	if err != nil {
		return configError{err}
	}
	etcdPassword, adminPassword, hmacSecret := sec.etcdPassword, sec.adminPassword, sec.hmacSecret
	providers, err := oidcProviders(cfg, log)
	if err != nil {
		return err
	}
	if hmacSecret != nil {
		log.Warn("session JWTs use HS256 with a shared secret; every holder of the secret can mint tokens")
	}
	if cfg.AllowQueryToken {
		log.Warn("tokens are accepted in the ct_token query parameter; URLs leak into logs and Referer headers")
	}

	// Listeners first: a port in use is a start-up error, not a late surprise.
	apiLn, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return configError{fmt.Errorf("listen %s: %w", cfg.Listen, err)}
	}
	defer apiLn.Close()
	metricsLn, err := net.Listen("tcp", cfg.MetricsListen)
	if err != nil {
		return configError{fmt.Errorf("metrics listen %s: %w", cfg.MetricsListen, err)}
	}
	defer metricsLn.Close()
	var grpcLn net.Listener
	if cfg.GRPCListen != "" {
		if grpcLn, err = net.Listen("tcp", cfg.GRPCListen); err != nil {
			return configError{fmt.Errorf("grpc listen %s: %w", cfg.GRPCListen, err)}
		}
		defer grpcLn.Close()
	}

	apiTLS, err := listenerTLS(cfg.TLSCertFile, cfg.TLSKeyFile, log)
	if err != nil {
		return configError{fmt.Errorf("tls_cert_file/tls_key_file: %w", err)}
	}
	metricsTLS, err := listenerTLS(cfg.MetricsTLSCertFile, cfg.MetricsTLSKeyFile, log)
	if err != nil {
		return configError{fmt.Errorf("metrics_tls_cert_file/metrics_tls_key_file: %w", err)}
	}

	// One registry for every layer: the store and authz get observers
	// backed by it, the proxy registers its own collectors.
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// The metrics listener answers from the start: /healthz says the
	// process is alive while the store is opened (which may take up to
	// etcd_dial_timeout), and /readyz says 503 until everything is up.
	var draining atomic.Bool
	var ready atomic.Pointer[readiness]
	metricsSrv := newHTTPServer(metricsHandler(reg, &ready, &draining))
	metricsSrv.TLSConfig = metricsTLS
	defer metricsSrv.Close() // start-up failed, or after the drain: a no-op
	metricsDone := make(chan error, 1)
	go func() { metricsDone <- serveOn(metricsSrv, metricsLn) }()

	// startCtx (the signal) bounds start-up. The parts that run — store
	// watch, gRPC, embedded etcd — get runCtx instead, which ends only
	// after the HTTP servers have drained: in-flight requests still need
	// the store and a current cache while they finish.
	startCtx := ctx
	runCtx, stopRun := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRun()
	g, ctx := errgroup.WithContext(runCtx)
	endpoints := cfg.EtcdEndpoints
	if len(endpoints) == 0 {
		dir, err := filepath.Abs(cfg.DataDir)
		if err != nil {
			return configError{err}
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return configError{fmt.Errorf("data dir: %w", err)}
		}
		srv, err := embedetcd.Start(startCtx, embedetcd.Config{DataDir: dir, Logger: log})
		if err != nil {
			return err // it says "start embedded etcd: …" itself
		}
		defer srv.Close()
		endpoints = srv.Endpoints()
		log.Info("embedded etcd started", "data_dir", dir)
		g.Go(func() error {
			select {
			case err := <-srv.Err():
				return fmt.Errorf("embedded etcd: %w", err)
			case <-ctx.Done():
				return nil
			}
		})
	}
	tlsCfg, err := etcdTLS(cfg)
	if err != nil {
		return configError{err}
	}
	// Bounded: dialing takes at most etcd_dial_timeout, the first reads
	// a few seconds more; then start-up fails naming the endpoints.
	openCtx, cancel := context.WithTimeout(startCtx, cfg.EtcdDialTimeout+5*time.Second)
	st, err := etcdstore.Open(openCtx, etcdstore.Config{
		Endpoints: endpoints, Prefix: cfg.EtcdPrefix, Username: cfg.EtcdUsername, Password: etcdPassword,
		TLS: tlsCfg, DialTimeout: cfg.EtcdDialTimeout, Observer: metrics.NewStore(reg),
	})
	cancel()
	if err != nil {
		if len(cfg.EtcdEndpoints) > 0 && errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("open store: etcd at %s did not answer within etcd_dial_timeout (%v) + 5s: %w", strings.Join(cfg.EtcdEndpoints, ","), cfg.EtcdDialTimeout, err)
		}
		if len(cfg.EtcdEndpoints) > 0 {
			return fmt.Errorf("open store: etcd at %s: %w", strings.Join(cfg.EtcdEndpoints, ","), err)
		}
		return fmt.Errorf("open store: %w", err)
	}
	defer st.Close()

	svc, err := authz.New(startCtx, obs.tracedStore(st), authz.Config{
		Issuer: sessionIssuer(cfg), SessionTTL: cfg.SessionTTL, BcryptCost: cfg.BcryptCost, HMACSecret: hmacSecret, Logger: log,
		LoginFailureLimit: cfg.LoginFailureLimit, LoginFailureWindow: cfg.LoginFailureWindow,
		Observer:                    metrics.NewAuthz(reg),
		ExternalUsersMaySetPassword: cfg.OIDCUsersMaySetPassword,
	})
	if err != nil {
		return configError{err}
	}
	defer svc.Close()
	metrics.RegisterService(reg, svc)
	g.Go(func() error { return svc.Run(ctx) })

	if err := bootstrapAdmin(startCtx, svc, st, adminPassword, log, obs.audit); err != nil {
		return err
	}

	if cfg.PublicURL == "" {
		log.Warn("public_url is not set: the OAuth2 issuer and the origin of the sign-in forms are taken from each request's Host header")
	} else if strings.HasPrefix(cfg.PublicURL, "http://") {
		log.Warn("public_url is plain http: session cookies and OAuth2 codes travel unencrypted")
	}
	pcfg, err := proxyConfig(cfg, log, reg)
	if err != nil {
		return err
	}
	obs.register(reg)
	pcfg.AccessLog, pcfg.AuditLog, pcfg.Tracer = obs.access, obs.audit, obs.tracer()
	pcfg.OIDCProviders, pcfg.DisablePasswordLogin = providers, cfg.DisablePasswordLogin
	if cfg.Upstream != "" {
		log.Info("reverse proxy on", "upstream", cfg.Upstream, "api_prefix", cfg.APIPrefix)
	}
	api := proxy.New(svc, pcfg)
	apiSrv := newHTTPServer(api)
	apiSrv.TLSConfig = apiTLS
	if cfg.Upstream != "" {
		// Proxied downloads, uploads and WebSockets may rightly last
		// longer than any fixed deadline; slow clients are still bounded
		// by ReadHeaderTimeout and upstreams by the proxy timeouts.
		apiSrv.ReadTimeout, apiSrv.WriteTimeout = 0, 0
	}
	drainingCh := make(chan struct{}) // closed with draining set: gRPC health follows

	g.Go(func() error { return serveOn(apiSrv, apiLn) })
	g.Go(func() error { return <-metricsDone })
	ready.Store(&readiness{svc: svc, st: st})
	if grpcLn != nil {
		g.Go(func() error { return envoyauthz.Serve(ctx, grpcLn, api, drainingCh) })
		log.Info("envoy ext_authz gRPC serving", "grpc_listen", grpcLn.Addr().String())
	}
	log.Info("portcullis serving", "listen", apiLn.Addr().String(), "metrics_listen", metricsLn.Addr().String(),
		"tls", apiTLS != nil, "metrics_tls", metricsTLS != nil, "version", version)
	g.Go(func() error {
		defer stopRun() // then the watch, gRPC and embedded etcd end
		select {
		case <-startCtx.Done(): // SIGTERM or SIGINT
			draining.Store(true)
			close(drainingCh)
			delay := cfg.ShutdownDelay
			if interrupted(startCtx) {
				delay = 0
			}
			log.Info("shutting down: /readyz answers 503 while serving on", "shutdown_delay", delay)
			// Responses now carry Connection: close, so clients reconnect
			// (through the load balancer, to another replica).
			apiSrv.SetKeepAlivesEnabled(false)
			select {
			case <-time.After(delay):
			case <-ctx.Done(): // a part failed: no point in waiting
			}
		case <-ctx.Done(): // a part failed
		}
		log.Info("shutting down: API listener closed, waiting for in-flight requests", "shutdown_grace_period", cfg.ShutdownGracePeriod)
		// The API first; the metrics listener goes on answering /readyz
		// (503), /healthz and scrapes until the API has drained.
		return errors.Join(
			drain(apiSrv, cfg.ShutdownGracePeriod, log),
			drain(metricsSrv, 5*time.Second, log))
	})
	err = g.Wait()
	log.Info("portcullis stopped")
	return err
}

// interrupted reports whether ctx, from signal.NotifyContext, ended by
// SIGINT: Ctrl-C from an operator at a terminal, where no load balancer
// needs shutdown_delay to notice. Orchestrators send SIGTERM. The cause's
// text is the one os/signal documents ("interrupt signal received").
func interrupted(ctx context.Context) bool {
	return strings.HasPrefix(context.Cause(ctx).Error(), os.Interrupt.String()+" ")
}

// drain stops srv accepting connections and waits up to grace for its
// requests to finish; then it closes the connections of those left.
func drain(srv *http.Server, grace time.Duration, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	err := srv.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		log.Warn("shutdown grace period over: closing the connections of unfinished requests", "grace", grace)
		return srv.Close()
	}
	return err
}

func newHTTPServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
	}
}

// listenerTLS is the TLS configuration of a listener with a reloading
// certificate, or nil (plain HTTP) when no files are given.
func listenerTLS(certFile, keyFile string, log *slog.Logger) (*tls.Config, error) {
	if certFile == "" {
		return nil, nil
	}
	r, err := newCertReloader(certFile, keyFile, certCheckInterval, log)
	if err != nil {
		return nil, err
	}
	return serverTLS(r), nil
}

func etcdTLS(cfg Config) (*tls.Config, error) {
	if cfg.EtcdCAFile == "" && cfg.EtcdCertFile == "" {
		return nil, nil
	}
	t := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.EtcdCAFile != "" {
		pem, err := os.ReadFile(cfg.EtcdCAFile)
		if err != nil {
			return nil, fmt.Errorf("etcd CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, errors.New("etcd CA: no certificates found")
		}
		t.RootCAs = pool
	}
	if cfg.EtcdCertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.EtcdCertFile, cfg.EtcdKeyFile)
		if err != nil {
			return nil, fmt.Errorf("etcd client certificate: %w", err)
		}
		t.Certificates = []tls.Certificate{cert}
	}
	return t, nil
}

// bootstrapAdmin creates the user "admin" holding *#admin on an empty
// store. Without a configured password it generates one and prints it
// once; an existing admin's password is never reset from configuration.
//
// The user and its *#admin are one transaction. Releases before that
// wrote them apart, and a first start that stopped between the two left
// an admin without rights; finishBootstrap repairs such a store.
func bootstrapAdmin(ctx context.Context, svc *authz.Service, st authz.Store, password string, log, audit *slog.Logger) error {
	users, err := st.Users(ctx)
	if err != nil {
		return fmt.Errorf("bootstrap admin: %w", err)
	}
	if len(users) > 0 {
		if password != "" {
			log.Warn("admin password given, but the store already has users: it is not applied (use change-password)")
		}
		return finishBootstrap(ctx, svc, users, log, audit)
	}
	generated := password == ""
	if generated {
		password = authzRandomPassword()
	}
	u, rev, err := svc.CreateUserWithGrants(ctx, authz.UserInput{Username: "admin", Password: password}, false, []string{"*#admin"})
	if errors.Is(err, authz.ErrConflict) {
		return nil // another replica bootstrapped first
	}
	if err != nil {
		return fmt.Errorf("bootstrap admin: %w", err)
	}
	proxy.AuditRecord(audit, "", "system", proxy.AuditUserCreate, rev, slog.String("user_id", u.ID), slog.String("username", u.Username))
	proxy.AuditRecord(audit, "", "system", proxy.AuditGrantAdd, rev, slog.String("resource", "users/"+u.ID), slog.String("permission", "*#admin"))
	if generated {
		// Shown once, on the first start only; it is not stored anywhere in clear.
		log.Warn("created user admin with a generated password; it is shown only this once", "username", "admin", "password", password)
	} else {
		log.Info("created user admin with the configured password", "username", "admin")
	}
	return nil
}

// finishBootstrap grants *#admin to the user admin when a first start of
// an earlier release stopped after creating it: the store holds that one user, with only the
// grants every new user gets, and nobody holds *#admin. Granting is
// idempotent, so a replica that runs this while another is finishing its
// own first start does no harm; passwords are never touched.
func finishBootstrap(ctx context.Context, svc *authz.Service, users []authz.UserRecord, log, audit *slog.Logger) error {
	if len(users) != 1 || users[0].Username != "admin" {
		return nil
	}
	id := users[0].ID
	holders, err := svc.ResourcesWithPermission(ctx, "*#admin", "")
	if err != nil {
		return fmt.Errorf("bootstrap admin: %w", err)
	}
	if len(holders) > 0 {
		return nil
	}
	grants, err := svc.ListPermissions(ctx, authz.UserSubject(id), false, false)
	if err != nil {
		return fmt.Errorf("bootstrap admin: %w", err)
	}
	if !slices.Equal(sorted(grants), sorted(authz.DefaultUserGrants(id))) {
		return nil // changed since it was created: not an interrupted first start
	}
	log.Warn("the first start stopped before user admin got *#admin: granting it now", "user_id", id)
	return grantSuperAdmin(ctx, svc, id, audit)
}

func grantSuperAdmin(ctx context.Context, svc *authz.Service, id string, audit *slog.Logger) error {
	rev, err := svc.AddPermission(ctx, authz.UserSubject(id), "*#admin")
	if err != nil {
		return fmt.Errorf("bootstrap admin: grant *#admin: %w", err)
	}
	proxy.AuditRecord(audit, "", "system", proxy.AuditGrantAdd, rev, slog.String("resource", authz.UserSubject(id)), slog.String("permission", "*#admin"))
	return nil
}

// serveOn serves srv on ln (TLS when srv has a TLS configuration) until
// it is shut down.
func serveOn(srv *http.Server, ln net.Listener) error {
	var err error
	if srv.TLSConfig != nil {
		err = srv.ServeTLS(ln, "", "")
	} else {
		err = srv.Serve(ln)
	}
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// readiness is what /readyz checks once start-up is complete.
type readiness struct {
	svc *authz.Service
	st  authz.Store
}

// metricsHandler serves /metrics, /healthz and /readyz; /readyz answers
// 503 until ready is set at the end of start-up, and again once draining
// is set, at the start of a graceful shutdown.
func metricsHandler(reg *prometheus.Registry, ready *atomic.Pointer[readiness], draining *atomic.Bool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if draining.Load() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		rd := ready.Load()
		if rd == nil {
			http.Error(w, "starting", http.StatusServiceUnavailable)
			return
		}
		svc, st := rd.svc, rd.st
		if !svc.WatchStatus().Healthy {
			http.Error(w, "store watch not current", http.StatusServiceUnavailable)
			return
		}
		if _, err := st.CurrentRevision(ctx); err != nil {
			http.Error(w, "store unreachable", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	return mux
}

// sessionIssuer is the iss of session JWTs. By default it is the OAuth2
// issuer that the metadata document names (public_url), because RFC 9068
// verifiers of a JWT access token compare the two; without a public_url
// that issuer changes with each request's Host, so a fixed name stands in.
func sessionIssuer(cfg Config) string {
	switch {
	case cfg.JWTIssuer != "":
		return cfg.JWTIssuer
	case cfg.PublicURL != "":
		return strings.TrimSuffix(cfg.PublicURL, "/")
	default:
		return "portcullis"
	}
}
