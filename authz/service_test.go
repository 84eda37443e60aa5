package authz_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/authz/authztest"
	"github.com/portcullis/portcullis/store/etcdtest"
)

var bg = context.Background()

func TestSemanticsEmbedded(t *testing.T) {
	authztest.Run(t, authztest.Env{NewService: func(t *testing.T) *authz.Service { return newService(t) }})
}

// The same table against a real etcd process (the distribution's etcd,
// older than the client library), the other backend Portcullis supports.
func TestSemanticsExternal(t *testing.T) {
	endpoints := etcdtest.SharedExternal(t)
	authztest.Run(t, authztest.Env{NewService: func(t *testing.T) *authz.Service {
		return startService(t, etcdtest.NewStore(t, endpoints), testConfig())
	}})
}

func mustUser(t testing.TB, svc *authz.Service, in authz.UserInput) authz.User {
	t.Helper()
	u, _, err := svc.CreateUser(bg, in, false)
	if err != nil {
		t.Fatalf("create user %+v: %v", in, err)
	}
	return u
}

func login(t testing.TB, svc *authz.Service, user, password string) authz.TokenResponse {
	t.Helper()
	resp, err := svc.RequestToken(bg, authz.TokenRequest{GrantType: authz.GrantPassword, Username: user, Password: password})
	if err != nil {
		t.Fatalf("login %s: %v", user, err)
	}
	return resp
}

func wantErr(t *testing.T, err, target error, what string) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: err = %v, want %v", what, err, target)
	}
}

func TestUserRules(t *testing.T) {
	t.Parallel()
	svc := newService(t)
	alice := mustUser(t, svc, authz.UserInput{Username: "Alice", Email: "alice@example.com", Password: "correct horse"})
	if !alice.HasPassword || alice.ID == "" || alice.CreatedAt.IsZero() {
		t.Fatalf("user = %+v", alice)
	}
	grants, err := svc.ListPermissions(bg, "users/"+alice.ID, false, false)
	if err != nil || !sameSet(grants, []string{"users/" + alice.ID + "#admin", "roles/user"}) {
		t.Fatalf("default grants = %q, %v", grants, err)
	}
	for _, in := range []authz.UserInput{
		{Username: "alice"}, {Username: "ALICE"}, {Email: "Alice@Example.com", Username: "other"}, {Username: "x", Email: "alice@example.com"},
	} {
		_, _, err := svc.CreateUser(bg, in, false)
		wantErr(t, err, authz.ErrConflict, fmt.Sprintf("duplicate login id %+v", in))
	}
	// Username derived from the email, with -1, -2 on collision.
	b1 := mustUser(t, svc, authz.UserInput{Email: "bob@one.example"})
	b2 := mustUser(t, svc, authz.UserInput{Email: "bob@two.example"})
	b3 := mustUser(t, svc, authz.UserInput{Email: "BOB@three.example"})
	if b1.Username != "bob" || b2.Username != "bob-1" || b3.Username != "BOB-2" {
		t.Fatalf("derived usernames = %q %q %q", b1.Username, b2.Username, b3.Username)
	}
	for _, in := range []authz.UserInput{
		{Username: "carol@example.com"},       // a username may not be an email
		{Email: "not-an-email"},               // invalid email
		{Email: "Carol <carol@example.com>"},  // a display name is not an email
		{},                                    // neither
		{Username: "dave", Password: "short"}, // too short
		{Username: "erin", Password: strings.Repeat("x", 73)}, // over bcrypt's limit: refused, not truncated
		{Username: "bad name"},
		{Username: "bad\xffname"},
	} {
		_, _, err := svc.CreateUser(bg, in, false)
		wantErr(t, err, authz.ErrInvalid, fmt.Sprintf("create %+v", in))
	}
	// Exactly 72 bytes works and the 73rd byte matters.
	pw72 := strings.Repeat("p", 72)
	mustUser(t, svc, authz.UserInput{Username: "frank", Password: pw72})
	login(t, svc, "frank", pw72)
	if _, err := svc.RequestToken(bg, authz.TokenRequest{GrantType: authz.GrantPassword, Username: "frank", Password: pw72 + "x"}); err == nil {
		t.Fatal("a 73-byte password matched a 72-byte one")
	}
	// Login by username or email, any case.
	login(t, svc, "ALICE", "correct horse")
	login(t, svc, "alice@EXAMPLE.com", "correct horse")
	for _, bad := range [][2]string{{"alice", "wrong horse"}, {"nobody", "correct horse"}} {
		_, err := svc.RequestToken(bg, authz.TokenRequest{GrantType: authz.GrantPassword, Username: bad[0], Password: bad[1]})
		var oe *authz.OAuthError
		if !errors.As(err, &oe) || oe.Code != "invalid_grant" || oe.Description != "invalid username or password" {
			t.Fatalf("login %v: %v", bad, err)
		}
	}
}

