// Package authz is Portcullis's decision engine and the contaxy auth
// operations: permissions and roles, users, tokens, sessions, OAuth2 grant
// logic and clients. It knows nothing of HTTP or etcd: it declares the Store
// it needs (store.go) and keeps watch-invalidated caches in front of it.
package authz

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/portcullis/portcullis/authz/cache"
)

// Config tunes a Service. The zero value of every field means its default.
type Config struct {
	// Issuer and Audience are written into and required of every session JWT.
	Issuer   string // default "portcullis"
	Audience string // default "portcullis"
	// SessionTTL is the lifetime of session JWTs (access tokens). Default 1h.
	SessionTTL time.Duration
	// RefreshTTL is the lifetime of refresh tokens. Default 30 days.
	RefreshTTL time.Duration
	// LoginTokenTTL is the lifetime of login tokens (cookie sessions). Default 7 days.
	LoginTokenTTL time.Duration
	// SessionSigningAlgorithm is EdDSA (default) or ES256 for keys generated
	// by Portcullis and shared through the store.
	SessionSigningAlgorithm string
	// HMACSecret, when set, switches session JWTs to HS256 with this secret
	// (contaxy compatibility); it must be at least 32 bytes and not contaxy's
	// default. Only HS256 is then accepted.
	HMACSecret []byte
	// LoginFailureLimit is how many password sign-ins may fail per account
	// (username and email count together) in LoginFailureWindow, across
	// all replicas; further attempts are refused with ErrThrottled until
	// the window ends. Default 100.
	LoginFailureLimit int
	// LoginFailureWindow is the counting window of LoginFailureLimit. Default 1h.
	LoginFailureWindow time.Duration
	// BcryptCost is the password hashing cost, at least 10. Default 12.
	BcryptCost int
	// MinPasswordLength is the shortest password accepted. Default 8.
	MinPasswordLength int
	// ExternalUsersMaySetPassword lets users created by an external sign-in
	// (who have no password) set one; by default they cannot, so that the
	// provider stays the only way in.
	ExternalUsersMaySetPassword bool
	// MaxConcurrentHashes bounds concurrent bcrypt work so a login flood
	// cannot starve decisions. Default 2.
	MaxConcurrentHashes int
	// CacheMaxCost bounds, in approximate bytes, each of the caches. Default 64 MiB.
	CacheMaxCost int64
	// CacheTTL is the backstop lifetime of cached entries; invalidation is
	// driven by the store watch. Default 5 minutes (jittered ±10%).
	CacheTTL time.Duration
	// Logger receives operational messages. Default slog.Default().
	Logger *slog.Logger
	// Observer receives measurements for metrics; nil: none are taken.
	Observer Observer
	// Now is the clock; tests replace it. Default time.Now.
	Now func() time.Time
}

