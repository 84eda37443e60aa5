// Package authztest holds contaxy's permission semantics as data and the
// one loop that runs them against an authz.Service on any store backend.
package authztest

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/portcullis/portcullis/authz"
)

// Subject is the subject every case's token acts as. It is not a user, so
// no user record is involved: the cases test permissions alone.
const Subject = "agents/tester"

// Outcomes of a check.
const (
	Allow           = "allow"
	Deny            = "deny"            // ErrPermissionDenied
	Invalid         = "invalid"         // ErrInvalid
	Unauthenticated = "unauthenticated" // ErrUnauthenticated
)

// Grant is one grant set up before a case runs.
type Grant struct{ Resource, Grant string }

// Check verifies Permission with the case's token and expects Want.
type Check struct {
	Permission string
	Want       string
}

// TokenCheck verifies Permission with another Token than the case's.
type TokenCheck struct {
	Token, Permission, Want string
}

// AccessCheck expects verifying Permission with the case's token to be
// allowed with an AuthorizedAccess naming the case's subject and Resource
// and Level: those of the requested permission, in canonical form.
type AccessCheck struct {
	Permission, Resource, Level string
}

// Removal is a remove_permission call and what the resource holds afterwards.
type Removal struct {
	Resource, Permission string
	Sub                  bool
	Remaining            []string
	Want                 string // "" for success, or Invalid
}

// List is a list_permissions call and its expected answer (order ignored).
type List struct {
	Resource string
	Resolve  bool
	Want     []string
}

// Resources is a list_resources_with_permission call.
type Resources struct {
	Permission, Prefix string
	Want               []string
}

// Case is one scenario of the permission model.
type Case struct {
	Name   string
	Grants []Grant
	// Scopes of the token; nil means the unrestricted ["*#admin"].
	Scopes    []string
	Checks    []Check
	Tokens    []TokenCheck
	Accesses  []AccessCheck
	Removals  []Removal
	After     []Check // checks after the removals
	Lists     []List
	Resources []Resources
}

