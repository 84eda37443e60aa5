package storetest

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/portcullis/portcullis/authz"
)

func testClients(t *testing.T, newStore func(*testing.T) authz.Store) {
	s, ctx := newStore(t), t.Context()
	c1 := authz.ClientRecord{
		ID:           "c1",
		SecretDigest: digest("client secret"),
		Name:         "CI",
		RedirectURIs: []string{"https://ci.example.com/callback"},
		GrantTypes:   []string{"authorization_code", "refresh_token"},
		Scopes:       []string{"openid"},
		Subject:      "clients/c1",
		FirstParty:   true,
		CreatedAt:    time.Now().UTC().Truncate(time.Second),
	}
	c2 := authz.ClientRecord{ID: "c2", GrantTypes: []string{"client_credentials"}}
	must(s.CreateClient(ctx, c1))(t)
	must(s.CreateClient(ctx, c2))(t)
	_, err := s.CreateClient(ctx, authz.ClientRecord{ID: "c1", Name: "impostor"})
	wantErr(t, err, authz.ErrConflict, "CreateClient of an existing id")

	got := must(s.Client(ctx, "c1"))(t)
	if got.ID != c1.ID || got.SecretDigest != c1.SecretDigest || got.Name != c1.Name ||
		!slices.Equal(got.RedirectURIs, c1.RedirectURIs) || !slices.Equal(got.GrantTypes, c1.GrantTypes) ||
		!slices.Equal(got.Scopes, c1.Scopes) || got.Subject != c1.Subject || got.FirstParty != c1.FirstParty ||
		!got.CreatedAt.Equal(c1.CreatedAt) {
		t.Errorf("Client = %+v, want %+v", got, c1)
	}
	_, err = s.Client(ctx, "nope")
	wantErr(t, err, authz.ErrNotFound, "Client of an unknown id")

	list := must(s.Clients(ctx))(t)
	ids := make([]string, len(list))
	for i, c := range list {
		ids[i] = c.ID
	}
	slices.Sort(ids)
	if !slices.Equal(ids, []string{"c1", "c2"}) {
		t.Errorf("Clients = %v, want [c1 c2]", ids)
	}

	must(s.DeleteClient(ctx, "c1"))(t)
	_, err = s.Client(ctx, "c1")
	wantErr(t, err, authz.ErrNotFound, "Client after DeleteClient")
	_, err = s.DeleteClient(ctx, "c1")
	wantErr(t, err, authz.ErrNotFound, "DeleteClient of a deleted client")
	must(s.CreateClient(ctx, c1))(t) // the id is free again
}

func authCode(expires time.Time) authz.AuthCode {
	return authz.AuthCode{
		ClientID:      "c1",
		RedirectURI:   "https://ci.example.com/callback",
		Subject:       "users/alice",
		Scopes:        []string{"openid", "projects/p#read"},
		CodeChallenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
		Nonce:         "n-0S6_WzA2Mj",
		ExpiresAt:     expires.UTC().Truncate(time.Millisecond),
	}
}

