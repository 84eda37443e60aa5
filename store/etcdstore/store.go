// Package etcdstore implements authz.Store on etcd v3, external or embedded.
//
// Every object is one or a few JSON values under a key prefix (see
// docs/etcd-layout.md), so operators can read and repair them with etcdctl.
// Every change that touches several keys is one etcd transaction, guarded by
// compare-and-set conditions wherever concurrent writers could interleave.
package etcdstore

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/namespace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/store/internal/etcdlog"
)

var _ authz.Store = (*Store)(nil)

// Defaults applied by Open to zero Config fields.
const (
	DefaultPrefix         = "/portcullis/"
	DefaultRequestTimeout = 5 * time.Second
	DefaultDialTimeout    = 5 * time.Second
	// DefaultWatchLivenessInterval bounds how long a silent watch is
	// trusted: three intervals.
	DefaultWatchLivenessInterval = 500 * time.Millisecond
	DefaultMaxTxnOps             = 10000
	// DefaultKeepAliveTime and DefaultKeepAliveTimeout: a connection that
	// has carried nothing for KeepAliveTime is pinged, and closed (then
	// redialled) when the ping is not answered within KeepAliveTimeout.
	// 10 s is the least gRPC allows a client; etcd's server accepts pings
	// every 5 s (--grpc-keepalive-min-time).
	DefaultKeepAliveTime    = 10 * time.Second
	DefaultKeepAliveTimeout = 5 * time.Second
)

// SchemaVersion is the version of the key layout this package reads and
// writes. Open refuses a store written by a newer version.
const SchemaVersion = 1

// ErrCorrupt marks a stored value that cannot be decoded, typically one
// written by hand. The error names the key.
var ErrCorrupt = errors.New("corrupt stored value")

// ErrTxnTooLarge is returned when a change would need more operations in
// one etcd transaction than Config.MaxTxnOps or the etcd server's
// --max-txn-ops allow. Nothing is written.
var ErrTxnTooLarge = errors.New("change too large for one etcd transaction")

// Config configures Open. Set either Client or Endpoints.
type Config struct {
	// Client is an existing client to use. The Store does not close it.
	Client *clientv3.Client
	// Endpoints, Username, Password, TLS and DialTimeout configure a client
	// that Open creates and Close closes. DialTimeout defaults to
	// DefaultDialTimeout.
	Endpoints   []string
	Username    string
	Password    string
	TLS         *tls.Config
	DialTimeout time.Duration
	// Logger receives the etcd client library's messages at LogLevel and
	// above (nil: slog.Default() and slog.LevelError). Only used when Open
	// creates the client.
	Logger   *slog.Logger
	LogLevel slog.Leveler

	// KeepAliveTime and KeepAliveTimeout configure gRPC keepalive pings on
	// the connections of a client Open creates; defaults
	// DefaultKeepAliveTime and DefaultKeepAliveTimeout, negative to
	// disable. Without them a connection whose packets are silently lost
	// (a network partition, a NAT that forgot it) is never given up: every
	// request on it times out, for as long as the kernel keeps the socket
	// (about 15 minutes), even after the network is back.
	KeepAliveTime    time.Duration
	KeepAliveTimeout time.Duration

	// Prefix is the key prefix under which everything is stored; it must
	// start and end with "/". Default DefaultPrefix. Several Portcullis
	// installations can share one etcd cluster under different prefixes.
	Prefix string
	// RequestTimeout bounds every Store call whose context has no deadline;
	// default DefaultRequestTimeout. A call that runs out of it fails with
	// authz.ErrUnavailable.
	RequestTimeout time.Duration
	// EndpointCheckInterval is how often a client Open creates with several
	// endpoints checks each member, leaving out those that do not answer
	// within it (a frozen host would otherwise stall every request routed
	// to it); default DefaultEndpointCheckInterval, negative to disable.
	EndpointCheckInterval time.Duration
	// WatchLivenessInterval is how often a current watch asks etcd for
	// progress; a watch that hears nothing for three intervals ends with
	// ErrUnavailable (so the caller stops trusting its caches and watches
	// again). Default DefaultWatchLivenessInterval, negative to disable.
	WatchLivenessInterval time.Duration
	// MaxTxnOps is the largest transaction the Store sends; default
	// DefaultMaxTxnOps. It must not exceed the server's --max-txn-ops
	// (etcd's default there is 128). A larger change fails with
	// ErrTxnTooLarge instead of being split, which would break atomicity.
	MaxTxnOps int
	// Observer, when set, is told the duration of every etcd request.
	Observer Observer
}

