// Package envoyauthz is the Envoy ext_authz gRPC dialect of the sidecar:
// envoy.service.auth.v3.Authorization/Check, answered by the same decision
// engine and in the same terms as the HTTP forward-auth endpoints.
package envoyauthz

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/textproto"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/portcullis/portcullis/proxy"
)

// Decider is the decision engine; *proxy.Server is one.
type Decider interface {
	// Decide judges one request.
	Decide(context.Context, proxy.Attempt) proxy.Verdict
	// Denial renders a verdict that is not an allow as the HTTP
	// forward-auth endpoints would answer it.
	Denial(context.Context, *proxy.Attempt, *proxy.Verdict) proxy.Denial
}

// ServiceName is the gRPC service Envoy calls; the health service reports
// it (and "") as serving.
const ServiceName = "envoy.service.auth.v3.Authorization"

// Context extension keys, set per route in Envoy's configuration
// (ExtAuthzPerRoute.check_settings.context_extensions). Only Envoy's
// configuration can set them, so, unlike anything in the request, they
// may override the route rules.
const (
	// ExtensionPermission replaces the route rules with this permission,
	// like ?permission= on /auth/forward.
	ExtensionPermission = "permission"
	// ExtensionAssertion "true" asks for the signed identity assertion
	// (X-Auth-Assertion), like ?assertion=true.
	ExtensionAssertion = "assertion"
)

// tokenQuery is the query parameter carrying a contaxy token; Envoy takes
// it off the upstream request on every allow.
const tokenQuery = "ct_token"

// Authorization implements envoy.service.auth.v3.Authorization.
type Authorization struct {
	authv3.UnimplementedAuthorizationServer
	d Decider
}

// New returns the Authorization service over d.
func New(d Decider) *Authorization { return &Authorization{d: d} }

// Check decides one request. A denial is a CheckResponse with a
// denied_response, never a gRPC error.
func (s *Authorization) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	start := time.Now()
	a := attempt(req)
	v := s.d.Decide(ctx, a)
	if v.Allowed() {
		s.logDecision(&a, &v, http.StatusOK, start)
		return allow(&a, &v), nil
	}
	d := s.d.Denial(ctx, &a, &v)
	s.logDecision(&a, &v, d.Status, start)
	return deny(d, &v), nil
}

// DecisionLogger is what a Decider implements to write access-log lines
// (*proxy.Server does); others are not logged.
type DecisionLogger interface {
	LogDecision(a *proxy.Attempt, v *proxy.Verdict, status int, start time.Time)
}

var _ DecisionLogger = (*proxy.Server)(nil)

func (s *Authorization) logDecision(a *proxy.Attempt, v *proxy.Verdict, status int, start time.Time) {
	if l, ok := s.d.(DecisionLogger); ok {
		l.LogDecision(a, v, status, start)
	}
}

// attempt rebuilds the original request from the attribute context. Envoy
// is the trusted peer here: the client address is the one Envoy reports,
// and the pseudo headers stand in for missing fields.
func attempt(req *authv3.CheckRequest) proxy.Attempt {
	attrs := req.GetAttributes()
	hr := attrs.GetRequest().GetHttp()
	h, pseudo := headers(hr)
	a := proxy.Attempt{
		Dialect:  proxy.DialectEnvoyGRPC,
		Method:   firstNonEmpty(hr.GetMethod(), pseudo[":method"]),
		Host:     firstNonEmpty(hr.GetHost(), pseudo[":authority"], pseudo["host"]),
		Target:   firstNonEmpty(hr.GetPath(), pseudo[":path"]),
		Header:   h,
		ClientIP: attrs.GetSource().GetAddress().GetSocketAddress().GetAddress(),
	}
	if q := hr.GetQuery(); q != "" && !strings.Contains(a.Target, "?") {
		a.Target += "?" + q
	}
	if f := hr.GetFragment(); f != "" {
		// Clients never send one; the engine refuses a raw '#'.
		a.Target += "#" + f
	}
	a.RequestID = firstNonEmpty(hr.GetId(), h.Get("X-Request-Id"))
	a.Scheme = strings.ToLower(firstNonEmpty(hr.GetScheme(), pseudo[":scheme"]))
	if a.Scheme != "http" && a.Scheme != "https" {
		a.Scheme = "http"
		if p := strings.ToLower(strings.TrimSpace(h.Get("X-Forwarded-Proto"))); len(h.Values("X-Forwarded-Proto")) == 1 && (p == "http" || p == "https") {
			a.Scheme = p
		}
	}
	ext := attrs.GetContextExtensions()
	a.Permission = ext[ExtensionPermission]
	a.Assertion = ext[ExtensionAssertion] == "true"
	return a
}

// headers converts Envoy's lower-case header map (or, with
// encode_raw_headers, its header list) into canonical http.Header form.
// Pseudo headers and Host are returned apart, as net/http keeps Host out
// of Header.
func headers(hr *authv3.AttributeContext_HttpRequest) (http.Header, map[string]string) {
	h := http.Header{}
	pseudo := map[string]string{}
	add := func(k, v string) {
		if strings.HasPrefix(k, ":") || strings.EqualFold(k, "host") {
			if _, seen := pseudo[strings.ToLower(k)]; !seen {
				pseudo[strings.ToLower(k)] = v
			}
			return
		}
		ck := textproto.CanonicalMIMEHeaderKey(k)
		h[ck] = append(h[ck], v)
	}
	if hm := hr.GetHeaderMap(); len(hm.GetHeaders()) > 0 {
		for _, hv := range hm.GetHeaders() {
			v := hv.GetValue()
			if raw := hv.GetRawValue(); len(raw) > 0 {
				v = string(raw)
			}
			add(hv.GetKey(), v)
		}
		return h, pseudo
	}
	keys := make([]string, 0, len(hr.GetHeaders()))
	for k := range hr.GetHeaders() {
		keys = append(keys, k)
	}
	// Sorted, so that "Foo" and "foo" (not sent by Envoy) merge in a
	// stable order.
	slices.Sort(keys)
	for _, k := range keys {
		add(k, hr.GetHeaders()[k])
	}
	return h, pseudo
}