// The bootstrap admin and its extra grant are one write: no revision ever
// shows the user without the grant, and a bad extra grant writes nothing.
func TestCreateUserWithGrantsIsOneWrite(t *testing.T) {
	t.Parallel()
	svc := newService(t)
	_, _, err := svc.CreateUserWithGrants(bg, authz.UserInput{Username: "root"}, false, []string{"*#admin", "projects/../x#read"})
	wantErr(t, err, authz.ErrInvalid, "create with a malformed extra grant")
	if users, err := svc.Users(bg); err != nil || len(users) != 0 {
		t.Fatalf("after a refused create: users = %v, %v", users, err)
	}
	u, rev, err := svc.CreateUserWithGrants(bg, authz.UserInput{Username: "root", Password: "correct horse"}, false, []string{" *#ADMIN "})
	if err != nil {
		t.Fatal(err)
	}
	grants, err := svc.ListPermissions(bg, "users/"+u.ID, false, false)
	if err != nil || !sameSet(grants, []string{"users/" + u.ID + "#admin", "roles/user", "*#admin"}) {
		t.Fatalf("grants = %q, %v", grants, err)
	}
	// Fresh at exactly the creation revision, the admin grant is already there.
	tok := login(t, svc, "root", "correct horse")
	if _, err := svc.VerifyAccess(bg, tok.AccessToken, "projects/p#admin", authz.VerifyOptions{AtLeastRevision: rev}); err != nil {
		t.Fatalf("verify *#admin at the creation revision: %v", err)
	}
}

func TestUpdateUserMovesLoginIDs(t *testing.T) {
	t.Parallel()
	svc := newService(t)
	u := mustUser(t, svc, authz.UserInput{Username: "gina", Email: "gina@example.com", Password: "password1"})
	mustUser(t, svc, authz.UserInput{Username: "hank"})
	got, _, err := svc.UpdateUser(bg, u.ID, []byte(`{"username":"georgina","email":null,"id":"ignored"}`))
	if err != nil || got.Username != "georgina" || got.Email != "" {
		t.Fatalf("update = %+v, %v", got, err)
	}
	login(t, svc, "georgina", "password1")
	if _, err := svc.RequestToken(bg, authz.TokenRequest{GrantType: authz.GrantPassword, Username: "gina", Password: "password1"}); err == nil {
		t.Fatal("old username still logs in")
	}
	mustUser(t, svc, authz.UserInput{Username: "gina", Email: "gina@example.com"}) // both freed
	_, _, err = svc.UpdateUser(bg, u.ID, []byte(`{"username":"hank"}`))
	wantErr(t, err, authz.ErrConflict, "take another user's username")
	for _, bad := range []string{`{"username":"x@y.z"}`, `{"password":"newpassword"}`, `{"nope":1}`, `[1]`, `{"disabled":"yes"}`, `{"username":null}`} {
		_, _, err := svc.UpdateUser(bg, u.ID, []byte(bad))
		wantErr(t, err, authz.ErrInvalid, "patch "+bad)
	}
	after, _ := svc.User(bg, u.ID)
	if after.Username != "georgina" {
		t.Fatalf("a refused patch changed the user: %+v", after)
	}
	_, _, err = svc.UpdateUser(bg, "nosuchuser", []byte(`{"disabled":true}`))
	wantErr(t, err, authz.ErrNotFound, "update missing user")
}

