package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/proxy/accesslog"
	"github.com/portcullis/portcullis/store/tracedstore"
)

func (c Config) validateObservability() []error {
	var errs []error
	if strings.TrimSpace(c.AuditLog) == "" {
		errs = append(errs, errors.New("audit_log: want stderr, stdout or a file path"))
	}
	if c.TracingSampleRatio < 0 || c.TracingSampleRatio > 1 {
		errs = append(errs, fmt.Errorf("tracing_sample_ratio %v: want between 0 and 1", c.TracingSampleRatio))
	}
	if c.TracingEndpoint != "" {
		if _, err := tracingOptions(c); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// tracingOptions turns tracing_endpoint into exporter options: a URL
// (scheme decides TLS; the path defaults to OTLP's /v1/traces) or a bare
// host:port (TLS unless tracing_insecure).
func tracingOptions(c Config) ([]otlptracehttp.Option, error) {
	ep := c.TracingEndpoint
	if strings.Contains(ep, "://") {
		u, err := url.Parse(ep)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.User != nil {
			return nil, fmt.Errorf("tracing_endpoint %q: want http(s)://host:port[/path] or host:port", ep)
		}
		if u.Path == "" || u.Path == "/" {
			u.Path = "/v1/traces"
		}
		return []otlptracehttp.Option{otlptracehttp.WithEndpointURL(u.String())}, nil
	}
	if strings.ContainsAny(ep, "/?#@ ") || !strings.Contains(ep, ":") {
		return nil, fmt.Errorf("tracing_endpoint %q: want http(s)://host:port[/path] or host:port", ep)
	}
	opts := []otlptracehttp.Option{otlptracehttp.WithEndpoint(ep)}
	if c.TracingInsecure {
		opts = append(opts, otlptracehttp.WithInsecure())
	}
	return opts, nil
}

// observability holds serve's access log, audit log and tracer provider.
// close flushes and releases them, after the servers have stopped.
type observability struct {
	access *accesslog.Logger
	audit  *slog.Logger
	tp     *sdktrace.TracerProvider
	closer []func(context.Context) error
}

// newObservability builds what cfg asks for: access lines to logOut
// through a background writer, audit records (JSON lines marked
// "log":"audit") to their destination, and an OTLP tracer provider when
// tracing_endpoint is set.
func newObservability(cfg Config, logOut io.Writer) (*observability, error) {
	o := &observability{}
	if cfg.AccessLog {
		format := accesslog.JSON
		if cfg.LogFormat == "text" {
			format = accesslog.Text
		}
		o.access = accesslog.New(accesslog.NewWriter(logOut, 0, 0), format)
		o.closer = append(o.closer, func(context.Context) error { return o.access.Close() })
	}
	var auditOut io.Writer
	switch cfg.AuditLog {
	case "stderr":
		auditOut = logOut
	case "stdout":
		auditOut = os.Stdout
	default:
		f, err := os.OpenFile(cfg.AuditLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			o.close(context.Background())
			return nil, configError{fmt.Errorf("audit_log: %w", err)}
		}
		auditOut = f
		o.closer = append(o.closer, func(context.Context) error { return f.Close() })
	}
	// Always JSON: audit records are for machines (SIEM) first.
	o.audit = slog.New(slog.NewJSONHandler(auditOut, nil))
	if cfg.TracingEndpoint != "" {
		opts, err := tracingOptions(cfg)
		if err != nil {
			o.close(context.Background())
			return nil, configError{err}
		}
		exp, err := otlptracehttp.New(context.Background(), opts...)
		if err != nil {
			o.close(context.Background())
			return nil, fmt.Errorf("tracing: %w", err)
		}
		res, err := resource.Merge(resource.Default(), resource.NewSchemaless(
			attribute.String("service.name", "portcullis"), attribute.String("service.version", version)))
		if err != nil {
			res = resource.Default()
		}
		o.tp = sdktrace.NewTracerProvider(
			sdktrace.WithBatcher(exp),
			sdktrace.WithResource(res),
			sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(cfg.TracingSampleRatio))),
		)
		o.closer = append(o.closer, o.tp.Shutdown)
	}
	return o, nil
}

// register adds the access log's dropped-lines counter to reg.
func (o *observability) register(reg prometheus.Registerer) {
	if o.access == nil {
		return
	}
	access := o.access
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Namespace: "portcullis", Name: "access_log_dropped_lines_total",
		Help: "Access-log lines dropped because the log output could not keep up.",
	}, func() float64 { return float64(access.Dropped()) }))
}

// tracer is the tracer of the HTTP layer; nil when tracing is off.
func (o *observability) tracer() trace.Tracer {
	if o.tp == nil {
		return nil
	}
	return o.tp.Tracer("github.com/portcullis/portcullis/proxy")
}

// tracedStore wraps st with store spans when tracing is on.
func (o *observability) tracedStore(st authz.Store) authz.Store {
	if o.tp == nil {
		return st
	}
	return tracedstore.New(st, o.tp.Tracer("github.com/portcullis/portcullis/store"))
}

// close flushes the access log and exports the last spans (bounded by
// ctx), in that order, and releases the audit file.
func (o *observability) close(ctx context.Context) error {
	var errs []error
	for _, c := range o.closer {
		errs = append(errs, c(ctx))
	}
	return errors.Join(errs...)
}

// closeWithin is close with its own deadline, for a deferred call.
func (o *observability) closeWithin(d time.Duration, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if err := o.close(ctx); err != nil {
		log.Warn("closing logs and tracing", "err", err.Error())
	}
}