// Validate reports every problem of c at once. It has no side effects.
func (c Config) Validate() error {
	var errs []error
	switch {
	case c.Client != nil && len(c.Endpoints) > 0:
		errs = append(errs, errors.New("set either a client or endpoints, not both"))
	case c.Client == nil && len(c.Endpoints) == 0:
		errs = append(errs, errors.New("endpoints are required"))
	}
	if c.Client != nil && (c.Username != "" || c.Password != "" || c.TLS != nil) {
		errs = append(errs, errors.New("username, password and TLS apply only to a client Open creates"))
	}
	for _, ep := range c.Endpoints {
		if strings.TrimSpace(ep) == "" {
			errs = append(errs, errors.New("empty endpoint"))
		}
	}
	if c.Prefix != "" && (!strings.HasPrefix(c.Prefix, "/") || !strings.HasSuffix(c.Prefix, "/")) {
		errs = append(errs, fmt.Errorf("prefix %q must start and end with \"/\"", c.Prefix))
	}
	if c.RequestTimeout < 0 {
		errs = append(errs, fmt.Errorf("request timeout %s is negative", c.RequestTimeout))
	}
	if c.DialTimeout < 0 {
		errs = append(errs, fmt.Errorf("dial timeout %s is negative", c.DialTimeout))
	}
	if c.MaxTxnOps < 0 {
		errs = append(errs, fmt.Errorf("max txn ops %d is negative", c.MaxTxnOps))
	}
	return errors.Join(errs...)
}

// Store is an authz.Store on etcd. Its methods are safe for concurrent use.
type Store struct {
	client    *clientv3.Client
	ownClient bool
	prefix    string

	// All key access goes through the namespace wrappers, so no method can
	// forget the prefix or strip it wrongly.
	kv      clientv3.KV
	watcher clientv3.Watcher
	lease   clientv3.Lease

	// rawWatcher is what watcher wraps. Close closes it, not the namespace
	// wrapper: the wrapper's Close waits on a WaitGroup that a concurrent
	// Watch may still Add to, which is a data race; closing the inner
	// watcher ends the wrapper's goroutines just as well.
	rawWatcher clientv3.Watcher

	requestTimeout time.Duration
	maxTxnOps      int
	// progressRequests says whether Watch may ask etcd for a progress
	// notification; see progressRequestsSafe.
	progressRequests bool
	obs              Observer

	// checker prunes unresponsive endpoints (nil with one endpoint or a
	// caller's client).
	checker *endpointChecker

	livenessInterval time.Duration

	// markers is the lease of the transaction markers (see commitWrite);
	// fenceTimeout bounds the re-read of a write whose outcome is open.
	markers      *markerLeases
	fenceTimeout time.Duration

	closeOnce sync.Once
	closeErr  error
}

