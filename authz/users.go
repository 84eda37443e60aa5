package authz

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/mail"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/crypto/bcrypt"
)

// maxPasswordBytes is bcrypt's input limit. Longer passwords are refused
// with a clear error instead of being silently truncated.
const maxPasswordBytes = 72

const (
	maxUsernameLen = 64
	maxEmailLen    = 254
	maxUserSuffix  = 100
)

// User is contaxy's User model.
type User struct {
	ID            string     `json:"id"`
	Username      string     `json:"username,omitempty"`
	Email         string     `json:"email,omitempty"`
	Disabled      bool       `json:"disabled"`
	TechnicalUser bool       `json:"technical_user"`
	CreatedAt     time.Time  `json:"created_at"`
	LastActivity  *time.Time `json:"last_activity,omitempty"`
	HasPassword   bool       `json:"has_password"`
}

func (u *UserRecord) public() User {
	return User{
		ID: u.ID, Username: u.Username, Email: u.Email, Disabled: u.Disabled,
		TechnicalUser: u.TechnicalUser, CreatedAt: u.CreatedAt, LastActivity: u.LastActivity,
		HasPassword: u.PasswordHash != "",
	}
}

// UserInput is what a client gives to create a user.
type UserInput struct {
	Username string `json:"username,omitempty"`
	Email    string `json:"email,omitempty"`
	Password string `json:"password,omitempty"`
	Disabled bool   `json:"disabled,omitempty"`
}

// UserSubject returns the resource name of a user: "users/<id>".
func UserSubject(id string) string { return "users/" + id }

// DefaultUserGrants are the grants every new user receives, as in contaxy.
func DefaultUserGrants(id string) []string {
	return []string{UserSubject(id) + "#admin", "roles/user"}
}

// CreateUser creates a user with contaxy's rules: username and email are
// unique login ids (case-insensitively); a username may not be an email; an
// email must be valid; given only an email, the username is its local part
// (with -1, -2, … on collision). The user receives DefaultUserGrants. The
// user, its login ids and grants are written in one transaction.
func (s *Service) CreateUser(ctx context.Context, in UserInput, technical bool) (User, Revision, error) {
	return s.CreateUserWithGrants(ctx, in, technical, nil)
}

// CreateUserWithGrants is CreateUser with grants beyond the defaults,
// written in the same transaction as the user: the bootstrap admin must
// never exist without its *#admin, or a crash between two writes would
// leave a store that has a user (so no second bootstrap) and no admin.
func (s *Service) CreateUserWithGrants(ctx context.Context, in UserInput, technical bool, extra []string) (User, Revision, error) {
	username := strings.TrimSpace(in.Username)
	email := strings.TrimSpace(in.Email)
	var errs []error
	if username != "" {
		if err := validateUsername(username); err != nil {
			errs = append(errs, err)
		}
	}
	if email != "" {
		if err := validateEmail(email); err != nil {
			errs = append(errs, err)
		}
	}
	if username == "" && email == "" && !technical {
		errs = append(errs, invalid("user", "a username or an email is required"))
	}
	if in.Password != "" {
		if err := s.validatePassword(in.Password); err != nil {
			errs = append(errs, err)
		}
	}
	extraGrants := make([]string, 0, len(extra))
	for _, e := range extra {
		g, err := ParseGrant(e)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		extraGrants = append(extraGrants, g.String())
	}
	if len(errs) > 0 {
		return User{}, 0, errors.Join(errs...)
	}
	rec := UserRecord{
		ID:            randomID(10),
		Username:      username,
		Email:         email,
		Disabled:      in.Disabled,
		TechnicalUser: technical,
		CreatedAt:     s.now().UTC().Truncate(time.Millisecond),
	}
	if in.Password != "" {
		h, err := s.hashPassword(ctx, in.Password)
		if err != nil {
			return User{}, 0, err
		}
		rec.PasswordHash = string(h)
	}
	grants := append(DefaultUserGrants(rec.ID), extraGrants...)
	if username != "" || email == "" {
		rev, err := s.store.CreateUser(ctx, rec, grants)
		if err != nil {
			return User{}, 0, fmt.Errorf("create user: %w", err)
		}
		return rec.public(), rev, nil
	}
	// Derive the username from the email's local part.
	base := usernameFromEmail(email)
	for i := 0; i <= maxUserSuffix; i++ {
		rec.Username = base
		if i > 0 {
			rec.Username = fmt.Sprintf("%s-%d", base, i)
		}
		rev, err := s.store.CreateUser(ctx, rec, grants)
		if err == nil {
			return rec.public(), rev, nil
		}
		if !errors.Is(err, ErrConflict) {
			return User{}, 0, fmt.Errorf("create user: %w", err)
		}
		if _, lerr := s.store.UserByLogin(ctx, email); lerr == nil {
			return User{}, 0, fmt.Errorf("create user: email %q: %w", email, ErrConflict)
		}
	}
	return User{}, 0, fmt.Errorf("create user: no free username derived from %q: %w", email, ErrConflict)
}

