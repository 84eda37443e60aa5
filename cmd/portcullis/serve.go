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
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/portcullis/portcullis/authz"
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
	etcdPassword, err := secretFromFile(cfg.EtcdPassword, cfg.EtcdPasswordFile)
	if err != nil {
		return configError{err}
	}
	adminPassword, err := secretFromFile(cfg.AdminPassword, cfg.AdminPasswordFile)
	if err != nil {
		return configError{err}
	}
	providers, err := oidcProviders(cfg, log)
	if err != nil {
		return err
	}
	var hmacSecret []byte
	if cfg.JWTSecretFile != "" {
		s, err := secretFromFile("", cfg.JWTSecretFile)
		if err != nil {
			return configError{err}
		}
		hmacSecret = []byte(s)
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

	g, ctx := errgroup.WithContext(ctx)
	endpoints := cfg.EtcdEndpoints
	if len(endpoints) == 0 {
		dir, err := filepath.Abs(cfg.DataDir)
		if err != nil {
			return configError{err}
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return configError{fmt.Errorf("data dir: %w", err)}
		}
		srv, err := embedetcd.Start(ctx, embedetcd.Config{DataDir: dir, Logger: log})
		if err != nil {
			return fmt.Errorf("start embedded etcd: %w", err)
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
	openCtx, cancel := context.WithTimeout(ctx, cfg.EtcdDialTimeout+5*time.Second)
	st, err := etcdstore.Open(openCtx, etcdstore.Config{
		Endpoints: endpoints, Prefix: cfg.EtcdPrefix, Username: cfg.EtcdUsername, Password: etcdPassword,
		TLS: tlsCfg, DialTimeout: cfg.EtcdDialTimeout,
	})
	cancel()
	if err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	defer st.Close()

	svc, err := authz.New(ctx, st, authz.Config{
		Issuer: cfg.JWTIssuer, SessionTTL: cfg.SessionTTL, BcryptCost: cfg.BcryptCost, HMACSecret: hmacSecret, Logger: log,
		LoginFailureLimit: cfg.LoginFailureLimit, LoginFailureWindow: cfg.LoginFailureWindow,
		ExternalUsersMaySetPassword: cfg.OIDCUsersMaySetPassword,
	})
	if err != nil {
		return configError{err}
	}
	defer svc.Close()
	g.Go(func() error { return svc.Run(ctx) })

	if err := bootstrapAdmin(ctx, svc, st, adminPassword, log); err != nil {
		return err
	}

	if cfg.PublicURL == "" {
		log.Warn("public_url is not set: the OAuth2 issuer and the origin of the sign-in forms are taken from each request's Host header")
	} else if strings.HasPrefix(cfg.PublicURL, "http://") {
		log.Warn("public_url is plain http: session cookies and OAuth2 codes travel unencrypted")
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	pcfg, err := proxyConfig(cfg, log, reg)
	if err != nil {
		return err
	}
	pcfg.OIDCProviders, pcfg.DisablePasswordLogin = providers, cfg.DisablePasswordLogin
	if cfg.Upstream != "" {
		log.Info("reverse proxy on", "upstream", cfg.Upstream, "api_prefix", cfg.APIPrefix)
	}
	api := proxy.New(svc, pcfg)
	apiSrv := newHTTPServer(api)
	if cfg.Upstream != "" {
		// Proxied downloads, uploads and WebSockets may rightly last
		// longer than any fixed deadline; slow clients are still bounded
		// by ReadHeaderTimeout and upstreams by the proxy timeouts.
		apiSrv.ReadTimeout, apiSrv.WriteTimeout = 0, 0
	}
	metricsSrv := newHTTPServer(metricsHandler(reg, svc, st))

	for _, s := range []struct {
		srv *http.Server
		ln  net.Listener
	}{{apiSrv, apiLn}, {metricsSrv, metricsLn}} {
		g.Go(func() error {
			if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	if grpcLn != nil {
		g.Go(func() error { return envoyauthz.Serve(ctx, grpcLn, api) })
		log.Info("envoy ext_authz gRPC serving", "grpc_listen", grpcLn.Addr().String())
	}
	log.Info("portcullis serving", "listen", apiLn.Addr().String(), "metrics_listen", metricsLn.Addr().String(), "version", version)
	g.Go(func() error {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		return errors.Join(apiSrv.Shutdown(shutdownCtx), metricsSrv.Shutdown(shutdownCtx))
	})
	err = g.Wait()
	log.Info("portcullis stopped")
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
func bootstrapAdmin(ctx context.Context, svc *authz.Service, st authz.Store, password string, log *slog.Logger) error {
	users, err := st.Users(ctx)
	if err != nil {
		return fmt.Errorf("bootstrap admin: %w", err)
	}
	if len(users) > 0 {
		if password != "" {
			log.Warn("admin password given, but the store already has users: it is not applied (use change-password)")
		}
		return nil
	}
	generated := password == ""
	if generated {
		password = authzRandomPassword()
	}
	u, _, err := svc.CreateUser(ctx, authz.UserInput{Username: "admin", Password: password}, false)
	if errors.Is(err, authz.ErrConflict) {
		return nil // another replica bootstrapped first
	}
	if err != nil {
		return fmt.Errorf("bootstrap admin: %w", err)
	}
	if _, err := svc.AddPermission(ctx, "users/"+u.ID, "*#admin"); err != nil {
		return fmt.Errorf("bootstrap admin: %w", err)
	}
	if generated {
		// Shown once, on the first start only; it is not stored anywhere in clear.
		log.Warn("created user admin with a generated password; it is shown only this once", "username", "admin", "password", password)
	} else {
		log.Info("created user admin with the configured password", "username", "admin")
	}
	return nil
}

func metricsHandler(reg *prometheus.Registry, svc *authz.Service, st authz.Store) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
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
