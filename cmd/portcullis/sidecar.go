package main

import (
	"log/slog"
	"net/url"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/portcullis/portcullis/proxy"
	"github.com/portcullis/portcullis/proxy/rules"
)

// proxyConfig turns the validated configuration into the HTTP layer's.
func proxyConfig(cfg Config, log *slog.Logger, reg prometheus.Registerer) (proxy.Config, error) {
	routes, err := rules.Compile(cfg.Routes)
	if err != nil {
		return proxy.Config{}, configError{err}
	}
	var shadows *rules.Table
	if len(cfg.ShadowRoutes) > 0 {
		if shadows, err = rules.Compile(cfg.ShadowRoutes); err != nil {
			return proxy.Config{}, configError{err}
		}
	}
	trusted, err := proxy.ParseTrustedProxies(cfg.TrustedProxies)
	if err != nil {
		return proxy.Config{}, configError{err}
	}
	var upstream *url.URL
	if cfg.Upstream != "" {
		if upstream, err = rules.ParseUpstream(cfg.Upstream); err != nil {
			return proxy.Config{}, configError{err}
		}
	}
	loginURL := cfg.LoginURL
	if loginURL == "" {
		loginURL = cfg.APIPrefix + "/auth/login-page"
	}
	return proxy.Config{
		AllowQueryToken:      cfg.AllowQueryToken,
		MaxBodyBytes:         cfg.MaxBodyBytes,
		OpenRegistration:     cfg.OpenRegistration,
		SecureCookies:        cfg.SecureCookies,
		PublicURL:            cfg.PublicURL,
		Logger:               log,
		Routes:               routes,
		ShadowRoutes:         shadows,
		Unmatched:            cfg.Unmatched,
		PathOptions:          rules.PathOptions{AllowSemicolons: cfg.AllowSemicolons},
		TrustedProxies:       trusted,
		LoginURL:             loginURL,
		LoginRedirect:        cfg.LoginRedirect,
		AllowedRedirectHosts: cfg.AllowedRedirectHosts,
		Upstream:             upstream,
		APIPrefix:            cfg.APIPrefix,
		Proxy: proxy.ProxyConfig{
			DialTimeout:           cfg.ProxyDialTimeout,
			ResponseHeaderTimeout: cfg.ProxyResponseHeaderTimeout,
			IdleConnTimeout:       cfg.ProxyIdleConnTimeout,
			MaxIdleConnsPerHost:   cfg.ProxyMaxIdleConnsPerHost,
			MaxBodyBytes:          cfg.ProxyMaxBodyBytes,
			RewriteHost:           cfg.ProxyRewriteHost,
		},
		Assertion:        proxy.AssertionConfig{Always: cfg.AssertionAlways, Audience: cfg.AssertionAudience, TTL: cfg.AssertionTTL},
		SubjectRateLimit: proxy.RateLimit{Rate: float64(cfg.RateLimitSubjectRPS), Burst: cfg.RateLimitSubjectBurst},
		ClientRateLimit:  proxy.RateLimit{Rate: float64(cfg.RateLimitClientRPS), Burst: cfg.RateLimitClientBurst},
		Registerer:       reg,
	}, nil
}
