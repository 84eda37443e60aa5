package main

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/portcullis/portcullis/proxy"
)

// oidcProviderConfig is one entry of oidc_providers (configuration file
// only). Keys are checked strictly: an unknown key is an error.
type oidcProviderConfig struct {
	ID               string   `json:"id"`
	Name             string   `json:"name,omitempty"`
	Issuer           string   `json:"issuer"`
	ClientID         string   `json:"client_id"`
	ClientSecretFile string   `json:"client_secret_file"`
	Scopes           []string `json:"scopes,omitempty"`
	GroupsClaim      string   `json:"groups_claim,omitempty"`
	// RoleMapping maps a group to role grants ("roles/…").
	RoleMapping         map[string][]string `json:"role_mapping,omitempty"`
	RequiredGroups      []string            `json:"required_groups,omitempty"`
	AllowedEmailDomains []string            `json:"allowed_email_domains,omitempty"`
	OpenRegistration    bool                `json:"open_registration,omitempty"`
	DisableLogout       bool                `json:"disable_logout,omitempty"`
}

func (p oidcProviderConfig) proxy(secret string) proxy.OIDCProvider {
	return proxy.OIDCProvider{
		ID: p.ID, Name: p.Name, Issuer: p.Issuer, ClientID: p.ClientID, ClientSecret: secret,
		Scopes: p.Scopes, GroupsClaim: p.GroupsClaim, RoleMapping: p.RoleMapping,
		RequiredGroups: p.RequiredGroups, AllowedEmailDomains: p.AllowedEmailDomains,
		OpenRegistration: p.OpenRegistration, DisableLogout: p.DisableLogout,
	}
}

// validateOIDC checks oidc_providers and disable_password_login, without
// reading the secret files (Validate has no side effects).
func (c Config) validateOIDC() error {
	var errs []error
	seen := map[string]bool{}
	for i, p := range c.OIDCProviders {
		name := fmt.Sprintf("oidc_providers[%d]", i)
		if p.ID != "" {
			name = fmt.Sprintf("oidc_providers %q", p.ID)
		}
		if seen[p.ID] {
			errs = append(errs, fmt.Errorf("%s: id given twice", name))
		}
		seen[p.ID] = true
		if err := proxy.ValidateOIDCProvider(p.proxy("")); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
		if p.ClientSecretFile == "" {
			errs = append(errs, fmt.Errorf("%s: client_secret_file: required", name))
		}
	}
	if c.DisablePasswordLogin && len(c.OIDCProviders) == 0 {
		errs = append(errs, errors.New("disable_password_login: needs at least one of oidc_providers, or nobody could sign in"))
	}
	return errors.Join(errs...)
}

// oidcProviders reads the client secrets and returns the providers.
func oidcProviders(cfg Config, log *slog.Logger) ([]proxy.OIDCProvider, error) {
	out := make([]proxy.OIDCProvider, 0, len(cfg.OIDCProviders))
	for _, p := range cfg.OIDCProviders {
		secret, err := secretFromFile("", p.ClientSecretFile)
		if err != nil {
			return nil, configError{fmt.Errorf("oidc_providers %q: client_secret_file: %w", p.ID, err)}
		}
		if secret == "" {
			return nil, configError{fmt.Errorf("oidc_providers %q: client_secret_file %s is empty", p.ID, p.ClientSecretFile)}
		}
		if strings.HasPrefix(p.Issuer, "http://") {
			log.Warn("an OIDC provider's issuer is plain http: its keys and tokens travel unencrypted", "provider", p.ID)
		}
		if p.OpenRegistration {
			log.Warn("every person the OIDC provider signs in gets a user here (open_registration)", "provider", p.ID)
		}
		out = append(out, p.proxy(secret))
	}
	if cfg.OIDCUsersMaySetPassword && len(out) > 0 {
		log.Warn("users created by an OIDC sign-in may set a password and so sign in without the provider")
	}
	return out, nil
}
