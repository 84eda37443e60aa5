// Package embedetcd runs a single-node etcd server inside the Portcullis
// process, for installations that do not operate an etcd cluster.
//
// The server listens on loopback only; clients in the same process reach it
// through Endpoints. It follows the life cycle etcd's own embed package
// intends: validate the configuration, start, wait for ReadyNotify with a
// deadline, surface Err into the caller's run group, Close once.
package embedetcd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/portcullis/portcullis/store/internal/etcdlog"
)

// Defaults applied by Start to zero Config fields.
const (
	DefaultAutoCompactionRetention = "1h"
	DefaultMaxTxnOps               = 10000
	DefaultStartTimeout            = 60 * time.Second
)

// LockFileName is the file in the data directory that Start locks, so that
// two processes never open one etcd data directory at once.
const LockFileName = "portcullis.lock"

// bindAttempts bounds the retries when a free port picked for etcd is taken
// by someone else before etcd binds it.
const bindAttempts = 5

// Config configures the embedded server. Only DataDir is required.
type Config struct {
	// DataDir holds etcd's data and the lock file. It is created (mode 0700)
	// if missing. Required.
	DataDir string
	// Logger receives etcd's own log messages; nil means slog.Default().
	Logger *slog.Logger
	// LogLevel is the lowest level of etcd's messages that reach Logger;
	// nil means slog.LevelError, because etcd reports every routine step at
	// info level.
	LogLevel slog.Leveler
	// QuotaBackendBytes is the size at which etcd raises a NOSPACE alarm and
	// refuses writes; 0 means etcd's default (2 GiB).
	QuotaBackendBytes int64
	// AutoCompactionRetention is how much revision history etcd keeps
	// (periodic mode): a Go duration such as "1h" or a whole number of hours.
	// "0" disables auto-compaction. Empty means DefaultAutoCompactionRetention.
	AutoCompactionRetention string
	// MaxTxnOps is the most operations etcd accepts in one transaction;
	// 0 means DefaultMaxTxnOps. A user's deletion is one transaction over all
	// its grants and tokens, so etcd's own default of 128 is too small.
	MaxTxnOps uint
	// StartTimeout bounds how long Start waits for etcd to become ready;
	// 0 means DefaultStartTimeout.
	StartTimeout time.Duration
	// WatchProgressNotifyInterval is how often etcd sends progress
	// notifications to idle watchers; 0 means etcd's default (10 minutes).
	// etcd keeps this setting process-wide, so the last server started wins.
	WatchProgressNotifyInterval time.Duration
}

// Validate reports every problem of c at once. It has no side effects.
func (c Config) Validate() error {
	var errs []error
	if c.DataDir == "" {
		errs = append(errs, errors.New("data dir is required"))
	}
	if c.QuotaBackendBytes < 0 {
		errs = append(errs, fmt.Errorf("quota backend bytes %d is negative", c.QuotaBackendBytes))
	}
	if c.AutoCompactionRetention != "" {
		if err := checkRetention(c.AutoCompactionRetention); err != nil {
			errs = append(errs, err)
		}
	}
	if c.StartTimeout < 0 {
		errs = append(errs, fmt.Errorf("start timeout %s is negative", c.StartTimeout))
	}
	if c.WatchProgressNotifyInterval < 0 {
		errs = append(errs, fmt.Errorf("watch progress notify interval %s is negative", c.WatchProgressNotifyInterval))
	}
	return errors.Join(errs...)
}

// checkRetention accepts what etcd accepts in periodic mode: a whole number
// of hours or a duration.
func checkRetention(s string) error {
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n < 0 {
			return fmt.Errorf("auto compaction retention %q is negative", s)
		}
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("auto compaction retention %q is neither a duration nor a number of hours", s)
	}
	if d < 0 {
		return fmt.Errorf("auto compaction retention %q is negative", s)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.AutoCompactionRetention == "" {
		c.AutoCompactionRetention = DefaultAutoCompactionRetention
	}
	if c.MaxTxnOps == 0 {
		c.MaxTxnOps = DefaultMaxTxnOps
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = DefaultStartTimeout
	}
	return c
}

// DirInUseError is returned by Start when another process (or another Server
// in this process) holds the data directory's lock.
type DirInUseError struct {
	Dir string
	PID int // the pid recorded in the lock file; 0 if unreadable
}

func (e *DirInUseError) Error() string {
	if e.PID == 0 {
		return fmt.Sprintf("data directory %q is already in use by another Portcullis process", e.Dir)
	}
	return fmt.Sprintf("data directory %q is already in use by another Portcullis process (pid %d)", e.Dir, e.PID)
}

// Server is a running embedded etcd. Its methods are safe for concurrent use.
type Server struct {
	etcd      *embed.Etcd
	stopping  *atomic.Bool // demotes etcd's shutdown noise, see etcdlog.New
	lock      *os.File
	dataDir   string
	endpoints []string

	closeOnce sync.Once
	closeErr  error
}