func testAuthCodes(t *testing.T, newStore func(*testing.T) authz.Store) {
	t.Run("take once", func(t *testing.T) {
		s, ctx := newStore(t), t.Context()
		want := authCode(time.Now().Add(time.Minute))
		if err := s.PutAuthCode(ctx, "d1", want); err != nil {
			t.Fatal(err)
		}
		got := must(s.TakeAuthCode(ctx, "d1"))(t)
		if got.ClientID != want.ClientID || got.RedirectURI != want.RedirectURI || got.Subject != want.Subject ||
			!slices.Equal(got.Scopes, want.Scopes) || got.CodeChallenge != want.CodeChallenge ||
			got.Nonce != want.Nonce || !got.ExpiresAt.Equal(want.ExpiresAt) {
			t.Errorf("TakeAuthCode = %+v, want %+v", got, want)
		}
		_, err := s.TakeAuthCode(ctx, "d1")
		wantErr(t, err, authz.ErrNotFound, "second TakeAuthCode")
		_, err = s.TakeAuthCode(ctx, "unknown")
		wantErr(t, err, authz.ErrNotFound, "TakeAuthCode of an unknown code")
	})

	t.Run("exactly one of concurrent takes wins", func(t *testing.T) {
		s, ctx := newStore(t), t.Context()
		if err := s.PutAuthCode(ctx, "d2", authCode(time.Now().Add(time.Minute))); err != nil {
			t.Fatal(err)
		}
		const n = 20
		results := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() { _, results[i] = s.TakeAuthCode(ctx, "d2") })
		}
		wg.Wait()
		wins := 0
		for i, err := range results {
			switch {
			case err == nil:
				wins++
			case !errors.Is(err, authz.ErrNotFound):
				t.Errorf("take %d: %v, want success or ErrNotFound", i, err)
			}
		}
		if wins != 1 {
			t.Errorf("%d of %d concurrent takes got the code, want exactly 1", wins, n)
		}
		// The winner's take remembered the code as used.
		if u, err := s.ReplayAuthCode(ctx, "d2"); err != nil || u.Subject != "users/alice" || u.ClientID != "c1" {
			t.Errorf("ReplayAuthCode after the race = %+v, %v", u, err)
		}
	})

	access := &authz.IssuedAccess{Type: authz.TokenTypeSession, ID: "jti-1", ExpiresAt: time.Now().Add(time.Hour).UTC().Truncate(time.Second)}
	take := func(t *testing.T, s authz.Store, d string) {
		t.Helper()
		if err := s.PutAuthCode(t.Context(), d, authCode(time.Now().Add(time.Minute))); err != nil {
			t.Fatal(err)
		}
		must(s.TakeAuthCode(t.Context(), d))(t)
	}

	t.Run("a replay reports what the redemption recorded", func(t *testing.T) {
		s, ctx := newStore(t), t.Context()
		_, err := s.ReplayAuthCode(ctx, "never-taken")
		wantErr(t, err, authz.ErrNotFound, "ReplayAuthCode of a code never taken")
		err = s.RecordAuthCodeIssue(ctx, "never-taken", "fam", access)
		wantErr(t, err, authz.ErrNotFound, "RecordAuthCodeIssue of a code never taken")

		take(t, s, "d3")
		if err := s.RecordAuthCodeIssue(ctx, "d3", "fam-3", access); err != nil {
			t.Fatal(err)
		}
		err = s.RecordAuthCodeIssue(ctx, "d3", "fam-other", nil)
		wantErr(t, err, authz.ErrConflict, "second RecordAuthCodeIssue")
		for i := range 2 { // a second replay still names the tokens
			u := must(s.ReplayAuthCode(ctx, "d3"))(t)
			if !u.Replayed || u.Subject != "users/alice" || u.ClientID != "c1" || u.Family != "fam-3" ||
				u.Access == nil || u.Access.Type != access.Type || u.Access.ID != access.ID || !u.Access.ExpiresAt.Equal(access.ExpiresAt) {
				t.Errorf("replay %d: ReplayAuthCode = %+v (access %+v), want the recorded issue", i+1, u, u.Access)
			}
		}
	})

	t.Run("a replay before the record makes it fail", func(t *testing.T) {
		s, ctx := newStore(t), t.Context()
		take(t, s, "d4")
		if u := must(s.ReplayAuthCode(ctx, "d4"))(t); !u.Replayed || u.Family != "" || u.Access != nil {
			t.Errorf("ReplayAuthCode before the record = %+v", u)
		}
		err := s.RecordAuthCodeIssue(ctx, "d4", "fam-4", access)
		wantErr(t, err, authz.ErrConflict, "RecordAuthCodeIssue after a replay")
		if u := must(s.ReplayAuthCode(ctx, "d4"))(t); u.Family != "" || u.Access != nil {
			t.Errorf("the failed record was written: %+v", u)
		}
	})

	t.Run("a replay racing the record: one of them sees the other", func(t *testing.T) {
		s, ctx := newStore(t), t.Context()
		for i := range 10 {
			d := fmt.Sprintf("race-%d", i)
			take(t, s, d)
			var recErr, repErr error
			var u authz.UsedAuthCode
			var wg sync.WaitGroup
			wg.Go(func() { recErr = s.RecordAuthCodeIssue(ctx, d, "fam", access) })
			wg.Go(func() { u, repErr = s.ReplayAuthCode(ctx, d) })
			wg.Wait()
			if repErr != nil {
				t.Fatalf("round %d: ReplayAuthCode: %v", i, repErr)
			}
			switch {
			case recErr == nil && u.Family != "fam":
				t.Errorf("round %d: the record succeeded but the replay did not see it: %+v", i, u)
			case recErr != nil && !errors.Is(recErr, authz.ErrConflict):
				t.Errorf("round %d: RecordAuthCodeIssue: %v, want success or ErrConflict", i, recErr)
			case recErr != nil && u.Family != "":
				t.Errorf("round %d: the record failed but the replay saw it: %+v", i, u)
			}
		}
	})
}

