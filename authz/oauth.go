package authz

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// OAuth2 grant types.
const (
	GrantPassword          = "password"
	GrantRefreshToken      = "refresh_token"
	GrantClientCredentials = "client_credentials"
	GrantAuthorizationCode = "authorization_code"
)

var knownGrantTypes = []string{GrantPassword, GrantRefreshToken, GrantClientCredentials, GrantAuthorizationCode}

// authCodeTTL is how long an authorization code lives (RFC 6749 §4.1.2
// recommends at most 10 minutes; we take 60 seconds).
const authCodeTTL = 60 * time.Second

// ClientSpec describes an OAuth2 client to register.
type ClientSpec struct {
	ID           string   `json:"client_id,omitempty"` // default: generated
	Name         string   `json:"name,omitempty"`
	RedirectURIs []string `json:"redirect_uris,omitempty"`
	GrantTypes   []string `json:"grant_types,omitempty"` // default: authorization_code, refresh_token
	Scopes       []string `json:"scopes,omitempty"`
	// Public clients (native and browser apps) have no secret and must use PKCE.
	Public     bool   `json:"public,omitempty"`
	FirstParty bool   `json:"first_party,omitempty"`
	Subject    string `json:"subject,omitempty"` // default: clients/<id>
}

// Client is a registered client as shown to administrators (no secret).
type Client struct {
	ID           string    `json:"client_id"`
	Name         string    `json:"name,omitempty"`
	RedirectURIs []string  `json:"redirect_uris"`
	GrantTypes   []string  `json:"grant_types"`
	Scopes       []string  `json:"scopes"`
	Public       bool      `json:"public"`
	FirstParty   bool      `json:"first_party"`
	Subject      string    `json:"subject"`
	CreatedAt    time.Time `json:"created_at"`
}

func (c *ClientRecord) public() Client {
	return Client{
		ID: c.ID, Name: c.Name, RedirectURIs: nonNil(c.RedirectURIs), GrantTypes: nonNil(c.GrantTypes),
		Scopes: nonNil(c.Scopes), Public: c.SecretDigest == "", FirstParty: c.FirstParty,
		Subject: c.subject(), CreatedAt: c.CreatedAt,
	}
}