// Start validates cfg, locks the data directory and starts etcd on free
// loopback ports, returning once etcd serves requests. On any failure
// everything started so far is stopped and the lock released. ctx bounds the
// start only; the server runs until Close.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("start embedded etcd: %w", err)
	}
	cfg = cfg.withDefaults()
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("start embedded etcd: create data dir: %w", err)
	}
	// The lock comes first: etcd itself would only notice a second user of
	// the directory after replaying the WAL, with a far less clear error.
	lock, err := lockDataDir(cfg.DataDir, filepath.Join(cfg.DataDir, LockFileName))
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd: %w", err)
	}
	// etcd's first bootstrap is not crash-safe: stopped before it wrote its
	// first raft entry, it leaves a WAL with no members that never elects a
	// leader again. A cluster that never became ready holds no data, so when
	// this start created it, a failed start removes it.
	memberDir := filepath.Join(cfg.DataDir, "member")
	_, statErr := os.Stat(memberDir)
	fresh := errors.Is(statErr, os.ErrNotExist)
	s, err := start(ctx, cfg)
	if err != nil {
		if fresh {
			if rerr := os.RemoveAll(memberDir); rerr != nil {
				err = errors.Join(err, fmt.Errorf("remove half-created %s: %w", memberDir, rerr))
			}
		}
		// Unlocking cannot make the start error any clearer; report the start error.
		_ = unlockDataDir(lock)
		return nil, fmt.Errorf("start embedded etcd: %w", err)
	}
	s.lock = lock
	return s, nil
}

func start(ctx context.Context, cfg Config) (*Server, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.StartTimeout)
	defer cancel()

	var (
		e         *embed.Etcd
		clientURL url.URL
		stopping  = new(atomic.Bool)
	)
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("etcd not started: %w", err)
		}
		ports, err := freePorts(2)
		if err != nil {
			return nil, err
		}
		clientURL = url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))}
		peerURL := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1]))}
		// A fresh embed.Config per attempt: StartEtcd's validation mutates it.
		e, err = embed.StartEtcd(etcdConfig(cfg, clientURL, peerURL, stopping))
		if err == nil {
			break
		}
		// Between closing our probe listener and etcd binding the port,
		// another process may have taken it; that is worth another try.
		if errors.Is(err, syscall.EADDRINUSE) && attempt < bindAttempts && ctx.Err() == nil {
			continue
		}
		return nil, err // StartEtcd has already stopped what it started
	}

	if err := ctx.Err(); err != nil {
		// Already late: do not let a select between a ready server and an
		// expired deadline decide at random.
		stopping.Store(true)
		e.Server.Stop()
		e.Close()
		return nil, fmt.Errorf("etcd not ready: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		stopping.Store(true)
		e.Close()
		if err == nil {
			err = errors.New("etcd stopped before it was ready")
		}
		return nil, err
	case <-ctx.Done():
		// Stop aborts a server still replaying its WAL or electing a leader,
		// as etcd's embed documentation recommends, before Close waits for it.
		stopping.Store(true)
		e.Server.Stop()
		e.Close()
		return nil, fmt.Errorf("etcd not ready: %w", ctx.Err())
	}
	return &Server{etcd: e, stopping: stopping, dataDir: cfg.DataDir, endpoints: []string{clientURL.String()}}, nil
}

func etcdConfig(cfg Config, clientURL, peerURL url.URL, stopping *atomic.Bool) *embed.Config {
	ec := embed.NewConfig()
	ec.Name = "portcullis"
	ec.Dir = cfg.DataDir
	// Loopback only: the embedded server is for this process. Operators who
	// need a reachable etcd run one and point Portcullis at it.
	ec.ListenClientUrls = []url.URL{clientURL}
	ec.AdvertiseClientUrls = []url.URL{clientURL}
	ec.ListenPeerUrls = []url.URL{peerURL}
	ec.AdvertisePeerUrls = []url.URL{peerURL}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	ec.EnableGRPCGateway = false
	ec.AutoCompactionMode = embed.CompactorModePeriodic
	ec.AutoCompactionRetention = cfg.AutoCompactionRetention
	ec.QuotaBackendBytes = cfg.QuotaBackendBytes
	ec.MaxTxnOps = cfg.MaxTxnOps
	ec.WatchProgressNotifyInterval = cfg.WatchProgressNotifyInterval
	ec.Logger = "zap"
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(
		etcdlog.New(cfg.Logger, cfg.LogLevel, stopping).With(zap.String("component", "embedded-etcd")))
	return ec
}

// freePorts returns n distinct loopback ports that were free a moment ago.
// All probe listeners are open at once so the ports differ.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		defer l.Close() // held until all ports are picked
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// Endpoints returns the client URLs of the server, for clientv3.Config.
func (s *Server) Endpoints() []string { return append([]string(nil), s.endpoints...) }

// DataDir returns the data directory the server holds locked.
func (s *Server) DataDir() string { return s.dataDir }

// Err receives an error when etcd fails while running. It is closed once
// etcd has stopped, after Close; a run group should treat a receive before
// its own shutdown as fatal.
func (s *Server) Err() <-chan error { return s.etcd.Err() }

// Close stops etcd, waiting for in-flight requests up to etcd's request
// timeout, and releases the data directory. It is safe to call more than
// once and concurrently; later calls return the first call's result.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.stopping.Store(true)
		s.etcd.Close()
		if s.lock != nil {
			if err := unlockDataDir(s.lock); err != nil {
				s.closeErr = fmt.Errorf("close embedded etcd: release data dir: %w", err)
			}
		}
	})
	return s.closeErr
}