func testSigningKeys(t *testing.T, newStore func(*testing.T) authz.Store) {
	s, ctx := newStore(t), t.Context()
	k1 := authz.SigningKey{ID: "k1", Algorithm: "EdDSA", PrivateKey: []byte{0x30, 0x2e, 1, 2, 3}, CreatedAt: time.Now().UTC().Truncate(time.Second)}
	k2 := authz.SigningKey{ID: "k2", Algorithm: "ES256", PrivateKey: []byte{0x30, 0x77}, CreatedAt: k1.CreatedAt}
	must(s.AddSigningKey(ctx, k1))(t)
	must(s.AddSigningKey(ctx, k2))(t)
	_, err := s.AddSigningKey(ctx, authz.SigningKey{ID: "k1", Algorithm: "ES256"})
	wantErr(t, err, authz.ErrConflict, "AddSigningKey of an existing id")

	retired := time.Now().UTC().Truncate(time.Second)
	k1.RetiredAt = &retired
	must(s.UpdateSigningKey(ctx, k1))(t)
	_, err = s.UpdateSigningKey(ctx, authz.SigningKey{ID: "k9"})
	wantErr(t, err, authz.ErrNotFound, "UpdateSigningKey of an unknown key")

	byID := map[string]authz.SigningKey{}
	for _, k := range must(s.SigningKeys(ctx))(t) {
		byID[k.ID] = k
	}
	if len(byID) != 2 {
		t.Fatalf("SigningKeys returned %d keys, want 2", len(byID))
	}
	got := byID["k1"]
	if got.Algorithm != "EdDSA" || !slices.Equal(got.PrivateKey, k1.PrivateKey) || !got.CreatedAt.Equal(k1.CreatedAt) ||
		got.RetiredAt == nil || !got.RetiredAt.Equal(retired) {
		t.Errorf("k1 after update = %+v, want %+v", got, k1)
	}
	if byID["k2"].RetiredAt != nil {
		t.Errorf("k2 retired by another key's update")
	}
	// The creating revision orders keys (k2 was added after k1); an
	// update does not change it.
	if r1, r2 := byID["k1"].Revision, byID["k2"].Revision; r1 <= 0 || r2 <= r1 {
		t.Errorf("key revisions k1 %d, k2 %d: want 0 < k1 < k2", r1, r2)
	}

	must(s.DeleteSigningKey(ctx, "k1"))(t)
	must(s.DeleteSigningKey(ctx, "k1"))(t) // absent keys are ignored
	if keys := must(s.SigningKeys(ctx))(t); len(keys) != 1 || keys[0].ID != "k2" {
		t.Errorf("SigningKeys after deleting k1 = %+v", keys)
	}
	_, err = s.UpdateSigningKey(ctx, k1)
	wantErr(t, err, authz.ErrNotFound, "UpdateSigningKey of a deleted key")
}
