package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// writeFile writes content to dir/name and returns the path.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestEverySecretFromFile reads each secret from a file, as Kubernetes
// mounts Secrets, and checks that `config check` shows the paths but never
// the contents.
func TestEverySecretFromFile(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t)
	certPEM, keyPEM := ca.issue(t, "portcullis.test")
	const (
		adminSecret = "admin-secret-from-file"
		etcdSecret  = "etcd-secret-from-file"
		jwtSecret   = "jwt-secret-from-file-0123456789abcdef"
	)
	files := map[string]string{
		"admin_password_file":   writeFile(t, dir, "admin", adminSecret+"\n"),
		"etcd_password_file":    writeFile(t, dir, "etcd", etcdSecret+"\r\n"),
		"jwt_secret_file":       writeFile(t, dir, "jwt", jwtSecret),
		"tls_cert_file":         writeFile(t, dir, "tls.crt", string(certPEM)),
		"tls_key_file":          writeFile(t, dir, "tls.key", string(keyPEM)),
		"metrics_tls_cert_file": writeFile(t, dir, "m.crt", string(certPEM)),
		"metrics_tls_key_file":  writeFile(t, dir, "m.key", string(keyPEM)),
		"etcd_ca_file":          writeFile(t, dir, "ca.crt", string(ca.certPEM)),
		"etcd_cert_file":        writeFile(t, dir, "client.crt", string(certPEM)),
		"etcd_key_file":         writeFile(t, dir, "client.key", string(keyPEM)),
	}
	var doc strings.Builder
	for k, v := range files {
		doc.WriteString(k + ": " + v + "\n")
	}
	cfgFile := writeFile(t, dir, "c.yaml", doc.String())
	cfg, err := loadConfig("t", []string{"--config", cfgFile}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	sec, err := readSecrets(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if sec.adminPassword != adminSecret || sec.etcdPassword != etcdSecret || string(sec.hmacSecret) != jwtSecret {
		t.Fatalf("secrets read: admin %q etcd %q jwt %q", sec.adminPassword, sec.etcdPassword, sec.hmacSecret)
	}
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"config", "check", "--config", cfgFile}, &out, &errOut, nil); code != exitOK {
		t.Fatalf("config check: exit %d: %s", code, errOut.String())
	}
	for _, secret := range []string{adminSecret, etcdSecret, jwtSecret, "PRIVATE KEY"} {
		if strings.Contains(out.String(), secret) {
			t.Errorf("config check printed the secret %q:\n%s", secret, out.String())
		}
	}
	for k, path := range files {
		if !strings.Contains(out.String(), k+": "+path+"\n") {
			t.Errorf("config check does not show %s: %s", k, path)
		}
	}
}