func validateUsername(u string) error {
	if len(u) > maxUsernameLen {
		return invalid("username", fmt.Sprintf("longer than %d characters", maxUsernameLen))
	}
	if strings.Contains(u, "@") {
		return invalid("username", "a username may not be an email address")
	}
	for i := 0; i < len(u); i++ {
		if !usernameByte(u[i]) {
			return invalid("username", quote(u)+" may contain only letters, digits and . _ + ~ -")
		}
	}
	return nil
}

func usernameByte(b byte) bool {
	switch {
	case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9':
		return true
	}
	return strings.IndexByte("._+~-", b) >= 0
}

func usernameFromEmail(email string) string {
	local := email[:strings.LastIndexByte(email, '@')]
	b := []byte(local)
	for i := range b {
		if !usernameByte(b[i]) {
			b[i] = '-'
		}
	}
	if len(b) > maxUsernameLen-4 {
		b = b[:maxUsernameLen-4]
	}
	if len(b) == 0 {
		return "user"
	}
	return string(b)
}

func validateEmail(e string) error {
	if len(e) > maxEmailLen || !utf8.ValidString(e) {
		return invalid("email", "not a valid email address")
	}
	a, err := mail.ParseAddress(e)
	if err != nil || a.Name != "" || a.Address != e || !strings.Contains(e[strings.LastIndexByte(e, '@')+1:], ".") {
		return invalid("email", quote(e)+" is not a valid email address")
	}
	return nil
}

func (s *Service) validatePassword(p string) error {
	switch {
	case len(p) > maxPasswordBytes:
		return invalid("password", fmt.Sprintf("longer than %d bytes (bcrypt's limit; it is refused, not truncated)", maxPasswordBytes))
	case utf8.RuneCountInString(p) < s.cfg.MinPasswordLength:
		return invalid("password", fmt.Sprintf("shorter than %d characters", s.cfg.MinPasswordLength))
	case !utf8.ValidString(p):
		return invalid("password", "not valid UTF-8")
	case strings.TrimSpace(p) == "":
		return invalid("password", "only white space")
	}
	return nil
}

// hashPassword runs bcrypt under the hashing semaphore.
func (s *Service) hashPassword(ctx context.Context, p string) ([]byte, error) {
	if err := s.acquireHash(ctx); err != nil {
		return nil, err
	}
	defer func() { <-s.hashSem }()
	h, err := bcrypt.GenerateFromPassword([]byte(p), s.cfg.BcryptCost)
	if err != nil {
		return nil, fmt.Errorf("hash password: %w", err)
	}
	return h, nil
}

func (s *Service) comparePassword(ctx context.Context, hash []byte, p string) (bool, error) {
	if err := s.acquireHash(ctx); err != nil {
		return false, err
	}
	defer func() { <-s.hashSem }()
	return bcrypt.CompareHashAndPassword(hash, []byte(p)) == nil, nil
}

