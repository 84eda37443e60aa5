package etcdtest

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
)

// Link is a TCP proxy on loopback in front of one address, which a test
// can cut and restore as a network partition would. A partition is not a
// dead process: nothing is refused or reset, packets are just lost, so
// connections stay open and hang, and only timeouts and keepalives notice.
//
// While the link is partitioned, no byte crosses it in either direction:
// established connections stay open but forward nothing (what was in
// flight is held, as a sender's unacknowledged segments would be), and new
// connections are accepted (loopback cannot drop a SYN) but not connected
// to the target until the link heals, so a client sees a connection on
// which nothing ever answers.
//
// Heal restores the link the way a real partition ends while the
// endpoints' TCP state survives: held data is delivered and every
// connection, old or new, forwards again. HealNewOnly models the other
// ending, where the state of the connections is lost during the outage (a
// NAT or stateful firewall that forgot them, a route through another box):
// new connections work, connections that were established before the
// partition stay silent until an endpoint gives up on them.
type Link struct {
	target string
	ln     net.Listener
	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc

	mu    sync.Mutex
	open  chan struct{} // closed while the link forwards
	cuts  int           // partitions so far
	conns map[*linkConn]struct{}

	wg sync.WaitGroup
}

// linkConn is one proxied connection: the client's side and the target's.
type linkConn struct {
	client   net.Conn
	upstream net.Conn // nil until connected
	// cut is how many partitions the link had seen when the connection was
	// accepted; stranded is set by HealNewOnly for those from before it.
	cut       int
	stranded  bool
	halfDone  int // directions that ended with EOF
	closeOnce sync.Once
}

// NewLink starts a link to target (host:port, or an http:// URL such as an
// etcd endpoint) on a free 127.0.0.1 port. It forwards until Partition and
// is closed when t ends.
func NewLink(t testing.TB, target string) *Link {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("link to %s: %v", target, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &Link{
		target: strings.TrimPrefix(target, "http://"),
		ln:     ln,
		ctx:    ctx,
		cancel: cancel,
		open:   make(chan struct{}),
		conns:  map[*linkConn]struct{}{},
	}
	close(l.open)
	l.wg.Go(l.accept)
	t.Cleanup(l.Close)
	return l
}

// Addr is the link's host:port; clients connect here instead of the target.
func (l *Link) Addr() string { return l.ln.Addr().String() }

// Endpoint is Addr as an etcd client endpoint URL.
func (l *Link) Endpoint() string { return "http://" + l.Addr() }

// Partition cuts the link in both directions; see Link.
func (l *Link) Partition() {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.open:
		l.open = make(chan struct{})
		l.cuts++
	default: // already partitioned
	}
}

// Heal ends a partition: every connection forwards again, starting with
// what was held while the link was cut.
func (l *Link) Heal() { l.heal(false) }

// HealNewOnly ends a partition for new connections only: those established
// before it never forward again (their state was lost); connections
// accepted during the partition are connected as with Heal.
func (l *Link) HealNewOnly() { l.heal(true) }

func (l *Link) heal(strand bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.open:
		return // not partitioned
	default:
	}
	if strand {
		for c := range l.conns {
			if c.cut < l.cuts {
				c.stranded = true
			}
		}
	}
	close(l.open)
}

// Close stops the link: the listener and every connection are closed, and
// Close returns once every goroutine of the link has ended. Safe to call
// more than once.
func (l *Link) Close() {
	l.cancel()
	_ = l.ln.Close()
	l.mu.Lock()
	for c := range l.conns {
		c.close()
	}
	l.mu.Unlock()
	l.wg.Wait()
}

// pass blocks while the link is partitioned (forever for a stranded
// connection) and reports whether c may forward; false once the link is
// closed.
func (l *Link) pass(c *linkConn) bool {
	for {
		l.mu.Lock()
		open, stranded := l.open, c.stranded
		l.mu.Unlock()
		if stranded {
			open = nil // never ready: wait for Close
		}
		select {
		case <-open:
			// A partition may have begun since open was read: look again
			// only if so, so a healthy link costs one lock per read.
			l.mu.Lock()
			still := l.open == open && !c.stranded
			l.mu.Unlock()
			if still {
				return true
			}
		case <-l.ctx.Done():
			return false
		}
	}
}

func (l *Link) accept() {
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			return // closed
		}
		l.mu.Lock()
		if l.ctx.Err() != nil {
			l.mu.Unlock()
			_ = conn.Close()
			return
		}
		c := &linkConn{client: conn, cut: l.cuts}
		l.conns[c] = struct{}{}
		l.mu.Unlock()
		l.wg.Go(func() { l.connect(c) })
	}
}

// connect dials the target once the link lets c through, then forwards
// both ways.
func (l *Link) connect(c *linkConn) {
	if !l.pass(c) {
		l.drop(c)
		return
	}
	var d net.Dialer
	up, err := d.DialContext(l.ctx, "tcp", l.target)
	if err != nil {
		l.drop(c) // the target is down: the client sees the connection end
		return
	}
	l.mu.Lock()
	c.upstream = up
	closed := l.ctx.Err() != nil
	l.mu.Unlock()
	if closed {
		// Close may have closed c before upstream was set.
		_ = up.Close()
		l.drop(c)
		return
	}
	l.wg.Go(func() { l.pump(c, up, c.client) })
	l.pump(c, c.client, up)
}

// pump copies src to dst, holding each chunk read while the link is cut.
// An EOF is passed on as a half-close; the connection is closed when both
// directions have ended or either fails.
func (l *Link) pump(c *linkConn, dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if !l.pass(c) {
			l.drop(c)
			return
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				l.drop(c)
				return
			}
		}
		if errors.Is(err, io.EOF) {
			if tc, ok := dst.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
			}
			l.mu.Lock()
			c.halfDone++
			both := c.halfDone == 2
			l.mu.Unlock()
			if both {
				l.drop(c)
			}
			return
		}
		if err != nil {
			l.drop(c)
			return
		}
	}
}

// drop closes c and forgets it.
func (l *Link) drop(c *linkConn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
	c.close()
}

func (c *linkConn) close() {
	c.closeOnce.Do(func() {
		_ = c.client.Close()
		if c.upstream != nil {
			_ = c.upstream.Close()
		}
	})
}