func TestDisabledAndDeletedUsersGetNoAccess(t *testing.T) {
	t.Parallel()
	svc := newService(t)
	u := mustUser(t, svc, authz.UserInput{Username: "ivan", Password: "password1"})
	sess := login(t, svc, "ivan", "password1")
	perm := "users/" + u.ID + "#write"
	api, _, _, err := svc.IssueToken(bg, authz.TokenSpec{Subject: "users/" + u.ID, Scopes: []string{"*#admin"}, Purpose: authz.PurposeUserAPI})
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{sess.AccessToken, api} {
		if _, err := svc.VerifyAccess(bg, tok, perm, authz.VerifyOptions{}); err != nil {
			t.Fatalf("before disable: %v", err)
		}
	}
	if _, _, err := svc.UpdateUser(bg, u.ID, []byte(`{"disabled":true}`)); err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{sess.AccessToken, api} {
		_, err := svc.VerifyAccess(bg, tok, perm, authz.VerifyOptions{})
		wantErr(t, err, authz.ErrUnauthenticated, "disabled user")
	}
	_, err = svc.RequestToken(bg, authz.TokenRequest{GrantType: authz.GrantRefreshToken, RefreshToken: sess.RefreshToken})
	if err == nil {
		t.Fatal("refresh token of a disabled user works")
	}
	if _, _, err := svc.UpdateUser(bg, u.ID, []byte(`{"disabled":false}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.VerifyAccess(bg, api, perm, authz.VerifyOptions{}); err != nil {
		t.Fatalf("API token after re-enable: %v", err)
	}
	_, err = svc.VerifyAccess(bg, sess.AccessToken, perm, authz.VerifyOptions{})
	wantErr(t, err, authz.ErrUnauthenticated, "session after disable+enable")

	if _, err := svc.DeleteUser(bg, u.ID); err != nil {
		t.Fatal(err)
	}
	_, err = svc.VerifyAccess(bg, api, perm, authz.VerifyOptions{})
	wantErr(t, err, authz.ErrUnauthenticated, "deleted user's API token")
	left, _ := svc.ListPermissions(bg, "users/"+u.ID, false, false)
	toks, _ := svc.ListAPITokens(bg, "users/"+u.ID)
	if len(left) != 0 || len(toks) != 0 {
		t.Fatalf("delete left grants %q tokens %v", left, toks)
	}
	_, err = svc.User(bg, u.ID)
	wantErr(t, err, authz.ErrNotFound, "get deleted user")
	mustUser(t, svc, authz.UserInput{Username: "ivan"})
}

func TestPasswordChange(t *testing.T) {
	t.Parallel()
	svc := newService(t)
	u := mustUser(t, svc, authz.UserInput{Username: "judy", Password: "password1"})
	sess := login(t, svc, "judy", "password1")
	cookie, err := svc.RequestToken(bg, authz.TokenRequest{GrantType: authz.GrantPassword, Username: "judy", Password: "password1", LoginToken: true})
	if err != nil {
		t.Fatal(err)
	}
	api, _, _, err := svc.IssueToken(bg, authz.TokenSpec{Subject: "users/" + u.ID, Scopes: []string{"*#admin"}, Purpose: authz.PurposeUserAPI})
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{sess.AccessToken, cookie.AccessToken, api} {
		if _, err := svc.VerifyAccess(bg, tok, "", authz.VerifyOptions{}); err != nil {
			t.Fatalf("before: %v", err)
		}
	}
	if _, err := svc.ChangePassword(bg, u.ID, "password2"); err != nil {
		t.Fatal(err)
	}
	for name, tok := range map[string]string{"session": sess.AccessToken, "login token": cookie.AccessToken} {
		_, err := svc.VerifyAccess(bg, tok, "", authz.VerifyOptions{})
		wantErr(t, err, authz.ErrUnauthenticated, name+" after password change")
	}
	if _, err := svc.VerifyAccess(bg, api, "", authz.VerifyOptions{}); err != nil {
		t.Fatalf("API token after password change: %v", err)
	}
	_, err = svc.RequestToken(bg, authz.TokenRequest{GrantType: authz.GrantRefreshToken, RefreshToken: sess.RefreshToken})
	var oe *authz.OAuthError
	if !errors.As(err, &oe) || oe.Code != "invalid_grant" {
		t.Fatalf("refresh after password change: %v", err)
	}
	login(t, svc, "judy", "password2")
	_, err = svc.ChangePassword(bg, u.ID, strings.Repeat("y", 100))
	wantErr(t, err, authz.ErrInvalid, "over-long password")
}

func TestTokensAreStoredAsDigests(t *testing.T) {
	t.Parallel()
	st := openStore(t, embeddedEndpoints(t), "")
	svc := startService(t, st, testConfig())
	u := mustUser(t, svc, authz.UserInput{Username: "kim", Password: "password1"})
	sess := login(t, svc, "kim", "password1")
	caller, err := svc.VerifyAccess(bg, sess.AccessToken, "", authz.VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	secret, info, _, err := svc.CreateToken(bg, caller, authz.TokenSpec{Scopes: []string{"users/" + u.ID + "#read"}, Description: "ci", Purpose: authz.PurposeUserAPI})
	if err != nil {
		t.Fatal(err)
	}
	if len(secret) < 40 || info.ID == "" || strings.Contains(info.ID, secret) {
		t.Fatalf("secret %q info %+v", secret, info)
	}
	// Neither the API token nor the refresh token appears anywhere in etcd.
	resp, err := st.EtcdClient().Get(bg, "", clientv3WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		for _, s := range []string{secret, sess.RefreshToken, "password1"} {
			if strings.Contains(string(kv.Key), s) || strings.Contains(string(kv.Value), s) {
				t.Fatalf("secret found in etcd at %s", kv.Key)
			}
		}
	}
	list, err := svc.ListAPITokens(bg, "users/"+u.ID)
	if err != nil || len(list) != 1 || list[0].ID != info.ID || list[0].Description != "ci" {
		t.Fatalf("list = %+v, %v", list, err)
	}
	_, _, _, err = svc.CreateToken(bg, caller, authz.TokenSpec{Scopes: []string{"projects/elsewhere#read"}})
	wantErr(t, err, authz.ErrPermissionDenied, "scope not granted to the caller")
	_, _, _, err = svc.CreateToken(bg, caller, authz.TokenSpec{Purpose: authz.PurposeRefresh})
	wantErr(t, err, authz.ErrInvalid, "reserved purpose")

	// Revoke by id, then by value (already gone: still fine).
	if _, err := svc.VerifyAccess(bg, secret, "users/"+u.ID+"#read", authz.VerifyOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.RevokeTokenByID(bg, &caller, info.ID); err != nil {
		t.Fatal(err)
	}
	_, err = svc.VerifyAccess(bg, secret, "users/"+u.ID+"#read", authz.VerifyOptions{})
	wantErr(t, err, authz.ErrUnauthenticated, "revoked by id")
	if _, err := svc.RevokeToken(bg, &caller, secret); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.RevokeToken(bg, &caller, "pct_unknown"); err != nil {
		t.Fatalf("revoking an unknown token: %v", err)
	}
	// Someone else cannot revoke kim's tokens, nor learn their ids exist.
	other := mustUser(t, svc, authz.UserInput{Username: "lou", Password: "password1"})
	_ = other
	osess := login(t, svc, "lou", "password1")
	ocaller, _ := svc.VerifyAccess(bg, osess.AccessToken, "", authz.VerifyOptions{})
	secret2, info2, _, _ := svc.CreateToken(bg, caller, authz.TokenSpec{Scopes: []string{"users/" + u.ID + "#read"}})
	_, err = svc.RevokeTokenByID(bg, &ocaller, info2.ID)
	wantErr(t, err, authz.ErrNotFound, "revoke another user's token by id")
	_, err = svc.RevokeToken(bg, &ocaller, secret2)
	wantErr(t, err, authz.ErrPermissionDenied, "revoke another user's token by value")
	if _, err := svc.VerifyAccess(bg, secret2, "", authz.VerifyOptions{}); err != nil {
		t.Fatalf("token revoked by a stranger: %v", err)
	}
	// A refresh token is not an access token.
	_, err = svc.VerifyAccess(bg, sess.RefreshToken, "", authz.VerifyOptions{})
	wantErr(t, err, authz.ErrUnauthenticated, "refresh token used as access token")
	in, err := svc.Introspect(bg, sess.RefreshToken)
	if err != nil || !in.Active || in.TokenType != "refresh_token" {
		t.Fatalf("introspect refresh = %+v, %v", in, err)
	}
	in, err = svc.Introspect(bg, sess.AccessToken)
	if err != nil || !in.Active || in.Sub != "users/"+u.ID || in.Username != "kim" || in.Exp == 0 || in.Jti == "" {
		t.Fatalf("introspect session = %+v, %v", in, err)
	}
	in, err = svc.Introspect(bg, secret)
	if err != nil || in.Active {
		t.Fatalf("introspect revoked = %+v, %v", in, err)
	}
}

func TestSessionRevocation(t *testing.T) {
	t.Parallel()
	svc := newService(t)
	mustUser(t, svc, authz.UserInput{Username: "mia", Password: "password1"})
	sess := login(t, svc, "mia", "password1")
	if _, err := svc.VerifyAccess(bg, sess.AccessToken, "", authz.VerifyOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.RevokeToken(bg, nil, sess.AccessToken); err != nil {
		t.Fatal(err)
	}
	_, err := svc.VerifyAccess(bg, sess.AccessToken, "", authz.VerifyOptions{})
	wantErr(t, err, authz.ErrUnauthenticated, "revoked session")
	in, err := svc.Introspect(bg, sess.AccessToken)
	if err != nil || in.Active {
		t.Fatalf("introspect revoked session = %+v, %v", in, err)
	}
}

func TestRefreshRotationAndReuse(t *testing.T) {
	t.Parallel()
	svc := newService(t)
	mustUser(t, svc, authz.UserInput{Username: "ned", Password: "password1"})
	first := login(t, svc, "ned", "password1")
	second, err := svc.RequestToken(bg, authz.TokenRequest{GrantType: authz.GrantRefreshToken, RefreshToken: first.RefreshToken})
	if err != nil || second.RefreshToken == "" || second.RefreshToken == first.RefreshToken {
		t.Fatalf("rotate = %+v, %v", second, err)
	}
	// Replaying the first token revokes the family, including the second.
	_, err = svc.RequestToken(bg, authz.TokenRequest{GrantType: authz.GrantRefreshToken, RefreshToken: first.RefreshToken})
	var oe *authz.OAuthError
	if !errors.As(err, &oe) || oe.Code != "invalid_grant" {
		t.Fatalf("reuse: %v", err)
	}
	_, err = svc.RequestToken(bg, authz.TokenRequest{GrantType: authz.GrantRefreshToken, RefreshToken: second.RefreshToken})
	if !errors.As(err, &oe) || oe.Code != "invalid_grant" {
		t.Fatalf("family member after reuse: %v", err)
	}

	// 20 concurrent exchanges of one token: exactly one wins.
	fresh := login(t, svc, "ned", "password1")
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := svc.RequestToken(bg, authz.TokenRequest{GrantType: authz.GrantRefreshToken, RefreshToken: fresh.RefreshToken}); err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("%d concurrent refreshes succeeded, want exactly 1", wins)
	}
}

func TestConcurrentGrantsAreNotLost(t *testing.T) {
	t.Parallel()
	svc := newService(t)
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := svc.AddPermission(bg, "projects/shared", fmt.Sprintf("items/%d#read", i)); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	got, err := svc.ListPermissions(bg, "projects/shared", false, false)
	if err != nil || len(got) != 100 {
		t.Fatalf("%d grants present after 100 concurrent adds (%v)", len(got), err)
	}
}

func TestBadInputWritesNothing(t *testing.T) {
	t.Parallel()
	svc := newService(t)
	for _, c := range [][2]string{
		{"", "a#read"}, {"users/x", ""}, {"users/x", "a#owner"}, {"users/../x", "a#read"},
		{"users/x", "a/%2e%2e#read"}, {"users/x", strings.Repeat("a", 2000) + "#read"}, {"users/\xff", "a#read"},
		{"users/x", "a/./b#read"}, {"users//x", "a#read"},
	} {
		_, err := svc.AddPermission(bg, c[0], c[1])
		wantErr(t, err, authz.ErrInvalid, fmt.Sprintf("add %q to %q", c[1], c[0]))
	}
	got, err := svc.ListPermissions(bg, "users/x", false, false)
	if err != nil || len(got) != 0 {
		t.Fatalf("bad input wrote %q (%v)", got, err)
	}
	// Lists are bounded wherever they enter a stored record.
	many := make([]string, 101)
	for i := range many {
		many[i] = fmt.Sprintf("projects/p%d#read", i)
	}
	_, _, _, err = svc.IssueToken(bg, authz.TokenSpec{Subject: "users/x", Scopes: many})
	wantErr(t, err, authz.ErrInvalid, "a token with 101 scopes")
	_, _, _, err = svc.RegisterClient(bg, authz.ClientSpec{ID: "wide", GrantTypes: []string{authz.GrantClientCredentials}, Scopes: many})
	wantErr(t, err, authz.ErrInvalid, "a client with 101 scopes")
	uris := make([]string, 21)
	for i := range uris {
		uris[i] = fmt.Sprintf("https://app.example/cb%d", i)
	}
	_, _, _, err = svc.RegisterClient(bg, authz.ClientSpec{ID: "hooks", RedirectURIs: uris})
	wantErr(t, err, authz.ErrInvalid, "a client with 21 redirect URIs")
	if clients, err := svc.Clients(bg); err != nil || len(clients) != 0 {
		t.Fatalf("refused clients were written: %v, %v", clients, err)
	}
	if _, _, _, err := svc.RegisterClient(bg, authz.ClientSpec{ID: "hooks", RedirectURIs: uris[:20], Scopes: many[:100]}); err != nil {
		t.Fatalf("20 redirect URIs and 100 scopes: %v", err)
	}
}

func TestExplain(t *testing.T) {
	t.Parallel()
	svc := newService(t)
	for _, g := range [][2]string{{"agents/e", "roles/a"}, {"roles/a", "roles/b"}, {"roles/b", "projects/p#write"}} {
		if _, err := svc.AddPermission(bg, g[0], g[1]); err != nil {
			t.Fatal(err)
		}
	}
	tok, _, _, err := svc.IssueToken(bg, authz.TokenSpec{Subject: "agents/e", Scopes: []string{"projects#read"}})
	if err != nil {
		t.Fatal(err)
	}
	acc, err := svc.VerifyAccess(bg, tok, "projects/p/x#read", authz.VerifyOptions{Explain: true})
	if err != nil {
		t.Fatal(err)
	}
	e := acc.Explanation
	if e == nil || !e.Allowed || e.Scope != "projects#read" || e.Grant != "projects/p#write" || e.Holder != "roles/b" || strings.Join(e.Via, ",") != "roles/a,roles/b" {
		t.Fatalf("explanation = %+v", e)
	}
	_, err = svc.VerifyAccess(bg, tok, "projects/p#write", authz.VerifyOptions{Explain: true})
	var de *authz.DeniedError
	if !errors.As(err, &de) || de.Explanation.Missing != "scope" {
		t.Fatalf("denied explanation: %v", err)
	}
	_, err = svc.VerifyAccess(bg, tok, "projects/q#read", authz.VerifyOptions{Explain: true})
	if !errors.As(err, &de) || de.Explanation.Missing != "grant" {
		t.Fatalf("denied explanation: %v", err)
	}
}

func TestClientCredentialsAndDeletion(t *testing.T) {
	t.Parallel()
	svc := newService(t)
	secret, c, _, err := svc.RegisterClient(bg, authz.ClientSpec{ID: "robot", GrantTypes: []string{authz.GrantClientCredentials}, Scopes: []string{"metrics#read"}})
	if err != nil || secret == "" || c.Public {
		t.Fatalf("register: %+v %v", c, err)
	}
	if _, err := svc.AddPermission(bg, "clients/robot", "metrics#read"); err != nil {
		t.Fatal(err)
	}
	resp, err := svc.RequestToken(bg, authz.TokenRequest{GrantType: authz.GrantClientCredentials, ClientID: "robot", ClientSecret: secret})
	if err != nil || resp.RefreshToken != "" || resp.Scope != "metrics#read" {
		t.Fatalf("client_credentials = %+v, %v", resp, err)
	}
	if _, err := svc.VerifyAccess(bg, resp.AccessToken, "metrics/x#read", authz.VerifyOptions{}); err != nil {
		t.Fatal(err)
	}
	var oe *authz.OAuthError
	for _, req := range []authz.TokenRequest{
		{GrantType: authz.GrantClientCredentials, ClientID: "robot", ClientSecret: "wrong"},
		{GrantType: authz.GrantClientCredentials, ClientID: "ghost", ClientSecret: secret},
		{GrantType: authz.GrantClientCredentials, ClientID: "robot"},
	} {
		_, err := svc.RequestToken(bg, req)
		if !errors.As(err, &oe) || oe.Code != "invalid_client" {
			t.Fatalf("%+v: %v", req, err)
		}
	}
	_, err = svc.RequestToken(bg, authz.TokenRequest{GrantType: authz.GrantClientCredentials, ClientID: "robot", ClientSecret: secret, Scope: "admin#admin"})
	if !errors.As(err, &oe) || oe.Code != "invalid_scope" {
		t.Fatalf("scope beyond the client: %v", err)
	}
	_, err = svc.RequestToken(bg, authz.TokenRequest{GrantType: "magic"})
	if !errors.As(err, &oe) || oe.Code != "unsupported_grant_type" {
		t.Fatalf("unknown grant: %v", err)
	}
	if _, err := svc.DeleteClient(bg, "robot"); err != nil {
		t.Fatal(err)
	}
	_, err = svc.VerifyAccess(bg, resp.AccessToken, "metrics/x#read", authz.VerifyOptions{})
	wantErr(t, err, authz.ErrUnauthenticated, "token of a deleted client")
}

func TestAuthorizationCodeFlow(t *testing.T) {
	t.Parallel()
	now := time.Now()
	var clock sync.Mutex
	cfg := testConfig()
	cfg.Now = func() time.Time { clock.Lock(); defer clock.Unlock(); return now }
	svc := startService(t, openStore(t, embeddedEndpoints(t), ""), cfg)
	u := mustUser(t, svc, authz.UserInput{Username: "olga", Password: "password1"})
	const redirect = "https://app.example/callback"
	secret, _, _, err := svc.RegisterClient(bg, authz.ClientSpec{ID: "webapp", RedirectURIs: []string{redirect}})
	if err != nil {
		t.Fatal(err)
	}
	verifier := strings.Repeat("v", 50)
	challenge := s256(verifier)
	issue := func() string {
		code, err := svc.IssueAuthCode(bg, authz.AuthorizeRequest{ClientID: "webapp", RedirectURI: redirect, Subject: "users/" + u.ID, CodeChallenge: challenge, CodeChallengeMethod: "S256"})
		if err != nil {
			t.Fatal(err)
		}
		return code
	}
	exchange := func(code, v, ru, sec string) (authz.TokenResponse, error) {
		return svc.RequestToken(bg, authz.TokenRequest{GrantType: authz.GrantAuthorizationCode, Code: code, CodeVerifier: v, RedirectURI: ru, ClientID: "webapp", ClientSecret: sec})
	}
	code := issue()
	resp, err := exchange(code, verifier, redirect, secret)
	if err != nil || resp.RefreshToken == "" {
		t.Fatalf("exchange = %+v, %v", resp, err)
	}
	if _, err := exchange(code, verifier, redirect, secret); err == nil {
		t.Fatal("authorization code used twice")
	}
	var oe *authz.OAuthError
	for name, f := range map[string]func(string) (authz.TokenResponse, error){
		"wrong verifier": func(c string) (authz.TokenResponse, error) {
			return exchange(c, strings.Repeat("w", 50), redirect, secret)
		},
		"redirect near-miss": func(c string) (authz.TokenResponse, error) { return exchange(c, verifier, redirect+"/", secret) },
		"no verifier":        func(c string) (authz.TokenResponse, error) { return exchange(c, "", redirect, secret) },
	} {
		_, err := f(issue())
		if !errors.As(err, &oe) || oe.Code != "invalid_grant" {
			t.Fatalf("%s: %v", name, err)
		}
	}
	otherSecret, _, _, err := svc.RegisterClient(bg, authz.ClientSpec{ID: "other", RedirectURIs: []string{redirect}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = svc.RequestToken(bg, authz.TokenRequest{GrantType: authz.GrantAuthorizationCode, Code: issue(), CodeVerifier: verifier, RedirectURI: redirect, ClientID: "other", ClientSecret: otherSecret})
	if !errors.As(err, &oe) || oe.Code != "invalid_grant" {
		t.Fatalf("code redeemed by another client: %v", err)
	}
	_, err = exchange(issue(), verifier, redirect, "bad-secret")
	if !errors.As(err, &oe) || oe.Code != "invalid_client" {
		t.Fatalf("bad client secret: %v", err)
	}
	late := issue()
	clock.Lock()
	now = now.Add(61 * time.Second)
	clock.Unlock()
	if _, err := exchange(late, verifier, redirect, secret); !errors.As(err, &oe) || oe.Code != "invalid_grant" {
		t.Fatalf("expired code: %v", err)
	}
	_, err = svc.IssueAuthCode(bg, authz.AuthorizeRequest{ClientID: "webapp", RedirectURI: redirect, Subject: "users/" + u.ID, CodeChallenge: verifier, CodeChallengeMethod: "plain"})
	if !errors.As(err, &oe) {
		t.Fatalf("plain PKCE accepted: %v", err)
	}
	for _, m := range []string{"", "S256"} {
		_, err = svc.IssueAuthCode(bg, authz.AuthorizeRequest{ClientID: "webapp", RedirectURI: redirect, Subject: "users/" + u.ID, CodeChallengeMethod: m})
		if !errors.As(err, &oe) || oe.Code != "invalid_request" {
			t.Fatalf("code without a PKCE challenge (method %q): %v", m, err)
		}
	}
	_, err = svc.IssueAuthCode(bg, authz.AuthorizeRequest{ClientID: "webapp", RedirectURI: "https://evil.example/callback", Subject: "users/" + u.ID, CodeChallenge: challenge, CodeChallengeMethod: "S256"})
	wantErr(t, err, authz.ErrInvalid, "unregistered redirect")
}

// A token's subject is stored in canonical form, so a subject written
// " users/<id>/" is still the user's: listed with its tokens, refused while
// the user is disabled, and deleted with the user.
func TestTokenSubjectIsCanonical(t *testing.T) {
	t.Parallel()
	svc := newService(t)
	u := mustUser(t, svc, authz.UserInput{Username: "rhea", Password: "password1"})
	sub := " /users/" + u.ID + ":"
	tok, info, _, err := svc.IssueToken(bg, authz.TokenSpec{Subject: sub, Scopes: []string{"*#admin"}})
	if err != nil || info.Subject != "users/"+u.ID {
		t.Fatalf("issue with subject %q: %+v, %v", sub, info, err)
	}
	sess, _, _, err := svc.IssueToken(bg, authz.TokenSpec{Subject: sub, Scopes: []string{"*#admin"}, Type: authz.TokenTypeSession})
	if err != nil {
		t.Fatal(err)
	}
	if _, c, _, err := svc.RegisterClient(bg, authz.ClientSpec{ID: "rhea-bot", Subject: sub, GrantTypes: []string{authz.GrantClientCredentials}}); err != nil || c.Subject != "users/"+u.ID {
		t.Fatalf("client with subject %q: %+v, %v", sub, c, err)
	}
	if list, err := svc.ListAPITokens(bg, "users/"+u.ID); err != nil || len(list) != 1 || list[0].ID != info.ID {
		t.Fatalf("tokens of users/%s = %+v, %v", u.ID, list, err)
	}
	if _, _, err := svc.UpdateUser(bg, u.ID, []byte(`{"disabled":true}`)); err != nil {
		t.Fatal(err)
	}
	for name, tk := range map[string]string{"api": tok, "session": sess} {
		_, err := svc.VerifyAccess(bg, tk, "", authz.VerifyOptions{})
		wantErr(t, err, authz.ErrUnauthenticated, name+" token of a disabled user")
	}
	if _, err := svc.DeleteUser(bg, u.ID); err != nil {
		t.Fatal(err)
	}
	if in, err := svc.Introspect(bg, tok); err != nil || in.Active {
		t.Fatalf("token of a deleted user: %+v, %v", in, err)
	}
}

// Free text that the store keeps as JSON must be valid UTF-8: encoding/json
// would replace invalid bytes silently, so what was stored would differ
// from what was answered. It is refused, and nothing is written.
func TestInvalidUTF8IsRefusedAndWritesNothing(t *testing.T) {
	t.Parallel()
	svc := newService(t)
	u := mustUser(t, svc, authz.UserInput{Username: "sia", Email: "sia@example.com"})
	for name, spec := range map[string]authz.TokenSpec{
		"description": {Subject: "agents/u", Scopes: []string{"*#admin"}, Description: "ci\xff"},
		"purpose":     {Subject: "agents/u", Scopes: []string{"*#admin"}, Purpose: "ci\xff"},
	} {
		_, _, _, err := svc.IssueToken(bg, spec)
		wantErr(t, err, authz.ErrInvalid, "token "+name)
	}
	if list, err := svc.ListAPITokens(bg, "agents/u"); err != nil || len(list) != 0 {
		t.Fatalf("refused tokens were stored: %+v, %v", list, err)
	}
	for name, spec := range map[string]authz.ClientSpec{
		"name":         {ID: "u1", Name: "bot\xff", GrantTypes: []string{authz.GrantClientCredentials}},
		"redirect_uri": {ID: "u2", RedirectURIs: []string{"https://app.example/cb\xff"}},
	} {
		_, _, _, err := svc.RegisterClient(bg, spec)
		wantErr(t, err, authz.ErrInvalid, "client "+name)
	}
	if cs, err := svc.Clients(bg); err != nil || len(cs) != 0 {
		t.Fatalf("refused clients were stored: %+v, %v", cs, err)
	}
	_, _, err := svc.UpdateUser(bg, u.ID, []byte("{\"email\":\"sia\xff@example.com\"}"))
	wantErr(t, err, authz.ErrInvalid, "patch with invalid UTF-8")
	if got, err := svc.User(bg, u.ID); err != nil || got.Email != "sia@example.com" {
		t.Fatalf("user after a refused patch: %+v, %v", got, err)
	}
	_, err = svc.ResourcesWithPermission(bg, "x#read", "users/\xff")
	wantErr(t, err, authz.ErrInvalid, "resource prefix with invalid UTF-8")
}