// Cases covers every rule of ../shared/contaxy-auth-operations.md, including
// contaxy's own examples.
var Cases = []Case{
	{
		Name:   "level hierarchy: write implies read, not admin",
		Grants: []Grant{{Subject, "projects/a#write"}},
		Checks: []Check{{"projects/a#read", Allow}, {"projects/a#write", Allow}, {"projects/a#admin", Deny}},
	},
	{
		Name:   "admin implies write and read",
		Grants: []Grant{{Subject, "projects/a#admin"}},
		Checks: []Check{{"projects/a#read", Allow}, {"projects/a#write", Allow}, {"projects/a#admin", Allow}},
	},
	{
		Name:   "boundary-aware prefix matching",
		Grants: []Grant{{Subject, "projects/a#write"}},
		Checks: []Check{
			{"projects/a/services/b#write", Allow},
			{"projects/a:x#read", Allow},
			{"projects/a/b/c/d/e#read", Allow},
			{"projects/ab#read", Deny},
			{"projects/a-b#read", Deny},
			{"projects#read", Deny},
			{"projects/a/services/b#admin", Deny},
		},
	},
	{
		Name:   "colon boundary in the granted resource",
		Grants: []Grant{{Subject, "projects/a:files#read"}},
		Checks: []Check{{"projects/a:files/x#read", Allow}, {"projects/a:files:y#read", Allow}, {"projects/a#read", Deny}, {"projects/a:filesystem#read", Deny}},
	},
	{
		Name:   "* covers every resource",
		Grants: []Grant{{Subject, "*#admin"}},
		Checks: []Check{{"anything#admin", Allow}, {"projects/a/b#write", Allow}, {"*#admin", Allow}},
	},
	{
		Name:   "*#read covers reading everything, nothing more",
		Grants: []Grant{{Subject, "*#read"}},
		Checks: []Check{{"projects/a#read", Allow}, {"users/x#read", Allow}, {"projects/a#write", Deny}},
	},
	{
		Name:   "a grant on a resource does not cover *",
		Grants: []Grant{{Subject, "projects#admin"}},
		Checks: []Check{{"*#read", Deny}},
	},
	{
		Name:   "trimming and case of granted and requested permissions",
		Grants: []Grant{{Subject, "/projects/a/#READ"}, {"/" + Subject + ":", ":projects/b:# Write "}},
		Checks: []Check{{"projects/a#read", Allow}, {" /projects/a/ # Read", Allow}, {"projects/b/x#write", Allow}, {"projects/b#admin", Deny}},
		Lists:  []List{{Subject, false, []string{"projects/a#read", "projects/b#write"}}},
	},
	{
		Name:   "no permission asked: a valid token is enough",
		Checks: []Check{{"", Allow}},
	},
	{
		Name:   "an invalid token is unauthenticated, with or without a permission",
		Grants: []Grant{{Subject, "*#admin"}},
		Tokens: []TokenCheck{
			{"pct_no-such-token", "", Unauthenticated},
			{"pct_no-such-token", "projects/a#read", Unauthenticated},
			{"eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZ2VudHMvdGVzdGVyIn0.", "projects/a#read", Unauthenticated},
		},
	},
	{
		Name:   "AuthorizedAccess names the requested resource and level, canonical",
		Grants: []Grant{{Subject, "projects#admin"}},
		Accesses: []AccessCheck{
			{"projects/a/b#read", "projects/a/b", "read"},
			{" /projects/a:x/ # WRITE", "projects/a:x", "write"},
		},
	},
	{
		Name:   "nothing granted: denied",
		Checks: []Check{{"projects/a#read", Deny}},
	},
	{
		Name:   "token scope AND subject grant: scope narrows",
		Grants: []Grant{{Subject, "projects/a#admin"}},
		Scopes: []string{"projects/a#read"},
		Checks: []Check{{"projects/a#read", Allow}, {"projects/a/x#read", Allow}, {"projects/a#write", Deny}, {"projects/b#read", Deny}},
	},
	{
		Name:   "token scope AND subject grant: grant narrows",
		Grants: []Grant{{Subject, "projects/a#read"}},
		Scopes: []string{"*#admin"},
		Checks: []Check{{"projects/a#read", Allow}, {"projects/a#write", Deny}},
	},
	{
		Name:   "scope on a sibling does not help",
		Grants: []Grant{{Subject, "projects#admin"}},
		Scopes: []string{"projects/a#admin"},
		Checks: []Check{{"projects/a#admin", Allow}, {"projects/b#read", Deny}, {"projects#read", Deny}},
	},
	{
		Name:   "role grants are inherited",
		Grants: []Grant{{Subject, "roles/user"}, {"roles/user", "projects/p#read"}},
		Checks: []Check{{"projects/p#read", Allow}, {"projects/p/x#read", Allow}, {"projects/p#write", Deny}, {"roles/user#read", Deny}},
	},
	{
		Name: "roles nest three levels",
		Grants: []Grant{
			{Subject, "roles/a"}, {"roles/a", "roles/b"}, {"roles/b", "roles/c"},
			{"roles/a", "x#read"}, {"roles/b", "y#write"}, {"roles/c", "z#admin"},
		},
		Checks: []Check{{"x#read", Allow}, {"y#write", Allow}, {"z#admin", Allow}, {"x#write", Deny}},
	},
	{
		Name:   "role cycle terminates",
		Grants: []Grant{{Subject, "roles/a"}, {"roles/a", "roles/b"}, {"roles/b", "roles/a"}, {"roles/a", "p#read"}, {"roles/b", "q#read"}},
		Checks: []Check{{"p#read", Allow}, {"q#read", Allow}, {"r#read", Deny}},
		Lists:  []List{{Subject, true, []string{"p#read", "q#read"}}},
	},
	{
		Name:   "a role granted to itself",
		Grants: []Grant{{"roles/self", "roles/self"}, {"roles/self", "p#write"}, {Subject, "roles/self"}},
		Checks: []Check{{"p#write", Allow}, {"p#admin", Deny}},
		Lists:  []List{{"roles/self", false, []string{"roles/self", "p#write"}}, {"roles/self", true, []string{"p#write"}}},
	},
	{
		Name:   "a role referencing back to the subject terminates",
		Grants: []Grant{{Subject, "roles/a"}, {"roles/a", Subject}, {Subject, "s#read"}},
		Checks: []Check{{"s#read", Allow}},
	},
	{
		Name:   "a role with no grants resolves to nothing",
		Grants: []Grant{{Subject, "roles/empty"}},
		Checks: []Check{{"roles/empty#read", Deny}, {"x#read", Deny}},
		Lists:  []List{{Subject, true, []string{}}, {Subject, false, []string{"roles/empty"}}},
	},
	{
		Name:   "list_permissions with and without resolve_roles",
		Grants: []Grant{{Subject, "roles/r"}, {Subject, "a#read"}, {"roles/r", "b#write"}, {"roles/r", "roles/s"}, {"roles/s", "c#admin"}},
		Lists: []List{
			{Subject, false, []string{"roles/r", "a#read"}},
			{Subject, true, []string{"a#read", "b#write", "c#admin"}},
		},
	},
	{
		Name:   "contaxy: remove projects#read with sub-permissions",
		Grants: []Grant{{Subject, "projects#read"}, {Subject, "projects/x#read"}, {Subject, "projects/y/z#read"}, {Subject, "projects/y#write"}, {Subject, "roles/r"}, {Subject, "other#read"}},
		Removals: []Removal{{
			Resource: Subject, Permission: "projects#read", Sub: true,
			Remaining: []string{"projects/y#write", "roles/r", "other#read"},
		}},
		After: []Check{{"projects/x#read", Deny}, {"projects/y#read", Allow}, {"other#read", Allow}},
	},
	{
		Name:   "contaxy: remove *#read with sub-permissions removes every #read grant",
		Grants: []Grant{{Subject, "*#read"}, {Subject, "a#read"}, {Subject, "b/c#read"}, {Subject, "d#write"}, {Subject, "roles/keep"}},
		Removals: []Removal{{
			Resource: Subject, Permission: "*#read", Sub: true,
			Remaining: []string{"d#write", "roles/keep"},
		}},
		After: []Check{{"a#read", Deny}, {"d#read", Allow}},
	},
	{
		Name:   "remove a write grant with sub-permissions: lower and equal levels below it go, higher stay",
		Grants: []Grant{{Subject, "p#write"}, {Subject, "p/x#read"}, {Subject, "p/y#write"}, {Subject, "p/z#admin"}, {Subject, "q#read"}, {Subject, "p"}},
		Removals: []Removal{{
			Resource: Subject, Permission: "p#write", Sub: true,
			Remaining: []string{"p/z#admin", "q#read", "p"},
		}},
		After: []Check{{"p/x#read", Deny}, {"p/z#admin", Allow}},
	},
	{
		Name:   "removing a grant the resource does not hold is no error",
		Grants: []Grant{{Subject, "p#read"}},
		Removals: []Removal{
			{Resource: Subject, Permission: "q#read", Remaining: []string{"p#read"}},
			{Resource: "agents/nobody", Permission: "q#read", Sub: true, Remaining: []string{}},
		},
	},
	{
		Name:   "remove without sub-permissions removes only the exact grant",
		Grants: []Grant{{Subject, "projects#read"}, {Subject, "projects/x#read"}},
		Checks: []Check{{"projects/z#read", Allow}},
		Removals: []Removal{{
			Resource: Subject, Permission: "projects#read", Sub: false,
			Remaining: []string{"projects/x#read"},
		}},
		After: []Check{{"projects/x#read", Allow}, {"projects/z#read", Deny}},
	},
	{
		Name:   "remove a role reference",
		Grants: []Grant{{Subject, "roles/r"}, {"roles/r", "p#read"}},
		Checks: []Check{{"p#read", Allow}},
		Removals: []Removal{{
			Resource: Subject, Permission: "roles/r", Remaining: []string{},
		}},
		After: []Check{{"p#read", Deny}},
	},
	{
		Name:   "role change reaches the subject",
		Grants: []Grant{{Subject, "roles/r"}, {"roles/r", "p#write"}},
		Checks: []Check{{"p#write", Allow}},
		Removals: []Removal{{
			Resource: "roles/r", Permission: "p#write", Remaining: []string{},
		}},
		After: []Check{{"p#read", Deny}},
	},
	{
		Name:     "bad removal input writes nothing",
		Grants:   []Grant{{Subject, "p#read"}},
		Removals: []Removal{{Resource: Subject, Permission: "p#owner", Want: Invalid, Remaining: []string{"p#read"}}},
	},
	{
		Name:   "list_resources_with_permission with and without prefix",
		Grants: []Grant{{"users/a", "projects/p#read"}, {"users/b", "projects/p#read"}, {"teams/c", "projects/p#read"}, {"users/d", "projects/p#write"}},
		Resources: []Resources{
			{"projects/p#read", "", []string{"teams/c", "users/a", "users/b"}},
			{"projects/p#read", "users/", []string{"users/a", "users/b"}},
			{"projects/p#write", "", []string{"users/d"}},
			{"projects/q#read", "", []string{}},
		},
	},
	{
		Name:   "list_resources_with_permission of a role reference, given in any form",
		Grants: []Grant{{"users/a", "roles/viewer"}, {"users/b", "roles/viewer"}, {"users/c", "roles/viewer/x"}, {"users/d", "roles/viewer#read"}},
		Resources: []Resources{
			{"roles/viewer", "", []string{"users/a", "users/b"}},
			{"/roles/viewer/", "users/b", []string{"users/b"}},
		},
	},
	{
		Name:   "malformed permissions are invalid, never a decision",
		Grants: []Grant{{Subject, "*#admin"}},
		Checks: []Check{
			{"projects/a", Invalid}, {"projects/a#owner", Invalid}, {"#read", Invalid}, {"projects//a#read", Invalid},
			{"projects/../a#read", Invalid}, {"projects/./a#read", Invalid}, {"projects/%2e%2e#read", Invalid},
			{"projects/a%2fb#read", Invalid}, {"projects/\xff#read", Invalid}, {"a#read#write", Invalid},
		},
	},
}