func firstNonEmpty(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

// allow answers status OK: the identity headers overwrite whatever the
// client sent, and the credential is taken off the upstream request.
func allow(a *proxy.Attempt, v *proxy.Verdict) *authv3.CheckResponse {
	ok := &authv3.OkHttpResponse{QueryParametersToRemove: []string{tokenQuery}}
	var blank []string
	v.Identity.Each(func(name, value string) {
		name = strings.ToLower(name)
		if value == "" {
			// Removed rather than set empty: the client's copy must not
			// reach the upstream, whatever this Envoy does with empty values.
			blank = append(blank, name)
			return
		}
		ok.Headers = append(ok.Headers, overwrite(name, value))
	})
	cr := v.CredentialRemoval(a)
	if cr.Cookie != "" {
		ok.Headers = append(ok.Headers, overwrite("cookie", cr.Cookie))
	}
	ok.HeadersToRemove = append(cr.Headers, blank...)
	return &authv3.CheckResponse{
		Status:       &rpcstatus.Status{Code: int32(codes.OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: ok},
	}
}

// deny answers a denial: UNAUTHENTICATED for 401, PERMISSION_DENIED for
// everything else, with the HTTP dialects' status, headers and body.
func deny(d proxy.Denial, v *proxy.Verdict) *authv3.CheckResponse {
	code := codes.PermissionDenied
	if v.Status == http.StatusUnauthorized {
		code = codes.Unauthenticated
	}
	names := make([]string, 0, len(d.Header))
	for name := range d.Header {
		names = append(names, name)
	}
	slices.Sort(names)
	var hs []*corev3.HeaderValueOption
	for _, name := range names {
		for i, value := range d.Header[name] {
			o := overwrite(strings.ToLower(name), value)
			if i > 0 {
				o.AppendAction = corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD
			}
			hs = append(hs, o)
		}
	}
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(code), Message: http.StatusText(d.Status)},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode(d.Status)},
			Headers: hs,
			Body:    string(d.Body),
		}},
	}
}

func overwrite(name, value string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: name, Value: value},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
}

// NewGRPCServer returns a gRPC server with the Authorization service over
// d and the standard health service (grpc.health.v1, reporting "" and
// ServiceName as serving), plus the health server so that a shutdown can
// report NOT_SERVING first. opts are appended to the defaults (keepalive
// tolerant of Envoy's pings, panic recovery).
func NewGRPCServer(d Decider, opts ...grpc.ServerOption) (*grpc.Server, *health.Server) {
	base := []grpc.ServerOption{
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.ChainUnaryInterceptor(recoverUnary),
	}
	gs := grpc.NewServer(append(base, opts...)...)
	authv3.RegisterAuthorizationServer(gs, New(d))
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	return gs, hs
}

// ShutdownGrace bounds how long Serve waits for running calls (including
// health watch streams, which never end by themselves) after ctx is
// cancelled, before it closes every connection.
var ShutdownGrace = 5 * time.Second

// Serve answers Check calls on lis until ctx is cancelled, then stops
// gracefully: health turns NOT_SERVING, no new calls are accepted, running
// ones get ShutdownGrace to finish. It returns nil after a shutdown asked
// for by ctx, else the error that stopped serving. Serve closes lis.
//
// When draining is closed first (the process's shutdown delay has begun),
// health turns NOT_SERVING at once while Check calls go on being
// answered, so that Envoy's active health checks move traffic to other
// replicas before the listener closes. A nil draining never closes.
func Serve(ctx context.Context, lis net.Listener, d Decider, draining <-chan struct{}, opts ...grpc.ServerOption) error {
	gs, hs := NewGRPCServer(d, opts...)
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		select {
		case <-draining:
			hs.Shutdown()
			select {
			case <-ctx.Done():
			case <-done:
				return
			}
		case <-ctx.Done():
		case <-done:
			return
		}
		hs.Shutdown()
		graceful := make(chan struct{})
		go func() {
			gs.GracefulStop()
			close(graceful)
		}()
		t := time.NewTimer(ShutdownGrace)
		defer t.Stop()
		select {
		case <-graceful:
		case <-t.C:
			gs.Stop()
			<-graceful
		}
	}()
	err := gs.Serve(lis)
	close(done)
	<-stopped
	if ctx.Err() != nil && (err == nil || errors.Is(err, grpc.ErrServerStopped)) {
		return nil
	}
	if err == nil {
		err = grpc.ErrServerStopped
	}
	return err
}

// recoverUnary turns a panic in a handler into an INTERNAL error (Envoy
// then applies its status_on_error) instead of ending the process.
func recoverUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	defer func() {
		if p := recover(); p != nil {
			slog.ErrorContext(ctx, "gRPC handler panicked", "method", info.FullMethod, "panic", p, "stack", string(debug.Stack()))
			resp, err = nil, status.Error(codes.Internal, "internal error")
		}
	}()
	return handler(ctx, req)
}