func (c *ClientRecord) subject() string {
	if c.Subject != "" {
		return c.Subject
	}
	return "clients/" + c.ID
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// RegisterClient registers an OAuth2 client. For a confidential client it
// returns the secret, once; only its digest is stored.
func (s *Service) RegisterClient(ctx context.Context, spec ClientSpec) (string, Client, Revision, error) {
	if spec.ID == "" {
		spec.ID = randomID(10)
	}
	var errs []error
	if err := validateID("client_id", spec.ID); err != nil {
		errs = append(errs, err)
	}
	if len(spec.Name) > 200 || !utf8.ValidString(spec.Name) {
		errs = append(errs, invalid("name", "longer than 200 bytes or not valid UTF-8"))
	}
	if len(spec.GrantTypes) == 0 {
		spec.GrantTypes = []string{GrantAuthorizationCode, GrantRefreshToken}
	}
	for _, g := range spec.GrantTypes {
		if !slices.Contains(knownGrantTypes, g) {
			errs = append(errs, invalid("grant_types", "unknown grant type "+quote(g)))
		}
	}
	if spec.Public && slices.Contains(spec.GrantTypes, GrantClientCredentials) {
		errs = append(errs, invalid("grant_types", "a public client cannot use client_credentials"))
	}
	if slices.Contains(spec.GrantTypes, GrantAuthorizationCode) && len(spec.RedirectURIs) == 0 {
		errs = append(errs, invalid("redirect_uris", "required for the authorization_code grant"))
	}
	if len(spec.RedirectURIs) > maxRedirectURIs {
		errs = append(errs, invalid("redirect_uris", fmt.Sprintf("more than %d", maxRedirectURIs)))
	}
	for _, u := range spec.RedirectURIs {
		if err := validateRedirectURI(u); err != nil {
			errs = append(errs, err)
		}
	}
	scopes, err := canonicalScopes(spec.Scopes)
	if err != nil {
		errs = append(errs, err)
	}
	if spec.Subject != "" {
		// Stored canonical, like every subject (see IssueToken).
		if spec.Subject, err = ParseResource(spec.Subject); err != nil {
			errs = append(errs, fmt.Errorf("subject: %w", err))
		}
	}
	if len(errs) > 0 {
		return "", Client{}, 0, errors.Join(errs...)
	}
	rec := ClientRecord{
		ID: spec.ID, Name: spec.Name, RedirectURIs: spec.RedirectURIs, GrantTypes: spec.GrantTypes,
		Scopes: scopes, Subject: spec.Subject, FirstParty: spec.FirstParty, CreatedAt: s.now().UTC().Truncate(time.Millisecond),
	}
	var secret string
	if !spec.Public {
		secret = randomString(32)
		rec.SecretDigest = digestOf(secret).hex()
	}
	rev, err := s.store.CreateClient(ctx, rec)
	if err != nil {
		return "", Client{}, 0, fmt.Errorf("register client: %w", err)
	}
	return secret, rec.public(), rev, nil
}

// validateRedirectURI accepts absolute https URIs, http on loopback (RFC
// 8252 §7.3) and private-use schemes of native apps (a scheme with a dot);
// never a fragment.
func validateRedirectURI(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || !u.IsAbs() || u.Fragment != "" || strings.Contains(raw, "#") || len(raw) > 2000 || !utf8.ValidString(raw) {
		return invalid("redirect_uris", quote(raw)+" must be an absolute URI without a fragment")
	}
	switch {
	case u.Scheme == "https" && u.Host != "":
	case u.Scheme == "http" && (u.Hostname() == "127.0.0.1" || u.Hostname() == "::1" || u.Hostname() == "localhost"):
	case strings.Contains(u.Scheme, "."):
	default:
		return invalid("redirect_uris", quote(raw)+" must use https (http only on loopback)")
	}
	return nil
}

// Client returns a registered client, or ErrNotFound.
func (s *Service) Client(ctx context.Context, id string) (Client, error) {
	if err := validateID("client_id", id); err != nil {
		return Client{}, err
	}
	rec, err := s.store.Client(ctx, id)
	if err != nil {
		return Client{}, fmt.Errorf("get client: %w", err)
	}
	return rec.public(), nil
}

// Clients lists the registered clients by id.
func (s *Service) Clients(ctx context.Context) ([]Client, error) {
	recs, err := s.store.Clients(ctx)
	if err != nil {
		return nil, fmt.Errorf("list clients: %w", err)
	}
	slices.SortFunc(recs, func(a, b ClientRecord) int { return strings.Compare(a.ID, b.ID) })
	out := make([]Client, len(recs))
	for i := range recs {
		out[i] = recs[i].public()
	}
	return out, nil
}

// DeleteClient deletes a client; tokens issued to it as a subject stop working.
func (s *Service) DeleteClient(ctx context.Context, id string) (Revision, error) {
	if err := validateID("client_id", id); err != nil {
		return 0, err
	}
	rev, err := s.store.DeleteClient(ctx, id)
	if err != nil {
		return 0, fmt.Errorf("delete client: %w", err)
	}
	s.gens.bump(slotClient, id)
	return rev, nil
}

// TokenRequest is the form of an OAuth2 token request. The HTTP layer puts
// client credentials from Basic auth or the form into ClientID/ClientSecret.
type TokenRequest struct {
	GrantType    string
	Username     string
	Password     string
	Scope        string // space-separated
	ClientID     string
	ClientSecret string
	Code         string
	RedirectURI  string
	CodeVerifier string
	RefreshToken string
	// LoginToken asks for a stored, revocable login token (for cookie
	// sessions) as the access token instead of a session JWT.
	LoginToken bool
	// NoRefresh leaves the refresh token out of a password grant (the
	// sign-in page keeps only the cookie).
	NoRefresh bool
}

// TokenResponse is a successful token response (RFC 6749 §5.1).
type TokenResponse struct {
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
	RefreshToken string `json:"refresh_token,omitempty"`
	Scope        string `json:"scope"`
	// Subject the tokens act as; UserID when it is a user.
	Subject  string   `json:"-"`
	UserID   string   `json:"-"`
	Revision Revision `json:"-"`
}

// RequestToken runs an OAuth2 grant: password, refresh_token,
// client_credentials or authorization_code. Failures are *OAuthError
// (RFC 6749 §5.2) except store failures, which are ErrUnavailable.
func (s *Service) RequestToken(ctx context.Context, req TokenRequest) (TokenResponse, error) {
	switch req.GrantType {
	case GrantPassword:
		return s.passwordGrant(ctx, req)
	case GrantRefreshToken:
		return s.refreshGrant(ctx, req)
	case GrantClientCredentials:
		return s.clientCredentialsGrant(ctx, req)
	case GrantAuthorizationCode:
		return s.authorizationCodeGrant(ctx, req)
	case "":
		return TokenResponse{}, oauthError("invalid_request", "grant_type is required")
	default:
		return TokenResponse{}, oauthError("unsupported_grant_type", "grant type "+quote(req.GrantType)+" is not supported")
	}
}

// maxRedirectURIs bounds a client's registered redirect URIs; real
// clients have a handful.
const maxRedirectURIs = 20

// dummySecretDigest is compared against when a client id is unknown, so
// timing does not reveal which clients exist.
var dummySecretDigest = digestOf("portcullis-no-such-client").hex()

// authenticateClient checks client credentials. With required=false an
// absent client id is allowed (contaxy's password grant has no client).
func (s *Service) authenticateClient(ctx context.Context, id, secret, grant string, required bool) (*ClientRecord, error) {
	if id == "" {
		if required {
			return nil, oauthError("invalid_client", "client authentication required")
		}
		return nil, nil
	}
	if validateID("client_id", id) != nil {
		return nil, oauthError("invalid_client", "client authentication failed")
	}
	rec, err := s.store.Client(ctx, id)
	if err != nil && !isNotFound(err) {
		return nil, fmt.Errorf("authenticate client: %w", err)
	}
	want := dummySecretDigest
	if err == nil && rec.SecretDigest != "" {
		want = rec.SecretDigest
	}
	got := digestOf(secret).hex()
	match := subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
	switch {
	case err != nil:
		return nil, oauthError("invalid_client", "client authentication failed")
	case rec.SecretDigest != "" && !match:
		return nil, oauthError("invalid_client", "client authentication failed")
	case rec.SecretDigest == "" && secret != "":
		return nil, oauthError("invalid_client", "public client must not send a secret")
	}
	if grant != "" && !slices.Contains(rec.GrantTypes, grant) {
		return nil, oauthError("unauthorized_client", "client is not allowed to use the "+grant+" grant")
	}
	return &rec, nil
}

// AuthenticateClient checks a confidential client's credentials for the
// endpoints that accept client authentication besides the token endpoint
// (revoke, introspect). Failures are *OAuthError invalid_client.
func (s *Service) AuthenticateClient(ctx context.Context, id, secret string) (Client, error) {
	rec, err := s.authenticateClient(ctx, id, secret, "", true)
	if err != nil {
		return Client{}, err
	}
	if rec.SecretDigest == "" {
		return Client{}, oauthError("invalid_client", "a public client cannot authenticate")
	}
	return rec.public(), nil
}

func parseScopeParam(scope string) ([]string, error) {
	fields := strings.Fields(scope)
	if len(fields) > maxScopes {
		return nil, oauthError("invalid_scope", fmt.Sprintf("more than %d scopes", maxScopes))
	}
	out, err := canonicalScopes(fields)
	if err != nil {
		return nil, oauthError("invalid_scope", err.Error())
	}
	return out, nil
}

// subjectHolds reports whether subject's resolved grants cover every scope.
func (s *Service) subjectHolds(ctx context.Context, subject string, scopes []string) (string, error) {
	se, _, err := s.subjectGrants(ctx, subject, "", true, 0)
	if err != nil {
		return "", err
	}
	for _, sc := range scopes {
		p, _ := ParsePermission(sc)
		if p.Resource == "*" && p.Level == LevelAdmin {
			continue // the unrestricted scope: the subject's grants still bound it
		}
		if _, _, ok := se.lookup(p); !ok {
			return sc, nil
		}
	}
	return "", nil
}

// defaultLoginScopes is the scope of a login without an explicit scope:
// the token does not narrow what the user's own grants allow.
var defaultLoginScopes = []string{"*#admin"}

func (s *Service) passwordGrant(ctx context.Context, req TokenRequest) (TokenResponse, error) {
	client, err := s.authenticateClient(ctx, req.ClientID, req.ClientSecret, GrantPassword, false)
	if err != nil {
		return TokenResponse{}, err
	}
	if req.Username == "" || req.Password == "" {
		return TokenResponse{}, oauthError("invalid_request", "username and password are required")
	}
	user, err := s.Login(ctx, req.Username, req.Password)
	if err != nil {
		if errors.Is(err, ErrUnauthenticated) {
			return TokenResponse{}, oauthError("invalid_grant", "invalid username or password")
		}
		return TokenResponse{}, err
	}
	scopes, err := parseScopeParam(req.Scope)
	if err != nil {
		return TokenResponse{}, err
	}
	if len(scopes) == 0 {
		scopes = defaultLoginScopes
	}
	subject := UserSubject(user.ID)
	if missing, err := s.subjectHolds(ctx, subject, scopes); err != nil {
		return TokenResponse{}, err
	} else if missing != "" {
		return TokenResponse{}, oauthError("invalid_scope", "scope "+missing+" is not granted to the user")
	}
	clientID := ""
	if client != nil {
		clientID = client.ID
	}
	resp, err := s.issueTokens(ctx, subject, scopes, clientID, "", req.LoginToken, !req.NoRefresh)
	if err == nil {
		s.touchUser(ctx, user.ID)
	}
	return resp, err
}

// issueTokens issues an access token (a session JWT, or a stored login
// token) and, with refresh, a refresh token of a new family (family == "")
// or of the given one.
func (s *Service) issueTokens(ctx context.Context, subject string, scopes []string, clientID, family string, loginToken, refresh bool) (TokenResponse, error) {
	resp, _, err := s.issueNamed(ctx, subject, scopes, clientID, family, loginToken, refresh)
	return resp, err
}

// issuedTokens names what a token response handed out, without secrets,
// so that it can be revoked later.
type issuedTokens struct {
	access *IssuedAccess
	family string // the new refresh token's family; "" without one
}

// issueNamed is issueTokens that also names what it issued.
func (s *Service) issueNamed(ctx context.Context, subject string, scopes []string, clientID, family string, loginToken, refresh bool) (TokenResponse, issuedTokens, error) {
	resp, info, err := s.issueAccess(ctx, subject, scopes, clientID, loginToken)
	if err != nil {
		return TokenResponse{}, issuedTokens{}, err
	}
	issued := issuedTokens{access: issuedAccess(info)}
	if refresh && family == "" {
		secret, rec := s.newRefreshToken(subject, scopes, clientID, "")
		rec.Access = issued.access
		rev, err := s.store.CreateToken(ctx, rec)
		if err != nil {
			return TokenResponse{}, issuedTokens{}, fmt.Errorf("create refresh token: %w", err)
		}
		resp.RefreshToken, resp.Revision = secret, max(resp.Revision, rev)
		issued.family = rec.Family
	}
	return resp, issued, nil
}

// issueAccess issues the access token of a token response: a session
// JWT, or a stored login token (set_as_cookie).
func (s *Service) issueAccess(ctx context.Context, subject string, scopes []string, clientID string, loginToken bool) (TokenResponse, TokenInfo, error) {
	resp := TokenResponse{TokenType: "bearer", Scope: strings.Join(scopes, " "), Subject: subject}
	resp.UserID, _ = subjectIDs(subject)
	var info TokenInfo
	if loginToken {
		exp := s.now().Add(s.cfg.LoginTokenTTL).UTC()
		tok, in, rev, err := s.IssueToken(ctx, TokenSpec{Subject: subject, Scopes: scopes, Type: TokenTypeAPI, Purpose: PurposeLogin, ExpiresAt: &exp, ClientID: clientID})
		if err != nil {
			return TokenResponse{}, info, err
		}
		resp.AccessToken, resp.ExpiresIn, resp.Revision, info = tok, int64(s.cfg.LoginTokenTTL/time.Second), rev, in
	} else {
		tok, in, _, err := s.IssueToken(ctx, TokenSpec{Subject: subject, Scopes: scopes, Type: TokenTypeSession, Purpose: PurposeLogin, ClientID: clientID})
		if err != nil {
			return TokenResponse{}, info, err
		}
		resp.AccessToken, resp.ExpiresIn, info = tok, int64(s.cfg.SessionTTL/time.Second), in
	}
	return resp, info, nil
}

func issuedAccess(info TokenInfo) *IssuedAccess {
	if info.ID == "" || info.ExpiresAt == nil {
		return nil
	}
	return &IssuedAccess{Type: info.Type, ID: info.ID, ExpiresAt: *info.ExpiresAt}
}

func (s *Service) newRefreshToken(subject string, scopes []string, clientID, family string) (string, TokenRecord) {
	secret := randomString(32)
	now := s.now().UTC().Truncate(time.Millisecond)
	exp := now.Add(s.cfg.RefreshTTL)
	rec := TokenRecord{
		ID: randomID(10), Digest: digestOf(secret).hex(), Type: TokenTypeAPI, Purpose: PurposeRefresh,
		Subject: subject, Scopes: scopes, CreatedAt: now, ExpiresAt: &exp, ClientID: clientID, Family: family,
	}
	if rec.Family == "" {
		rec.Family = rec.ID
	}
	return secret, rec
}

func (s *Service) refreshGrant(ctx context.Context, req TokenRequest) (TokenResponse, error) {
	if req.RefreshToken == "" || len(req.RefreshToken) > maxTokenLen {
		return TokenResponse{}, oauthError("invalid_request", "refresh_token is required")
	}
	rec, err := s.store.Token(ctx, digestOf(req.RefreshToken).hex())
	if isNotFound(err) {
		return TokenResponse{}, oauthError("invalid_grant", "refresh token is invalid, expired or revoked")
	}
	if err != nil {
		return TokenResponse{}, fmt.Errorf("read refresh token: %w", err)
	}
	if rec.Purpose != PurposeRefresh || (rec.ExpiresAt != nil && !s.now().Before(*rec.ExpiresAt)) {
		return TokenResponse{}, oauthError("invalid_grant", "refresh token is invalid, expired or revoked")
	}
	// The token must be presented by the client it was issued to.
	if rec.ClientID != "" || req.ClientID != "" {
		if req.ClientID == "" {
			// RFC 6749 §5.2: "no client authentication included".
			return TokenResponse{}, oauthError("invalid_client", "client authentication required: the refresh token was issued to a client")
		}
		if req.ClientID != rec.ClientID {
			return TokenResponse{}, oauthError("invalid_grant", "refresh token was issued to another client")
		}
		if _, err := s.authenticateClient(ctx, req.ClientID, req.ClientSecret, GrantRefreshToken, true); err != nil {
			return TokenResponse{}, err
		}
	}
	if rec.Used {
		return TokenResponse{}, s.refreshReuse(ctx, rec)
	}
	if id, _ := subjectIDs(rec.Subject); id != "" {
		u, err := s.store.User(ctx, id)
		if isNotFound(err) || (err == nil && u.Disabled) {
			return TokenResponse{}, oauthError("invalid_grant", "the token's user is disabled or gone")
		}
		if err != nil {
			return TokenResponse{}, fmt.Errorf("read user: %w", err)
		}
	}
	scopes := rec.Scopes
	if req.Scope != "" {
		asked, err := parseScopeParam(req.Scope)
		if err != nil {
			return TokenResponse{}, err
		}
		for _, a := range asked {
			if !slices.Contains(rec.Scopes, a) {
				return TokenResponse{}, oauthError("invalid_scope", "scope "+a+" exceeds the original grant")
			}
		}
		scopes = asked
	}
	// The access token is issued first so that the rotated refresh token
	// can name it: a later replay of the family revokes it too. It is
	// handed out only if the rotation wins.
	resp, info, err := s.issueAccess(ctx, rec.Subject, scopes, rec.ClientID, req.LoginToken)
	if err != nil {
		return TokenResponse{}, err
	}
	secret, next := s.newRefreshToken(rec.Subject, rec.Scopes, rec.ClientID, rec.Family)
	next.Access = issuedAccess(info)
	rev, err := s.store.RotateToken(ctx, rec, next)
	if err != nil {
		s.dropAccess(ctx, info)
	}
	switch {
	case errors.Is(err, ErrConflict):
		return TokenResponse{}, s.refreshReuse(ctx, rec)
	case isNotFound(err):
		return TokenResponse{}, oauthError("invalid_grant", "refresh token is invalid, expired or revoked")
	case err != nil:
		return TokenResponse{}, fmt.Errorf("rotate refresh token: %w", err)
	}
	resp.RefreshToken, resp.Revision = secret, max(resp.Revision, rev)
	return resp, nil
}

// dropAccess deletes a stored access token that was never handed out
// (session JWTs nobody received need nothing). Best effort: it expires
// anyway.
func (s *Service) dropAccess(ctx context.Context, info TokenInfo) {
	if info.Type == TokenTypeSession || info.ID == "" {
		return
	}
	if t, err := s.store.TokenByID(ctx, info.ID); err == nil {
		_, _ = s.store.DeleteTokens(ctx, []TokenRecord{t})
	}
}

// revokeFamilyAccess revokes every unexpired access token issued with a
// refresh token of family (the used ones are kept until they expire, so
// the whole history is there).
func (s *Service) revokeFamilyAccess(ctx context.Context, subject, family string) error {
	toks, err := s.store.Tokens(ctx, subject)
	if err != nil {
		return err
	}
	now := s.now()
	var stored []TokenRecord
	for _, t := range toks {
		a := t.Access
		if t.Family != family || t.Purpose != PurposeRefresh || a == nil || !now.Before(a.ExpiresAt) {
			continue
		}
		if a.Type == TokenTypeSession {
			if err := s.revokeAccess(ctx, *a); err != nil {
				return err
			}
			continue
		}
		for _, st := range toks {
			if st.ID == a.ID {
				stored = append(stored, st)
			}
		}
	}
	if len(stored) > 0 {
		if _, err := s.store.DeleteTokens(ctx, stored); err != nil {
			return err
		}
		for _, st := range stored {
			s.gens.bump(slotToken, st.Digest)
		}
	}
	return nil
}

// revokeAccess revokes one access token: a session JWT by remembering
// its jti as revoked, a stored token by deleting it. Tokens already
// expired or gone need nothing.
func (s *Service) revokeAccess(ctx context.Context, a IssuedAccess) error {
	if !s.now().Before(a.ExpiresAt) {
		return nil
	}
	if a.Type == TokenTypeSession {
		if _, err := s.store.RevokeSession(ctx, a.ID, a.ExpiresAt); err != nil {
			return err
		}
		s.gens.bump(slotSession, a.ID)
		return nil
	}
	t, err := s.store.TokenByID(ctx, a.ID)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if _, err := s.store.DeleteTokens(ctx, []TokenRecord{t}); err != nil {
		return err
	}
	s.gens.bump(slotToken, t.Digest)
	return nil
}

// revokeIssued revokes the access token and the refresh-token family
// (every refresh token rotated from it, and their access tokens) that one
// grant issued to subject.
func (s *Service) revokeIssued(ctx context.Context, subject string, issued issuedTokens) error {
	if issued.access != nil {
		if err := s.revokeAccess(ctx, *issued.access); err != nil {
			return fmt.Errorf("revoke access token: %w", err)
		}
	}
	if issued.family == "" {
		return nil
	}
	if err := s.revokeFamilyAccess(ctx, subject, issued.family); err != nil {
		return fmt.Errorf("revoke access tokens of a refresh token family: %w", err)
	}
	if _, err := s.store.RevokeFamily(ctx, subject, issued.family); err != nil {
		return fmt.Errorf("revoke refresh token family: %w", err)
	}
	return nil
}

// refreshReuse handles a refresh token presented twice: somebody holds a
// copy, so the whole family is revoked (RFC 9700 §4.14.2).
func (s *Service) refreshReuse(ctx context.Context, rec TokenRecord) error {
	if err := s.revokeFamilyAccess(ctx, rec.Subject, rec.Family); err != nil {
		return fmt.Errorf("revoke access tokens of a refresh token family: %w", err)
	}
	if _, err := s.store.RevokeFamily(ctx, rec.Subject, rec.Family); err != nil {
		return fmt.Errorf("revoke refresh token family: %w", err)
	}
	s.log.Warn("refresh token reuse detected; family revoked", "subject", rec.Subject, "family", rec.Family)
	return oauthError("invalid_grant", "refresh token was already used; every token of this grant is revoked")
}

func (s *Service) clientCredentialsGrant(ctx context.Context, req TokenRequest) (TokenResponse, error) {
	client, err := s.authenticateClient(ctx, req.ClientID, req.ClientSecret, GrantClientCredentials, true)
	if err != nil {
		return TokenResponse{}, err
	}
	if client.SecretDigest == "" {
		return TokenResponse{}, oauthError("unauthorized_client", "a public client cannot use client_credentials")
	}
	scopes, err := parseScopeParam(req.Scope)
	if err != nil {
		return TokenResponse{}, err
	}
	if len(scopes) == 0 {
		scopes = client.Scopes
	}
	allowed := parseScopes(client.Scopes)
	for _, sc := range scopes {
		p, _ := ParsePermission(sc)
		if !slices.ContainsFunc(allowed, func(a Permission) bool { return a.Covers(p) }) {
			return TokenResponse{}, oauthError("invalid_scope", "scope "+sc+" is not allowed for this client")
		}
	}
	return s.issueTokens(ctx, client.subject(), scopes, client.ID, "", false, false)
}

// AuthorizeRequest is a validated request to the authorization endpoint,
// approved by the signed-in Subject.
type AuthorizeRequest struct {
	ClientID            string
	RedirectURI         string
	Subject             string
	Scopes              []string
	CodeChallenge       string
	CodeChallengeMethod string
	Nonce               string
}

// AuthorizeClient checks that redirectURI is registered for the client
// (exact match), so the HTTP layer knows whether it may redirect errors
// there. ErrNotFound for an unknown client, ErrInvalid for a redirect URI
// that is not registered.
func (s *Service) AuthorizeClient(ctx context.Context, clientID, redirectURI string) (Client, error) {
	c, err := s.Client(ctx, clientID)
	if err != nil {
		return Client{}, err
	}
	if redirectURI == "" && len(c.RedirectURIs) == 1 {
		return c, nil
	}
	if !slices.Contains(c.RedirectURIs, redirectURI) &&
		!slices.ContainsFunc(c.RedirectURIs, func(reg string) bool { return loopbackPortVariant(reg, redirectURI) }) {
		return Client{}, invalid("redirect_uri", "not registered for this client")
	}
	return c, nil
}

// loopbackPortVariant reports whether requested is the loopback redirect
// URI registered (without a port) with a port added: native apps listen
// on whatever port they get, and RFC 8252 §7.3 (RFC 9700 §4.1.3) has the
// server accept any. Everything else about the URI must match exactly;
// a URI registered with a port matches only itself.
func loopbackPortVariant(registered, requested string) bool {
	for _, origin := range []string{"http://127.0.0.1", "http://[::1]"} {
		rest, ok := strings.CutPrefix(registered, origin)
		if !ok || (rest != "" && rest[0] != '/' && rest[0] != '?') {
			continue
		}
		tail, ok := strings.CutPrefix(requested, origin+":")
		if !ok {
			return false
		}
		n := 0
		for n < len(tail) && n < 6 && '0' <= tail[n] && tail[n] <= '9' {
			n++
		}
		port, err := strconv.Atoi(tail[:n])
		return n > 0 && tail[0] != '0' && err == nil && port <= 65535 && tail[n:] == rest
	}
	return false
}

// CheckAuthorizeRequest validates an authorization request as
// IssueAuthCode will, without issuing anything: the client and its
// redirect URI (ErrNotFound, ErrInvalid), then as *OAuthError the grant,
// PKCE and the scopes. It returns the client and the scopes a code would
// carry (the asked ones, else the client's, else the user's own), so that
// a consent page can show exactly those, and refuse before asking.
func (s *Service) CheckAuthorizeRequest(ctx context.Context, r AuthorizeRequest) (Client, []string, error) {
	c, err := s.AuthorizeClient(ctx, r.ClientID, r.RedirectURI)
	if err != nil {
		return Client{}, nil, err
	}
	if !slices.Contains(c.GrantTypes, GrantAuthorizationCode) {
		return Client{}, nil, oauthError("unauthorized_client", "client is not allowed to use the authorization_code grant")
	}
	if r.CodeChallengeMethod != "S256" {
		return Client{}, nil, oauthError("invalid_request", "PKCE with code_challenge_method=S256 is required")
	}
	if !validPKCEValue(r.CodeChallenge, 43, 43) {
		return Client{}, nil, oauthError("invalid_request", "code_challenge must be a base64url SHA-256 (43 characters)")
	}
	scopes, err := canonicalScopes(r.Scopes)
	if err != nil {
		return Client{}, nil, oauthError("invalid_scope", err.Error())
	}
	if len(scopes) == 0 {
		scopes = c.Scopes
	}
	if len(c.Scopes) > 0 {
		allowed := parseScopes(c.Scopes)
		for _, sc := range scopes {
			p, _ := ParsePermission(sc)
			if !slices.ContainsFunc(allowed, func(a Permission) bool { return a.Covers(p) }) {
				return Client{}, nil, oauthError("invalid_scope", "scope "+sc+" is not allowed for this client")
			}
		}
	}
	if len(scopes) == 0 {
		scopes = defaultLoginScopes
	}
	if missing, err := s.subjectHolds(ctx, r.Subject, scopes); err != nil {
		return Client{}, nil, err
	} else if missing != "" {
		return Client{}, nil, oauthError("invalid_scope", "scope "+missing+" is not granted to the user")
	}
	return c, scopes, nil
}

// IssueAuthCode creates a single-use authorization code bound to the
// client, the redirect URI and the PKCE challenge (S256 only); it expires
// after 60 seconds.
func (s *Service) IssueAuthCode(ctx context.Context, r AuthorizeRequest) (string, error) {
	c, scopes, err := s.CheckAuthorizeRequest(ctx, r)
	if err != nil {
		return "", err
	}
	code := randomString(32)
	ac := AuthCode{
		ClientID: c.ID, RedirectURI: r.RedirectURI, Subject: r.Subject, Scopes: scopes,
		CodeChallenge: r.CodeChallenge, Nonce: r.Nonce, ExpiresAt: s.now().Add(authCodeTTL).UTC(),
	}
	if err := s.store.PutAuthCode(ctx, digestOf(code).hex(), ac); err != nil {
		return "", fmt.Errorf("store authorization code: %w", err)
	}
	return code, nil
}

// validPKCEValue checks length and the unreserved alphabet of RFC 7636 §4.1.
func validPKCEValue(v string, minLen, maxLen int) bool {
	if len(v) < minLen || len(v) > maxLen {
		return false
	}
	for i := 0; i < len(v); i++ {
		b := v[i]
		if !('a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9' || b == '-' || b == '.' || b == '_' || b == '~') {
			return false
		}
	}
	return true
}

func (s *Service) authorizationCodeGrant(ctx context.Context, req TokenRequest) (TokenResponse, error) {
	if req.Code == "" || len(req.Code) > 512 {
		return TokenResponse{}, oauthError("invalid_request", "code is required")
	}
	if req.ClientID == "" {
		return TokenResponse{}, oauthError("invalid_client", "client_id is required")
	}
	client, err := s.authenticateClient(ctx, req.ClientID, req.ClientSecret, GrantAuthorizationCode, true)
	if err != nil {
		return TokenResponse{}, err
	}
	if !validPKCEValue(req.CodeVerifier, 43, 128) {
		return TokenResponse{}, oauthError("invalid_grant", "a PKCE code_verifier of 43 to 128 characters is required")
	}
	// Taking the code consumes it, whatever happens next: a code is never
	// good for a second try. The store remembers it as used, so that a
	// second try revokes what the first one got.
	digest := digestOf(req.Code).hex()
	ac, err := s.store.TakeAuthCode(ctx, digest)
	if isNotFound(err) {
		return TokenResponse{}, s.authCodeReuse(ctx, digest, client.ID)
	}
	if err != nil {
		return TokenResponse{}, fmt.Errorf("take authorization code: %w", err)
	}
	sum := sha256.Sum256([]byte(req.CodeVerifier))
	challenge := base64.RawURLEncoding.EncodeToString(sum[:])
	switch {
	case !s.now().Before(ac.ExpiresAt):
		return TokenResponse{}, oauthError("invalid_grant", "authorization code expired")
	case ac.ClientID != client.ID:
		return TokenResponse{}, oauthError("invalid_grant", "authorization code was issued to another client")
	case ac.RedirectURI != req.RedirectURI && !(ac.RedirectURI == "" && slices.Contains(client.RedirectURIs, req.RedirectURI)):
		// RFC 6749 §4.1.3: required and identical when the authorization
		// request had one; without one there, the client's only
		// registered URI (where the code went) may be named.
		return TokenResponse{}, oauthError("invalid_grant", "redirect_uri does not match the authorization request")
	case subtle.ConstantTimeCompare([]byte(challenge), []byte(ac.CodeChallenge)) != 1:
		return TokenResponse{}, oauthError("invalid_grant", "PKCE verification failed")
	}
	if id, _ := subjectIDs(ac.Subject); id != "" {
		u, err := s.store.User(ctx, id)
		if isNotFound(err) || (err == nil && u.Disabled) {
			return TokenResponse{}, oauthError("invalid_grant", "the user is disabled or gone")
		}
		if err != nil {
			return TokenResponse{}, fmt.Errorf("read user: %w", err)
		}
	}
	refresh := slices.Contains(client.GrantTypes, GrantRefreshToken)
	resp, issued, err := s.issueNamed(ctx, ac.Subject, ac.Scopes, client.ID, "", false, refresh)
	if err != nil {
		return TokenResponse{}, err
	}
	// Name what was issued on the used code, for a replay to revoke. The
	// write fails if a replay marked the code in between, before there was
	// anything for it to revoke: then this redemption revokes its own
	// tokens. It still answers with them, dead as they are: it did win the
	// code, and of concurrent redemptions exactly one succeeds, as with
	// refresh tokens (refreshGrant), where the winner's tokens also die by
	// the losers' hands. The client finds them refused and starts over,
	// and nothing issued for a replayed code stays valid.
	err = s.store.RecordAuthCodeIssue(ctx, digest, issued.family, issued.access)
	if err == nil {
		return resp, nil
	}
	if rerr := s.revokeIssued(ctx, ac.Subject, issued); rerr != nil {
		return TokenResponse{}, fmt.Errorf("revoke the tokens of an authorization code: %w", rerr)
	}
	if !errors.Is(err, ErrConflict) && !isNotFound(err) {
		// Unrecorded tokens could not be revoked by a later replay: none
		// are handed out.
		return TokenResponse{}, fmt.Errorf("record the tokens of an authorization code: %w", err)
	}
	s.log.Warn("authorization code replayed while it was being redeemed; the tokens issued for it are revoked",
		"subject", ac.Subject, "client_id", client.ID)
	return resp, nil
}

// authCodeReuse answers a code that cannot be taken. When the store
// remembers it as used, somebody else holds a copy: the tokens issued for
// it are revoked (RFC 6749 §4.1.2, RFC 9700 §4.5), whoever presents it.
func (s *Service) authCodeReuse(ctx context.Context, digest, clientID string) error {
	used, err := s.store.ReplayAuthCode(ctx, digest)
	if isNotFound(err) {
		return oauthError("invalid_grant", "authorization code is invalid, expired or already used")
	}
	if err != nil {
		return fmt.Errorf("mark authorization code replayed: %w", err)
	}
	if err := s.revokeIssued(ctx, used.Subject, issuedTokens{access: used.Access, family: used.Family}); err != nil {
		return fmt.Errorf("revoke the tokens of a replayed authorization code: %w", err)
	}
	// recorded=false: the redemption had not named its tokens yet; it
	// revokes them itself when it tries.
	s.log.Warn("authorization code reuse detected; the tokens issued for it are revoked",
		"subject", used.Subject, "client_id", used.ClientID, "presented_by", clientID,
		"recorded", used.Access != nil || used.Family != "")
	return oauthError("invalid_grant", "authorization code was already used; every token issued for it is revoked")
}