func (s *Service) acquireHash(ctx context.Context) error {
	select {
	case s.hashSem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

var errBadCredentials = fmt.Errorf("%w: invalid username or password", ErrUnauthenticated)

// Authenticate checks a login id (username or email, any case) and
// password. Unknown accounts cost one hash comparison too, so neither the
// answer nor its timing tells which accounts exist. A disabled user is
// refused after the password check.
func (s *Service) Authenticate(ctx context.Context, login, password string) (User, error) {
	login = strings.TrimSpace(login)
	if login == "" || len(login) > maxEmailLen || password == "" {
		return User{}, errBadCredentials
	}
	rec, err := s.store.UserByLogin(ctx, strings.ToLower(login))
	if err != nil && !isNotFound(err) {
		return User{}, fmt.Errorf("authenticate: %w", err)
	}
	hash := s.dummyHash
	// bcrypt compares only the first 72 bytes; no stored password is longer,
	// so a longer one never matches (and must not match its prefix).
	tooLong := len(password) > maxPasswordBytes
	if err == nil && rec.PasswordHash != "" && !tooLong {
		hash = []byte(rec.PasswordHash)
	}
	ok, cerr := s.comparePassword(ctx, hash, password)
	if cerr != nil {
		return User{}, cerr
	}
	if err != nil || rec.PasswordHash == "" || tooLong || !ok {
		return User{}, errBadCredentials
	}
	if rec.Disabled {
		return User{}, fmt.Errorf("%w: user is disabled", ErrUnauthenticated)
	}
	return rec.public(), nil
}

// User returns a user, or ErrNotFound.
func (s *Service) User(ctx context.Context, id string) (User, error) {
	if err := validateID("user id", id); err != nil {
		return User{}, err
	}
	rec, err := s.store.User(ctx, id)
	if err != nil {
		return User{}, fmt.Errorf("get user: %w", err)
	}
	return rec.public(), nil
}

// Users lists every user, ordered by creation time.
func (s *Service) Users(ctx context.Context) ([]User, error) {
	recs, err := s.store.Users(ctx)
	if err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	slices.SortFunc(recs, func(a, b UserRecord) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	out := make([]User, len(recs))
	for i := range recs {
		out[i] = recs[i].public()
	}
	return out, nil
}

// validateID accepts the ids Portcullis generates and contaxy-style ids:
// 1–128 bytes of letters, digits, '-', '_' and '.', not "." or "..".
func validateID(field, id string) error {
	if id == "" || len(id) > 128 || id == "." || id == ".." {
		return invalid(field, "must be 1 to 128 letters, digits, '-', '_' or '.'")
	}
	for i := 0; i < len(id); i++ {
		b := id[i]
		if !('a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9' || b == '-' || b == '_' || b == '.') {
			return invalid(field, quote(id)+" must be letters, digits, '-', '_' or '.'")
		}
	}
	return nil
}

// UpdateUser applies a JSON merge patch (RFC 7396) to a user's username,
// email, disabled and technical_user fields, moving login ids with it in
// the same transaction. Read-only fields (id, created_at, last_activity,
// has_password) are ignored; a password is refused (use ChangePassword);
// any other field is an error. Disabling a user ends its sessions, login
// and refresh tokens for good; its API tokens stop working while disabled.
func (s *Service) UpdateUser(ctx context.Context, id string, patch []byte) (User, Revision, error) {
	if err := validateID("user id", id); err != nil {
		return User{}, 0, err
	}
	// encoding/json would replace invalid UTF-8 silently.
	if !utf8.Valid(patch) {
		return User{}, 0, invalid("patch", "not valid UTF-8")
	}
	var fields map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(patch))
	if err := dec.Decode(&fields); err != nil || fields == nil {
		return User{}, 0, invalid("patch", "must be a JSON object (a JSON merge patch of the user)")
	}
	if dec.More() {
		return User{}, 0, invalid("patch", "trailing data after the JSON object")
	}
	type change struct {
		set  bool
		str  *string
		flag bool
	}
	var username, email, disabled, technical change
	for k, v := range fields {
		isNull := string(bytes.TrimSpace(v)) == "null"
		switch k {
		case "username", "email":
			c := change{set: true}
			if !isNull {
				var str string
				if err := json.Unmarshal(v, &str); err != nil {
					return User{}, 0, invalid(k, "must be a string or null")
				}
				str = strings.TrimSpace(str)
				c.str = &str
			}
			if k == "username" {
				username = c
			} else {
				email = c
			}
		case "disabled", "technical_user":
			c := change{set: true}
			if !isNull {
				if err := json.Unmarshal(v, &c.flag); err != nil {
					return User{}, 0, invalid(k, "must be true, false or null")
				}
			}
			if k == "disabled" {
				disabled = c
			} else {
				technical = c
			}
		case "id", "created_at", "last_activity", "has_password":
			// Read-only; clients that send back a whole User still work.
		case "password":
			return User{}, 0, invalid("password", "cannot be patched; use change-password")
		default:
			return User{}, 0, invalid("patch", "unknown field "+quote(k))
		}
	}
	if username.str != nil && *username.str != "" {
		if err := validateUsername(*username.str); err != nil {
			return User{}, 0, err
		}
	}
	if email.str != nil && *email.str != "" {
		if err := validateEmail(*email.str); err != nil {
			return User{}, 0, err
		}
	}
	var disabling bool
	var dropped []string
	rec, rev, err := s.store.UpdateUser(ctx, id, func(u *UserRecord) error {
		disabling = false
		if username.set {
			u.Username = deref(username.str)
		}
		if email.set {
			u.Email = deref(email.str)
		}
		if technical.set {
			u.TechnicalUser = technical.flag
		}
		if disabled.set {
			if disabled.flag && !u.Disabled {
				disabling = true
				u.SessionEpoch++
			}
			u.Disabled = disabled.flag
		}
		if u.Username == "" && u.Email == "" && !u.TechnicalUser {
			return invalid("user", "a username or an email is required")
		}
		return nil
	}, func(t TokenRecord) bool {
		drop := disabling && (t.Purpose == PurposeLogin || t.Purpose == PurposeRefresh)
		if drop {
			dropped = append(dropped, t.Digest)
		}
		return drop
	})
	if err != nil {
		return User{}, 0, fmt.Errorf("update user: %w", err)
	}
	s.invalidateUser(id, dropped)
	return rec.public(), rev, nil
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// invalidateUser makes this replica stop using cached state about the user
// and the listed tokens at once, without waiting for the watch.
func (s *Service) invalidateUser(id string, tokenDigests []string) {
	s.gens.bump(slotUser, id)
	for _, d := range tokenDigests {
		s.gens.bump(slotToken, d)
	}
}

// ChangePassword sets a new password. It ends every session of the user
// and deletes its login and refresh tokens in the same transaction; API
// tokens the user created on purpose stay valid.
func (s *Service) ChangePassword(ctx context.Context, id, password string) (Revision, error) {
	if err := validateID("user id", id); err != nil {
		return 0, err
	}
	if err := s.validatePassword(password); err != nil {
		return 0, err
	}
	h, err := s.hashPassword(ctx, password)
	if err != nil {
		return 0, err
	}
	var dropped []string
	_, rev, err := s.store.UpdateUser(ctx, id, func(u *UserRecord) error {
		if u.PasswordHash == "" && len(u.ExternalIDs) > 0 && !s.cfg.ExternalUsersMaySetPassword {
			return fmt.Errorf("%w: the user signs in through an external identity provider and may not set a password", ErrPermissionDenied)
		}
		u.PasswordHash = string(h)
		u.SessionEpoch++
		return nil
	}, func(t TokenRecord) bool {
		drop := t.Purpose == PurposeLogin || t.Purpose == PurposeRefresh
		if drop {
			dropped = append(dropped, t.Digest)
		}
		return drop
	})
	if err != nil {
		return 0, fmt.Errorf("change password: %w", err)
	}
	s.invalidateUser(id, dropped)
	return rev, nil
}

// DeleteUser deletes a user with its grants, password, tokens and login
// ids, in one transaction; every token and session of the user stops
// working at once.
func (s *Service) DeleteUser(ctx context.Context, id string) (Revision, error) {
	if err := validateID("user id", id); err != nil {
		return 0, err
	}
	rev, err := s.store.DeleteUser(ctx, id)
	if err != nil {
		return 0, fmt.Errorf("delete user: %w", err)
	}
	s.invalidateUser(id, nil)
	s.gens.bump(slotGrant, UserSubject(id))
	return rev, nil
}

// TouchUser records a user's last activity (best effort: a failure is only logged).
func (s *Service) touchUser(ctx context.Context, id string) {
	now := s.now().UTC().Truncate(time.Second)
	if _, _, err := s.store.UpdateUser(ctx, id, func(u *UserRecord) error {
		u.LastActivity = &now
		return nil
	}, nil); err != nil {
		s.log.Debug("record last activity", "user", id, "err", err)
	}
}
