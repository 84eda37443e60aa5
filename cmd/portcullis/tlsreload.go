package main

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// certCheckInterval is how often, at most, a certReloader looks at its
// files. cert-manager renews well before expiry, so seconds are plenty.
const certCheckInterval = 2 * time.Second

// certReloader serves a certificate and key from files and picks up new
// contents of the files without a restart (cert-manager and Kubernetes
// Secret volumes replace them in place). It reads the files at most once
// per interval, during a TLS handshake: an idle server does nothing and
// there is no goroutine to stop. Comparing contents rather than mtimes
// also catches Secret volumes, whose atomic symlink swaps may keep times.
type certReloader struct {
	certFile, keyFile string
	interval          time.Duration
	log               *slog.Logger

	mu      sync.Mutex
	cert    *tls.Certificate
	certPEM []byte // file contents the current cert was built from
	keyPEM  []byte
	checked time.Time
}

// newCertReloader loads the pair once; a pair that does not load is a
// start-up error.
func newCertReloader(certFile, keyFile string, interval time.Duration, log *slog.Logger) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile, interval: interval, log: log}
	certPEM, keyPEM, err := r.read()
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load TLS key pair %s, %s: %w", certFile, keyFile, err)
	}
	r.cert, r.certPEM, r.keyPEM, r.checked = &cert, certPEM, keyPEM, time.Now()
	return r, nil
}

func (r *certReloader) read() (certPEM, keyPEM []byte, err error) {
	if certPEM, err = os.ReadFile(r.certFile); err != nil {
		return nil, nil, fmt.Errorf("read TLS certificate: %w", err)
	}
	if keyPEM, err = os.ReadFile(r.keyFile); err != nil {
		return nil, nil, fmt.Errorf("read TLS key: %w", err)
	}
	return certPEM, keyPEM, nil
}

// GetCertificate is tls.Config.GetCertificate. It never fails once a pair
// was loaded: while new files do not form a valid pair (one replaced, the
// other not yet), the previous certificate is served and the check repeats
// after the interval.
func (r *certReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.checked) < r.interval {
		return r.cert, nil
	}
	r.checked = time.Now()
	certPEM, keyPEM, err := r.read()
	if err != nil {
		r.log.Warn("TLS certificate check failed; serving the previous certificate", "cert_file", r.certFile, "err", err)
		return r.cert, nil
	}
	if bytes.Equal(certPEM, r.certPEM) && bytes.Equal(keyPEM, r.keyPEM) {
		return r.cert, nil
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		r.log.Warn("changed TLS files do not form a valid pair (yet); serving the previous certificate", "cert_file", r.certFile, "key_file", r.keyFile, "err", err)
		return r.cert, nil
	}
	r.cert, r.certPEM, r.keyPEM = &cert, certPEM, keyPEM
	r.log.Info("TLS certificate reloaded", "cert_file", r.certFile)
	return r.cert, nil
}

// serverTLS is the TLS configuration of both listeners: TLS 1.2 at least,
// Go's default cipher suites (AEAD with forward secrecy for TLS 1.2), and
// HTTP/2 offered before HTTP/1.1.
func serverTLS(r *certReloader) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: r.GetCertificate,
		NextProtos:     []string{"h2", "http/1.1"},
	}
}
