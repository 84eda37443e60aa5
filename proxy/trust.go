package proxy

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"

	"github.com/labstack/echo/v4"
)

// TrustedProxies is the set of peers whose X-Forwarded-*, X-Original-*,
// X-Real-IP and Forwarded headers are believed. It is empty by default:
// loopback and private networks are not trusted implicitly, because a
// sidecar's neighbours on the pod network are not its ingress.
type TrustedProxies []netip.Prefix

// ParseTrustedProxies reads CIDRs or single addresses.
func ParseTrustedProxies(list []string) (TrustedProxies, error) {
	var out TrustedProxies
	for _, s := range list {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("trusted proxy %q: want a CIDR (10.0.0.0/8) or an address", s)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}

// Contains reports whether addr is a trusted proxy.
func (t TrustedProxies) Contains(addr netip.Addr) bool {
	addr = addr.Unmap()
	for _, p := range t {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// peerAddr is the address of the connection's other end.
func peerAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		a, _ := netip.ParseAddr(host)
		return a.Unmap()
	}
	return ap.Addr().Unmap()
}

// trusted reports whether the request came straight from a trusted proxy.
func (t TrustedProxies) trusted(r *http.Request) bool {
	return len(t) > 0 && t.Contains(peerAddr(r))
}

// clientIP is the address of the client: the peer, unless the peer is a
// trusted proxy, in which case X-Forwarded-For is walked from the right,
// skipping trusted hops, to the first address we cannot vouch for.
// X-Real-IP (nginx) is used when X-Forwarded-For is absent.
func (t TrustedProxies) clientIP(r *http.Request) string {
	peer := peerAddr(r)
	if len(t) == 0 || !t.Contains(peer) {
		return peer.String()
	}
	xff := r.Header["X-Forwarded-For"]
	if len(xff) > 0 {
		hops := strings.Split(strings.Join(xff, ","), ",")
		for i := len(hops) - 1; i >= 0; i-- {
			a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
			if err != nil {
				// Garbage in the chain: the last hop we can vouch for
				// is the best we know.
				break
			}
			a = a.Unmap()
			peer = a
			if !t.Contains(a) {
				break
			}
		}
		return peer.String()
	}
	if xr := r.Header["X-Real-Ip"]; len(xr) == 1 {
		if a, err := netip.ParseAddr(strings.TrimSpace(xr[0])); err == nil {
			return a.Unmap().String()
		}
	}
	return peer.String()
}

// IPExtractor gives echo (and everything that asks echo for RealIP) the
// same client address as the forward-auth layer.
func (t TrustedProxies) IPExtractor() echo.IPExtractor {
	return t.clientIP
}

// maxForwardedHeader bounds any forwarded header we read.
const maxForwardedHeader = 8 << 10

// singleHeader returns a header that must appear at most once and be of
// bounded length; ok is false when it is absent.
func singleHeader(h http.Header, name string) (v string, ok bool, err error) {
	vs := h[name] // callers pass canonical names; no per-call canonicalisation
	if len(vs) == 0 {
		vs = h.Values(name)
	}
	switch {
	case len(vs) == 0:
		return "", false, nil
	case len(vs) > 1:
		return "", false, badRequest(name + " given more than once")
	case len(vs[0]) > maxForwardedHeader:
		return "", false, badRequest(fmt.Sprintf("%s longer than %d bytes", name, maxForwardedHeader))
	}
	return vs[0], true, nil
}