// Open connects to etcd (or uses cfg.Client), then creates the schema key or
// checks that the stored layout is one this version understands.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("open etcd store: %w", err)
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.MaxTxnOps == 0 {
		cfg.MaxTxnOps = DefaultMaxTxnOps
	}
	if cfg.WatchLivenessInterval == 0 {
		cfg.WatchLivenessInterval = DefaultWatchLivenessInterval
	}
	if cfg.KeepAliveTime == 0 {
		cfg.KeepAliveTime = DefaultKeepAliveTime
	}
	if cfg.KeepAliveTimeout == 0 {
		cfg.KeepAliveTimeout = DefaultKeepAliveTimeout
	}

	s := &Store{
		client:           cfg.Client,
		prefix:           cfg.Prefix,
		requestTimeout:   cfg.RequestTimeout,
		maxTxnOps:        cfg.MaxTxnOps,
		livenessInterval: cfg.WatchLivenessInterval,
		obs:              cfg.Observer,
		markers:          newMarkerLeases(defaultMarkerTTL),
		fenceTimeout:     cfg.RequestTimeout,
	}
	if s.client == nil {
		c, err := clientv3.New(clientv3.Config{
			Endpoints:   cfg.Endpoints,
			Username:    cfg.Username,
			Password:    cfg.Password,
			TLS:         cfg.TLS,
			DialTimeout: cfg.DialTimeout,
			// Zero disables keepalive in clientv3.
			DialKeepAliveTime:    max(cfg.KeepAliveTime, 0),
			DialKeepAliveTimeout: max(cfg.KeepAliveTimeout, 0),
			Logger:               etcdlog.New(cfg.Logger, cfg.LogLevel, nil),
		})
		if err != nil {
			return nil, fmt.Errorf("open etcd store: connect: %w", classify(err))
		}
		s.client, s.ownClient = c, true
	}
	s.kv = namespace.NewKV(s.client.KV, s.prefix)
	if s.obs != nil {
		s.kv = observedKV{KV: s.kv, s: s}
	}
	// Own watcher and lease instances: closing them on Close must not stop
	// watches and keep-alives of a client the caller shares with others.
	s.rawWatcher = clientv3.NewWatcher(s.client)
	s.watcher = namespace.NewWatcher(s.rawWatcher, s.prefix)
	s.lease = namespace.NewLease(clientv3.NewLease(s.client), s.prefix)

	if err := s.checkSchema(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("open etcd store: %w", err)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	s.progressRequests = s.progressRequestsSafe(ctx, logger)
	if s.ownClient && len(cfg.Endpoints) > 1 && cfg.EndpointCheckInterval >= 0 {
		interval := cfg.EndpointCheckInterval
		if interval == 0 {
			interval = DefaultEndpointCheckInterval
		}
		s.checker = startEndpointChecker(s.client, cfg.Endpoints, interval, logger)
	}
	return s, nil
}

// progressRequestsSafe reports whether every endpoint runs an etcd that
// answers a progress request only once the watch has delivered every event
// up to the revision it reports. Older servers (3.4 before 3.4.24, 3.5
// before 3.5.8) answer at once with the current revision, even while the
// watch is still replaying history: a consumer would then believe its
// caches current while invalidations are still on their way. With those,
// Watch relies on etcd's periodic notifications, which are safe.
func (s *Store) progressRequestsSafe(ctx context.Context, logger *slog.Logger) bool {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	for _, ep := range s.client.Endpoints() {
		st, err := s.client.Status(ctx, ep)
		if err != nil {
			logger.Warn("etcd store: cannot read the etcd version; watch progress comes only from etcd's periodic notifications",
				"endpoint", ep, "err", err)
			return false
		}
		if !fixedProgressRequests(st.Version) {
			logger.Warn("etcd store: this etcd answers progress requests unsafely; watch progress comes only from etcd's periodic notifications (upgrade to etcd 3.4.24, 3.5.8 or newer, or lower --experimental-watch-progress-notify-interval, default 10m)",
				"endpoint", ep, "version", st.Version)
			return false
		}
	}
	return true
}

// fixedProgressRequests reports whether etcd version v has the fix for
// progress requests on unsynced watchers (etcd-io/etcd#15237).
func fixedProgressRequests(v string) bool {
	var major, minor, patch int
	if _, err := fmt.Sscanf(v, "%d.%d.%d", &major, &minor, &patch); err != nil {
		return false
	}
	switch {
	case major != 3:
		return major > 3
	case minor == 4:
		return patch >= 24
	case minor == 5:
		return patch >= 8
	}
	return minor > 5
}

type schemaValue struct {
	Version int `json:"version"`
}

// checkSchema creates the schema key if absent, in a transaction so that two
// replicas starting at once on an empty prefix agree, and otherwise reads it.
func (s *Store) checkSchema(ctx context.Context) error {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	want, _ := json.Marshal(schemaValue{Version: SchemaVersion})
	resp, err := s.kv.Txn(ctx).
		If(absent(keySchema)).
		Then(clientv3.OpPut(keySchema, string(want))).
		Else(clientv3.OpGet(keySchema)).
		Commit()
	if err != nil {
		return s.fail(ctx, "check schema", err)
	}
	if resp.Succeeded {
		return nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return errors.New("check schema: schema key vanished")
	}
	var v schemaValue
	if err := decode(kvs[0].Value, &v, "schema"); err != nil {
		return err
	}
	switch {
	case v.Version > SchemaVersion:
		return fmt.Errorf("stored data under %q has schema version %d, newer than this Portcullis understands (%d): upgrade Portcullis", s.prefix, v.Version, SchemaVersion)
	case v.Version < 1:
		return fmt.Errorf("schema: %w: version %d", ErrCorrupt, v.Version)
	}
	return nil
}

