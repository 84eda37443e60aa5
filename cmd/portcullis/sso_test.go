package main

import (
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// oidc_providers comes from the file only, strictly; the secret from its
// file; every problem is reported at once.
func TestOIDCProvidersConfig(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, []byte(`
disable_password_login: true
oidc_providers:
  - id: keycloak
    name: Company login
    issuer: https://sso.example.com/realms/main
    client_id: portcullis
    client_secret_file: `+secret+`
    scopes: [openid, email, profile, groups]
    groups_claim: groups
    role_mapping:
      platform-admins: [roles/admin]
    required_groups: [staff]
    allowed_email_domains: [example.com]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig("t", []string{"--config", good}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ps, err := oidcProviders(cfg, newLogger(cfg, os.Stderr))
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 || ps[0].ClientSecret != "s3cret" || ps[0].RoleMapping["platform-admins"][0] != "roles/admin" || !cfg.DisablePasswordLogin {
		t.Fatalf("providers %+v", ps)
	}

	typo := filepath.Join(dir, "typo.yaml")
	_ = os.WriteFile(typo, []byte("oidc_providers:\n  - id: x\n    clientid: y\n"), 0o600)
	if _, err := loadConfig("t", []string{"--config", typo}, nil); err == nil || !strings.Contains(err.Error(), "clientid") {
		t.Fatalf("unknown provider key: %v", err)
	}
	if _, err := loadConfig("t", nil, []string{"PORTCULLIS_OIDC_PROVIDERS=x"}); err == nil {
		t.Fatal("oidc_providers accepted from the environment")
	}

	bad := defaultConfig()
	bad.DisablePasswordLogin = true
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "disable_password_login") {
		t.Fatalf("password login off without providers: %v", err)
	}
	bad.OIDCProviders = []oidcProviderConfig{
		{ID: "Bad ID", Issuer: "sso.example.com", RoleMapping: map[string][]string{"g": {"admin"}}, AllowedEmailDomains: []string{"@x"}},
		{ID: "dup", Issuer: "https://a", ClientID: "c", ClientSecretFile: secret},
		{ID: "dup", Issuer: "https://a", ClientID: "c", ClientSecretFile: secret},
	}
	err = bad.Validate()
	for _, want := range []string{"provider", "issuer", "client_id", "client_secret_file", "role_mapping", "allowed_email_domains", "given twice"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("validation error %v does not mention %s", err, want)
		}
	}

	empty := filepath.Join(dir, "empty")
	_ = os.WriteFile(empty, nil, 0o600)
	cfg.OIDCProviders[0].ClientSecretFile = empty
	if _, err := oidcProviders(cfg, newLogger(cfg, os.Stderr)); err == nil {
		t.Fatal("an empty client secret file was accepted")
	}
}

// The binary wires oidc_providers and disable_password_login; a missing
// client secret file is a configuration error (exit code exitConfig).
func TestServeWithOIDCProvider(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	_ = os.WriteFile(secret, []byte("s3cret"), 0o600)
	conf := filepath.Join(dir, "portcullis.yaml")
	write := func(secretFile string) {
		if err := os.WriteFile(conf, []byte(`
disable_password_login: true
oidc_providers:
  - id: corp
    issuer: http://127.0.0.1:9/never-contacted-at-start
    client_id: portcullis
    client_secret_file: `+secretFile+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(dir, "missing"))
	out, err := exec.Command(binPath, "serve", "--config", conf, "--data-dir", filepath.Join(dir, "data"),
		"--listen", freeAddr(t), "--metrics-listen", freeAddr(t)).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitConfig || !strings.Contains(string(out), "client_secret_file") {
		t.Fatalf("missing secret file: %v\n%s", err, out)
	}

	write(secret)
	api, _, logs, _ := startServe(t, "--config", conf, "--data-dir", filepath.Join(dir, "data"), "--admin-password", "adminpassword")
	resp, err := http.Get("http://" + api + "/auth/oauth/enabled")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "1" {
		t.Fatalf("/auth/oauth/enabled: %q", body)
	}
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err = noFollow.Get("http://" + api + "/auth/login-page")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/auth/oauth/login/corp" {
		t.Fatalf("login page: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	if strings.Contains(logs.String(), "s3cret") {
		t.Fatal("the client secret is in the log")
	}
}