// Env is what Run needs from a backend.
type Env struct {
	// NewService returns a Service on a fresh, empty store, with its watch running.
	NewService func(t *testing.T) *authz.Service
}

// Run runs every case as a subtest against services from env.
func Run(t *testing.T, env Env) {
	for _, c := range Cases {
		t.Run(c.Name, func(t *testing.T) {
			t.Parallel()
			runCase(t, env.NewService(t), c)
		})
	}
}

func runCase(t *testing.T, svc *authz.Service, c Case) {
	ctx := context.Background()
	for _, g := range c.Grants {
		if _, err := svc.AddPermission(ctx, g.Resource, g.Grant); err != nil {
			t.Fatalf("add %s to %s: %v", g.Grant, g.Resource, err)
		}
	}
	scopes := c.Scopes
	if scopes == nil {
		scopes = []string{"*#admin"}
	}
	token, _, _, err := svc.IssueToken(ctx, authz.TokenSpec{Subject: Subject, Scopes: scopes, Purpose: "test"})
	if err != nil {
		t.Fatalf("issue token: %v", err)
	}
	check := func(stage string, checks []Check) {
		for _, ch := range checks {
			// Twice: the second answer may come from the cache and must agree.
			for i := 0; i < 2; i++ {
				_, err := svc.VerifyAccess(ctx, token, ch.Permission, authz.VerifyOptions{})
				if got := outcome(err); got != ch.Want {
					t.Errorf("%s: verify %q (try %d) = %s (%v), want %s", stage, ch.Permission, i+1, got, err, ch.Want)
				}
			}
		}
	}
	check("before", c.Checks)
	for _, tc := range c.Tokens {
		for i := 0; i < 2; i++ {
			_, err := svc.VerifyAccess(ctx, tc.Token, tc.Permission, authz.VerifyOptions{})
			if got := outcome(err); got != tc.Want {
				t.Errorf("verify %q with token %q (try %d) = %s (%v), want %s", tc.Permission, tc.Token, i+1, got, err, tc.Want)
			}
		}
	}
	for _, ac := range c.Accesses {
		for i := 0; i < 2; i++ {
			acc, err := svc.VerifyAccess(ctx, token, ac.Permission, authz.VerifyOptions{})
			if err != nil || acc.Subject != Subject || acc.Resource != ac.Resource || acc.Level != ac.Level {
				t.Errorf("verify %q (try %d) = subject %q resource %q level %q (%v), want %q %q %q",
					ac.Permission, i+1, acc.Subject, acc.Resource, acc.Level, err, Subject, ac.Resource, ac.Level)
			}
		}
	}
	for _, r := range c.Removals {
		_, err := svc.RemovePermission(ctx, r.Resource, r.Permission, r.Sub)
		if got := outcomeWrite(err); got != r.Want {
			t.Errorf("remove %q from %s (sub=%v): %v, want %q", r.Permission, r.Resource, r.Sub, err, r.Want)
		}
		got, err := svc.ListPermissions(ctx, r.Resource, false, false)
		if err != nil {
			t.Fatalf("list after removal: %v", err)
		}
		if !sameSet(got, r.Remaining) {
			t.Errorf("after removing %q (sub=%v), %s holds %q, want %q", r.Permission, r.Sub, r.Resource, got, r.Remaining)
		}
	}
	check("after removals", c.After)
	for _, l := range c.Lists {
		for _, useCache := range []bool{false, true} {
			got, err := svc.ListPermissions(ctx, l.Resource, l.Resolve, useCache)
			if err != nil {
				t.Fatalf("list %s: %v", l.Resource, err)
			}
			if !sameSet(got, l.Want) {
				t.Errorf("list %s resolve=%v cache=%v = %q, want %q", l.Resource, l.Resolve, useCache, got, l.Want)
			}
		}
	}
	for _, r := range c.Resources {
		got, err := svc.ResourcesWithPermission(ctx, r.Permission, r.Prefix)
		if err != nil {
			t.Fatalf("resources with %s: %v", r.Permission, err)
		}
		if !slices.Equal(got, r.Want) {
			t.Errorf("resources with %s prefix %q = %q, want %q", r.Permission, r.Prefix, got, r.Want)
		}
	}
}

func outcome(err error) string {
	switch {
	case err == nil:
		return Allow
	case errors.Is(err, authz.ErrPermissionDenied):
		return Deny
	case errors.Is(err, authz.ErrInvalid):
		return Invalid
	case errors.Is(err, authz.ErrUnauthenticated):
		return Unauthenticated
	}
	return "error: " + err.Error()
}

func outcomeWrite(err error) string {
	if err == nil {
		return ""
	}
	return outcome(err)
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