// Close releases the Store's watches and leases, and closes the client if
// Open created it. Watch calls in progress return. Safe to call more than
// once; later calls return the first call's result.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		if s.checker != nil {
			s.checker.stop()
		}
		errs := []error{s.rawWatcher.Close(), s.lease.Close()}
		if s.ownClient {
			errs = append(errs, s.client.Close())
		}
		for i, err := range errs {
			// Closing cancels the client's own context; that is not a failure.
			if errors.Is(err, context.Canceled) {
				errs[i] = nil
			}
		}
		if err := errors.Join(errs...); err != nil {
			s.closeErr = fmt.Errorf("close etcd store: %w", err)
		}
	})
	return s.closeErr
}

// EtcdClient returns the underlying client, for health checks and tools.
// Keys written through it are not prefixed. (It cannot be named Client:
// authz.Store's Client reads an OAuth2 client.)
func (s *Store) EtcdClient() *clientv3.Client { return s.client }

// Prefix returns the key prefix the Store works under.
func (s *Store) Prefix() string { return s.prefix }

// Compact discards the revision history of the whole etcd cluster (not just
// this Store's prefix) before rev, and returns once the compaction was
// applied, so a Watch from an older revision fails with authz.ErrCompacted.
// Production relies on etcd's auto-compaction; this exists for tests.
func (s *Store) Compact(ctx context.Context, rev authz.Revision) error {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	start := time.Now()
	_, err := s.client.Compact(ctx, rev, clientv3.WithCompactPhysical())
	s.observe(OpCompact, start, err)
	if err != nil {
		return s.fail(ctx, "compact", err)
	}
	return nil
}

// CurrentRevision implements authz.Store.
func (s *Store) CurrentRevision(ctx context.Context) (authz.Revision, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	// A linearizable read of any key carries the newest revision in its header.
	resp, err := s.kv.Get(ctx, keySchema, clientv3.WithCountOnly())
	if err != nil {
		return 0, s.fail(ctx, "current revision", err)
	}
	return resp.Header.Revision, nil
}

// withTimeout applies RequestTimeout when ctx has no deadline of its own.
// The returned context remembers the caller's, so that fail can tell the
// caller's cancellation from our timeout.
func (s *Store) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	parent := ctx
	if _, ok := ctx.Deadline(); ok {
		ctx, cancel := context.WithCancel(ctx)
		return context.WithValue(ctx, callerKey{}, parent), cancel
	}
	ctx, cancel := context.WithTimeout(ctx, s.requestTimeout)
	return context.WithValue(ctx, callerKey{}, parent), cancel
}

type callerKey struct{}

// fail turns an etcd error into the error the authz.Store contract promises:
// the caller's ctx error when the caller's context ended, ErrUnavailable
// (still matching the etcd error) when etcd could not answer, and
// ErrTxnTooLarge when the server refused the transaction's size.
func (s *Store) fail(ctx context.Context, op string, err error) error {
	if caller, ok := ctx.Value(callerKey{}).(context.Context); ok && caller.Err() != nil {
		return fmt.Errorf("%s: %w", op, caller.Err())
	}
	if errors.Is(err, rpctypes.ErrTooManyOps) {
		return fmt.Errorf("%s: %w: etcd refused it (raise the server's --max-txn-ops or lower MaxTxnOps): %w", op, ErrTxnTooLarge, err)
	}
	return fmt.Errorf("%s: %w", op, classify(err))
}

// classify wraps errors that mean "etcd could not be reached or did not
// answer" so they match authz.ErrUnavailable as well as the original error.
func classify(err error) error {
	if unavailable(err) {
		return fmt.Errorf("%w: %w", authz.ErrUnavailable, err)
	}
	return err
}

// grpcCode is the gRPC status code etcd answered with, from its typed
// errors or a plain gRPC status; false when err carries none.
func grpcCode(err error) (codes.Code, bool) {
	var etcdErr rpctypes.EtcdError
	if errors.As(err, &etcdErr) {
		return etcdErr.Code(), true
	}
	if st, ok := status.FromError(err); ok {
		return st.Code(), true
	}
	return 0, false
}