// TestConfigCheckRedactsAndRoundTrips: inline secrets print as <redacted>;
// everything else prints so that the output, used as a file, gives the
// same configuration.
func TestConfigCheckRedactsAndRoundTrips(t *testing.T) {
	dir := t.TempDir()
	cfgFile := writeFile(t, dir, "c.yaml", `upstream: http://127.0.0.1:9
etcd_endpoints: [127.0.0.1:2379, 127.0.0.1:22379]
session_ttl: 90m
trusted_proxies: [10.0.0.0/8]
routes:
  - path: /app/**
    methods: [GET]
    permission: 'apps#read'
shadow_routes:
  - path: /x
    public: true
`)
	env := []string{"PORTCULLIS_ADMIN_PASSWORD=inline-admin-password", "PORTCULLIS_ETCD_PASSWORD=inline-etcd-password"}
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"config", "check", "--config", cfgFile, "--bcrypt-cost", "11"}, &out, &errOut, env); code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	text := out.String()
	for _, want := range []string{"admin_password: <redacted>\n", "etcd_password: <redacted>\n", "bcrypt_cost: 11\n", "session_ttl: 1h30m0s\n", "permission: apps#read"} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "inline-") {
		t.Fatalf("a secret value was printed:\n%s", text)
	}
	// Back in as a file (without the redacted secrets): the same configuration.
	var kept []string
	for _, line := range strings.SplitAfter(text, "\n") {
		if !strings.Contains(line, redacted) {
			kept = append(kept, line)
		}
	}
	again, err := loadConfig("t", []string{"--config", writeFile(t, dir, "again.yaml", strings.Join(kept, ""))}, nil)
	if err != nil {
		t.Fatalf("printed configuration does not load: %v\n%s", err, text)
	}
	want, err := loadConfig("t", []string{"--config", cfgFile, "--bcrypt-cost", "11"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(again, want) {
		t.Fatalf("round trip changed the configuration:\n got %+v\nwant %+v", again, want)
	}
}

func TestConfigCheckFailures(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		args []string
		env  []string
		code int
		want []string
	}{
		{"unknown key", []string{"--config", writeFile(t, dir, "u.yaml", "listen: ':1'\nlisten_adress: x\n")}, nil, exitConfig, []string{"u.yaml:2: listen_adress: unknown key"}},
		{"invalid value", []string{"--log-format", "xml", "--unmatched", "allow"}, nil, exitConfig, []string{"log_format", "unmatched"}},
		{"missing secret file", []string{"--admin-password-file", filepath.Join(dir, "none")}, nil, exitConfig, []string{"admin_password_file", "none"}},
		{"empty jwt secret", []string{"--jwt-secret-file", writeFile(t, dir, "empty", "")}, nil, exitConfig, []string{"jwt_secret_file", "empty"}},
		{"half a TLS pair", []string{"--tls-cert-file", "x.crt"}, nil, exitConfig, []string{"tls_cert_file and tls_key_file"}},
		{"broken TLS pair", []string{"--tls-cert-file", writeFile(t, dir, "bad.crt", "nope"), "--tls-key-file", writeFile(t, dir, "bad.key", "nope")}, nil, exitConfig, []string{"tls_cert_file/tls_key_file"}},
		{"bad env", nil, []string{"PORTCULLIS_SHUTDOWN_DELAY=soon"}, exitConfig, []string{"PORTCULLIS_SHUTDOWN_DELAY", "not a duration"}},
		{"negative shutdown delay", []string{"--shutdown-delay", "-1s"}, nil, exitConfig, []string{"shutdown_delay"}},
		{"no subcommand", nil, nil, exitUsage, []string{"usage"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"config", "check"}
			if tc.name == "no subcommand" {
				args = []string{"config"}
			}
			var out, errOut bytes.Buffer
			code := run(context.Background(), append(args, tc.args...), &out, &errOut, tc.env)
			if code != tc.code {
				t.Fatalf("exit %d, want %d: %s", code, tc.code, errOut.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(errOut.String(), w) {
					t.Errorf("message lacks %q:\n%s", w, errOut.String())
				}
			}
			if out.Len() != 0 {
				t.Errorf("printed a configuration although it is invalid:\n%s", out.String())
			}
		})
	}
}

// TestConfigurationReferenceUpToDate fails when docs/configuration.md was
// not regenerated after a change to the Config struct. Fix it with
// `go generate ./cmd/portcullis`.
func TestConfigurationReferenceUpToDate(t *testing.T) {
	var buf bytes.Buffer
	writeConfigReference(&buf)
	committed, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(committed, buf.Bytes()) {
		t.Fatal("docs/configuration.md differs from the generated reference: run `go generate ./cmd/portcullis` and commit the result")
	}
}

// TestEveryConfigKeyDocumented: a field without a help text would leave a
// hole in the reference and in `serve -h`.
func TestEveryConfigKeyDocumented(t *testing.T) {
	var buf bytes.Buffer
	writeConfigReference(&buf)
	cfg := defaultConfig()
	forEachField(&cfg, func(key string, _ reflect.Value, f reflect.StructField) {
		if strings.TrimSpace(f.Tag.Get("help")) == "" {
			t.Errorf("%s has no help tag", key)
		}
		if !strings.Contains(buf.String(), "| `"+key+"` |") {
			t.Errorf("%s is missing from the reference", key)
		}
	})
}
