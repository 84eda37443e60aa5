package authz_test

import (
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/authz/authztest"
)

// Several first sign-ins of one person at once create one user, and all
// of them are signed in as it.
func TestSignInExternalConcurrentFirstSignIns(t *testing.T) {
	svc := authztest.Start(t, openStore(t, embeddedEndpoints(t), ""), authztest.FastConfig())
	in := authz.ExternalSignIn{MayCreate: true, Roles: []string{"roles/dev"},
		Identity: authz.ExternalIdentity{Provider: "corp", Subject: "s-1", Email: "ann@example.com", EmailVerified: true}}
	const n = 6
	users := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			resp, err := svc.SignInExternal(t.Context(), in)
			users[i], errs[i] = resp.UserID, err
		})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil || users[i] != users[0] || users[0] == "" {
			t.Fatalf("sign-in %d: user %q (first %q), %v", i, users[i], users[0], errs[i])
		}
	}
	all, err := svc.Users(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	created := 0
	for _, u := range all {
		if u.Email == "ann@example.com" {
			created++
			if u.HasPassword || u.Username != "ann" {
				t.Fatalf("created user %+v", u)
			}
		}
	}
	if created != 1 {
		t.Fatalf("%d users created for one identity", created)
	}
}

// The mapping is re-evaluated at each sign-in: a mapped role removed by
// hand comes back while the group still maps to it; a role held by hand
// before the mapping gave it is never taken away.
func TestSignInExternalRoles(t *testing.T) {
	svc := authztest.Start(t, openStore(t, embeddedEndpoints(t), ""), authztest.FastConfig())
	ctx := t.Context()
	in := authz.ExternalSignIn{MayCreate: true, Roles: []string{"roles/dev"},
		Identity: authz.ExternalIdentity{Provider: "corp", Subject: "s-3", PreferredUsername: "cy"}}
	resp, err := svc.SignInExternal(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	subject := "users/" + resp.UserID
	if _, err := svc.RemovePermission(ctx, subject, "roles/dev", false); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.AddPermission(ctx, subject, "roles/ops"); err != nil {
		t.Fatal(err)
	}
	in.Roles = []string{"roles/dev", "roles/ops"}
	if _, err := svc.SignInExternal(ctx, in); err != nil {
		t.Fatal(err)
	}
	has := func(g string) bool {
		gs, err := svc.ListPermissions(ctx, subject, false, false)
		if err != nil {
			t.Fatal(err)
		}
		return slices.Contains(gs, g)
	}
	if !has("roles/dev") || !has("roles/ops") {
		t.Fatal("mapped roles not (re-)granted")
	}
	in.Roles = nil
	if _, err := svc.SignInExternal(ctx, in); err != nil {
		t.Fatal(err)
	}
	if has("roles/dev") || !has("roles/ops") || !has("roles/user") {
		t.Fatal("after leaving every group: the mapped role stays or a role held by hand went")
	}
}

// No link and no right to create: ErrNoAccount and nothing written. A
// disabled user is refused. A link is found by provider and subject only:
// the same subject at another provider is someone else.
func TestSignInExternalRefusals(t *testing.T) {
	svc := authztest.Start(t, openStore(t, embeddedEndpoints(t), ""), authztest.FastConfig())
	ctx := t.Context()
	id := authz.ExternalIdentity{Provider: "corp", Subject: "s-2", PreferredUsername: "bo b"}
	if _, err := svc.SignInExternal(ctx, authz.ExternalSignIn{Identity: id}); !errors.Is(err, authz.ErrNoAccount) {
		t.Fatalf("no account: %v", err)
	}
	resp, err := svc.SignInExternal(ctx, authz.ExternalSignIn{Identity: id, MayCreate: true})
	if err != nil {
		t.Fatal(err)
	}
	u, err := svc.User(ctx, resp.UserID)
	if err != nil || u.Username != "bo-b" || u.Email != "" {
		t.Fatalf("user %+v, %v", u, err)
	}
	other := id
	other.Provider = "elsewhere"
	if _, err := svc.SignInExternal(ctx, authz.ExternalSignIn{Identity: other}); !errors.Is(err, authz.ErrNoAccount) {
		t.Fatalf("same subject at another provider: %v", err)
	}
	if _, _, err := svc.UpdateUser(ctx, u.ID, []byte(`{"disabled":true}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.SignInExternal(ctx, authz.ExternalSignIn{Identity: id}); !errors.Is(err, authz.ErrUnauthenticated) {
		t.Fatalf("disabled user: %v", err)
	}
	for _, bad := range []authz.ExternalSignIn{
		{Identity: authz.ExternalIdentity{Provider: "Corp!", Subject: "x"}, MayCreate: true},
		{Identity: authz.ExternalIdentity{Provider: "corp", Subject: ""}, MayCreate: true},
		{Identity: authz.ExternalIdentity{Provider: "corp", Subject: "x"}, MayCreate: true, Roles: []string{"projects/a#admin"}},
	} {
		if _, err := svc.SignInExternal(ctx, bad); !errors.Is(err, authz.ErrInvalid) {
			t.Fatalf("%+v: %v", bad, err)
		}
	}
}

// A pending sign-in is finished once.
func TestExternalLoginFinishedOnce(t *testing.T) {
	svc := authztest.Start(t, openStore(t, embeddedEndpoints(t), ""), authztest.FastConfig())
	ctx := t.Context()
	id, err := svc.BeginExternalLogin(ctx, authz.ExternalLoginState{Provider: "corp", State: "st"})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := svc.FinishExternalLogin(ctx, id); err != nil || st.State != "st" {
		t.Fatalf("finish: %+v, %v", st, err)
	}
	if _, err := svc.FinishExternalLogin(ctx, id); !errors.Is(err, authz.ErrNotFound) {
		t.Fatalf("finish again: %v", err)
	}
	if _, err := svc.FinishExternalLogin(ctx, "never-issued"); !errors.Is(err, authz.ErrNotFound) {
		t.Fatalf("unknown id: %v", err)
	}
}
