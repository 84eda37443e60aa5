package proxy

import (
	"context"
	"net/http"

	"github.com/labstack/echo/v4"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/portcullis/portcullis/proxy/accesslog"
)

// traceContext reads and writes W3C traceparent/tracestate headers.
var traceContext = propagation.TraceContext{}

// Span names.
const (
	spanDecide   = "portcullis.decide"
	spanProxy    = "portcullis.proxy"
	spanUpstream = "portcullis.upstream"
	spanAPI      = "portcullis.api"
)

// startDecision opens the decision span when tracing is on (nil span
// otherwise: the hot path then pays one comparison). Its parent is the
// span in ctx (the reverse proxy's request span) or else the trace
// context of the original request, as the proxy in front forwarded it.
func (s *Server) startDecision(ctx context.Context, a *Attempt) (context.Context, trace.Span) {
	if s.tracer == nil {
		return ctx, nil
	}
	kind := trace.SpanKindInternal
	if !trace.SpanContextFromContext(ctx).IsValid() {
		ctx = traceContext.Extract(ctx, propagation.HeaderCarrier(a.Header))
		kind = trace.SpanKindServer
	}
	return s.tracer.Start(ctx, spanDecide, trace.WithSpanKind(kind),
		trace.WithAttributes(attribute.String("portcullis.dialect", string(a.Dialect)), attribute.String("http.request.method", a.Method)))
}

// endDecision records the verdict on the decision span (never the
// subject's credential; the subject id is not recorded either, spans
// travel to third-party backends).
func endDecision(span trace.Span, v *Verdict) {
	if span == nil {
		return
	}
	span.SetAttributes(attribute.String("portcullis.decision", accesslog.DecisionOf(v.Status)),
		attribute.String("portcullis.rule", v.Rule), attribute.Int("portcullis.status", v.Status))
	if v.Status >= 500 {
		span.SetStatus(codes.Error, "decision failed")
	}
	span.End()
}

// startProxySpan opens the span of one reverse-proxied request, child of
// the client's trace context when it sent one.
func (s *Server) startProxySpan(r *http.Request) (*http.Request, trace.Span) {
	ctx := traceContext.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	ctx, span := s.tracer.Start(ctx, spanProxy, trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("http.request.method", r.Method)))
	return r.WithContext(ctx), span
}

func endHTTPSpan(span trace.Span, status int) {
	span.SetAttributes(attribute.Int("http.response.status_code", status))
	if status >= 500 {
		span.SetStatus(codes.Error, http.StatusText(status))
	}
	span.End()
}

// tracingTransport traces upstream calls and sends the trace context
// upstream, so the app's spans join the request's trace.
type tracingTransport struct {
	next   http.RoundTripper
	tracer trace.Tracer
}

var _ http.RoundTripper = (*tracingTransport)(nil)

func (t *tracingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx, span := t.tracer.Start(req.Context(), spanUpstream, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("http.request.method", req.Method), attribute.String("server.address", req.URL.Host)))
	// A RoundTripper must not modify its request: inject into a copy.
	req = req.Clone(ctx)
	traceContext.Inject(ctx, propagation.HeaderCarrier(req.Header))
	resp, err := t.next.RoundTrip(req)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, "upstream request failed")
		span.End()
		return nil, err
	}
	endHTTPSpan(span, resp.StatusCode)
	return resp, nil
}

// traceAPI is the echo middleware that opens a span per API request, so
// that the store calls it makes belong to one trace.
func (s *Server) traceAPI(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		req := c.Request()
		ctx := traceContext.Extract(req.Context(), propagation.HeaderCarrier(req.Header))
		ctx, span := s.tracer.Start(ctx, spanAPI, trace.WithSpanKind(trace.SpanKindServer),
			trace.WithAttributes(attribute.String("http.request.method", req.Method), attribute.String("http.route", c.Path())))
		c.SetRequest(req.WithContext(ctx))
		err := next(c)
		if err != nil {
			c.Error(err)
		}
		status := c.Response().Status
		if status == 0 {
			status = http.StatusOK
		}
		endHTTPSpan(span, status)
		return nil
	}
}