func (c *Config) setDefaults() {
	if c.Issuer == "" {
		c.Issuer = "portcullis"
	}
	if c.Audience == "" {
		c.Audience = "portcullis"
	}
	if c.SessionTTL == 0 {
		c.SessionTTL = time.Hour
	}
	if c.RefreshTTL == 0 {
		c.RefreshTTL = 30 * 24 * time.Hour
	}
	if c.LoginTokenTTL == 0 {
		c.LoginTokenTTL = 7 * 24 * time.Hour
	}
	if c.SessionSigningAlgorithm == "" {
		c.SessionSigningAlgorithm = AlgEdDSA
	}
	if c.BcryptCost == 0 {
		c.BcryptCost = 12
	}
	if c.LoginFailureLimit == 0 {
		c.LoginFailureLimit = 100
	}
	if c.LoginFailureWindow == 0 {
		c.LoginFailureWindow = time.Hour
	}
	if c.MinPasswordLength == 0 {
		c.MinPasswordLength = 8
	}
	if c.MaxConcurrentHashes == 0 {
		c.MaxConcurrentHashes = 2
	}
	if c.CacheMaxCost == 0 {
		c.CacheMaxCost = 64 << 20
	}
	if c.CacheTTL == 0 {
		c.CacheTTL = 5 * time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Validate reports every problem with c at once.
func (c Config) Validate() error {
	c.setDefaults()
	var errs []error
	if c.SessionTTL < time.Minute || c.SessionTTL > 24*time.Hour {
		errs = append(errs, fmt.Errorf("session TTL %v: must be between 1m and 24h", c.SessionTTL))
	}
	if c.RefreshTTL < c.SessionTTL {
		errs = append(errs, fmt.Errorf("refresh TTL %v: must not be shorter than the session TTL", c.RefreshTTL))
	}
	if c.LoginTokenTTL < time.Minute {
		errs = append(errs, fmt.Errorf("login token TTL %v: must be at least 1m", c.LoginTokenTTL))
	}
	if c.SessionSigningAlgorithm != AlgEdDSA && c.SessionSigningAlgorithm != AlgES256 {
		errs = append(errs, fmt.Errorf("session signing algorithm %q: want EdDSA or ES256", c.SessionSigningAlgorithm))
	}
	if c.HMACSecret != nil {
		if len(c.HMACSecret) < 32 {
			errs = append(errs, errors.New("HMAC secret: must be at least 32 bytes"))
		}
		if string(c.HMACSecret) == contaxyDefaultSecret {
			errs = append(errs, errors.New("HMAC secret: contaxy's published default secret is refused"))
		}
	}
	if c.BcryptCost < 10 || c.BcryptCost > 16 {
		errs = append(errs, fmt.Errorf("bcrypt cost %d: must be between 10 and 16", c.BcryptCost))
	}
	if c.MinPasswordLength < 1 || c.MinPasswordLength > maxPasswordBytes {
		errs = append(errs, fmt.Errorf("minimum password length %d: must be between 1 and %d", c.MinPasswordLength, maxPasswordBytes))
	}
	if c.LoginFailureLimit < 1 {
		errs = append(errs, fmt.Errorf("login failure limit %d: must be at least 1", c.LoginFailureLimit))
	}
	if c.LoginFailureWindow < time.Second {
		errs = append(errs, fmt.Errorf("login failure window %v: must be at least 1s", c.LoginFailureWindow))
	}
	if c.MaxConcurrentHashes < 1 {
		errs = append(errs, fmt.Errorf("max concurrent hashes %d: must be at least 1", c.MaxConcurrentHashes))
	}
	if c.CacheMaxCost < 1<<20 {
		errs = append(errs, fmt.Errorf("cache max cost %d: must be at least 1 MiB", c.CacheMaxCost))
	}
	if c.CacheTTL < time.Second {
		errs = append(errs, fmt.Errorf("cache TTL %v: must be at least 1s", c.CacheTTL))
	}
	return errors.Join(errs...)
}

// contaxyDefaultSecret is the JWT secret contaxy ships with; tokens signed
// with it can be forged by anyone, so it is never accepted.
const contaxyDefaultSecret = "please-change-this-secret"

// Service implements the auth operations on a Store. Create it with New,
// then run Run in its own goroutine: Run keeps the caches consistent with
// the store and must be running for cached decisions to be used at all.
type Service struct {
	cfg   Config
	store Store
	log   *slog.Logger
	obs   Observer
	// fakeClock is set when Config.Now replaced time.Now.
	fakeClock bool

	gens  generations
	watch watchState

	tokens    cache.Cache[uint64, *tokenEntry]    // by token digest
	subjects  cache.Cache[string, *subjectEntry]  // resolved subject grants
	resources cache.Cache[string, *grantsEntry]   // raw grants of one resource (roles)
	decisions cache.Cache[uint64, *decisionEntry] // (token digest, permission) → decision
	hot       hotDecisions                        // lock-free front to decisions
	clients   cache.Cache[string, *clientEntry]   // existence of clients acting as subjects
	// assertions holds signed identity assertions for reuse.
	assertions cache.Cache[uint64, *assertionEntry]
	flights    singleflight.Group

	keys    *keyring
	hashSem chan struct{}
	// dummyHash is compared against when a login names no account, so the
	// answer takes as long as for a wrong password.
	dummyHash []byte

	closed atomic.Bool
}

// New validates cfg, prepares the session signing keys (generating and
// storing one on first start) and returns a Service.
func New(ctx context.Context, store Store, cfg Config) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("authz config: %w", err)
	}
	fakeClock := cfg.Now != nil
	cfg.setDefaults()
	s := &Service{cfg: cfg, store: store, log: cfg.Logger, obs: cfg.Observer, fakeClock: fakeClock}
	s.gens.seed = maphash.MakeSeed()
	s.watch.init()
	var err error
	perCache := cfg.CacheMaxCost
	if s.tokens, err = cache.New[uint64, *tokenEntry](cache.Config{MaxCost: perCache}); err != nil {
		return nil, err
	}
	if s.subjects, err = cache.New[string, *subjectEntry](cache.Config{MaxCost: perCache}); err != nil {
		return nil, err
	}
	if s.resources, err = cache.New[string, *grantsEntry](cache.Config{MaxCost: perCache}); err != nil {
		return nil, err
	}
	if s.decisions, err = cache.New[uint64, *decisionEntry](cache.Config{MaxCost: perCache}); err != nil {
		return nil, err
	}
	if s.clients, err = cache.New[string, *clientEntry](cache.Config{MaxCost: clientsCacheCost}); err != nil {
		return nil, err
	}
	if s.assertions, err = cache.New[uint64, *assertionEntry](cache.Config{MaxCost: assertionsCacheCost}); err != nil {
		return nil, err
	}
	s.hashSem = make(chan struct{}, cfg.MaxConcurrentHashes)
	if s.dummyHash, err = s.hashPassword(ctx, randomString(24)); err != nil {
		return nil, err
	}
	if s.keys, err = newKeyring(ctx, s); err != nil {
		return nil, err
	}
	return s, nil
}

// Close releases the caches. The Service must not be used afterwards.
func (s *Service) Close() {
	if s.closed.Swap(true) {
		return
	}
	s.tokens.Close()
	s.subjects.Close()
	s.resources.Close()
	s.decisions.Close()
	s.clients.Close()
	s.assertions.Close()
}

// Store returns the store the service was built on.
func (s *Service) Store() Store { return s.store }

// now returns the service clock's time.
func (s *Service) now() time.Time { return s.cfg.Now() }