func unavailable(err error) bool {
	switch {
	case errors.Is(err, context.DeadlineExceeded), // our RequestTimeout or DialTimeout
		errors.Is(err, context.Canceled), // the client was closed under us
		errors.Is(err, clientv3.ErrNoAvailableEndpoints):
		return true
	}
	code, ok := grpcCode(err)
	if !ok {
		return false
	}
	switch code {
	case codes.Unavailable, // no leader, leader changed, stopping, connection refused
		codes.DeadlineExceeded, // etcd's own request timeout
		codes.Canceled,
		codes.ResourceExhausted, // NOSPACE alarm, too many requests
		codes.Unauthenticated,   // expired or invalid auth token
		codes.PermissionDenied:  // the etcd user lacks a role on our prefix
		return true
	}
	return false
}

// checkOps refuses a transaction larger than MaxTxnOps before sending it.
// etcd checks compares, success ops and failure ops separately.
func (s *Store) checkOps(op string, lens ...int) error {
	for _, n := range lens {
		if n > s.maxTxnOps {
			return fmt.Errorf("%s: %w: needs %d operations, MaxTxnOps is %d", op, ErrTxnTooLarge, n, s.maxTxnOps)
		}
	}
	return nil
}

// commit sends one transaction after checking its size. A transaction
// that writes goes through commitWrite: it carries a marker that stamps
// the commit time for watchers and lets a failure whose outcome is open be
// settled by a re-read, so the caller learns whether it was applied.
//
// Callers may rely on Header.Revision and Succeeded. Responses holds the
// results of the branch that ran, except when a write's outcome was
// settled by a re-read: then it is nil. So read Responses only after a
// branch without writes ran (the usual "on failure, read what decides the
// error" else branch).
func (s *Store) commit(ctx context.Context, op string, cmps []clientv3.Cmp, then, els []clientv3.Op) (*clientv3.TxnResponse, error) {
	if hasWrites(then) || hasWrites(els) {
		return s.commitWrite(ctx, op, cmps, then, els)
	}
	if err := s.checkOps(op, len(cmps), len(then), len(els)); err != nil {
		return nil, err
	}
	resp, err := s.kv.Txn(ctx).If(cmps...).Then(then...).Else(els...).Commit()
	if err != nil {
		return nil, s.fail(ctx, op, err)
	}
	return resp, nil
}

// readBatch bounds the gets of one read-only transaction where atomicity
// is not needed: it stays under etcd's default --max-txn-ops of 128.
const readBatch = 100

// getEach reads the given keys, in batches, and returns the values of those
// that exist by key.
func (s *Store) getEach(ctx context.Context, op string, keys []string) (map[string][]byte, error) {
	out := make(map[string][]byte, len(keys))
	for len(keys) > 0 {
		n := min(len(keys), readBatch)
		ops := make([]clientv3.Op, n)
		for i, k := range keys[:n] {
			ops[i] = clientv3.OpGet(k)
		}
		resp, err := s.commit(ctx, op, nil, ops, nil)
		if err != nil {
			return nil, err
		}
		for _, r := range resp.Responses {
			for _, kv := range r.GetResponseRange().Kvs {
				out[string(kv.Key)] = kv.Value
			}
		}
		keys = keys[n:]
	}
	return out, nil
}

// absent is the compare-and-set guard "key does not exist".
func absent(key string) clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
}

// exists is the guard "key exists".
func exists(key string) clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(key), ">", 0)
}

// unchanged is the guard "key has not been written since it was read at
// modRev" (0: it was absent and still is).
func unchanged(key string, modRev int64) clientv3.Cmp {
	return clientv3.Compare(clientv3.ModRevision(key), "=", modRev)
}

// noneNewer is the guard "no key under prefix was created or modified
// after rev". Deletions after rev are not detected, which no caller needs.
func noneNewer(prefix string, rev int64) clientv3.Cmp {
	return clientv3.Compare(clientv3.ModRevision(prefix), "<", rev+1).WithPrefix()
}

func encode(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		// Every stored type is plain data; this is a programming error.
		panic(fmt.Sprintf("etcdstore: encode %T: %v", v, err))
	}
	return string(b)
}

func decode(data []byte, v any, key string) error {
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("key %q: %w: %w", key, ErrCorrupt, err)
	}
	return nil
}
