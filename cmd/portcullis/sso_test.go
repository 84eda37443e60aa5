package main

import (
	"os"
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
