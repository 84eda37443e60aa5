package authz_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/portcullis/portcullis/authz"
)

// TestDecisionsMatchAnOracle builds random role graphs (cycles, self
// references, overlapping grants at every level), removes grants one by
// one, and after each change compares every decision, cached and
// uncached, with a naive resolution of the graph as held in the store.
func TestDecisionsMatchAnOracle(t *testing.T) {
	t.Parallel()
	svc := newService(t)
	rng := rand.New(rand.NewPCG(1, 2))
	resources := []string{"a", "a/b", "a/b/c", "a:c", "ab", "b", "*"}
	requested := append(resources[:len(resources):len(resources)], "a/b/c/d", "a:c/x", "b:y", "c")
	levels := []string{"read", "write", "admin"}
	for g := 0; g < 20; g++ {
		nodes := []string{fmt.Sprintf("agents/s%d", g)}
		for r := 0; r < 4; r++ {
			nodes = append(nodes, fmt.Sprintf("roles/g%d-r%d", g, r))
		}
		for _, n := range nodes {
			for k := 0; k < 3; k++ {
				gr := nodes[rng.IntN(len(nodes))]
				if rng.IntN(2) == 0 {
					gr = resources[rng.IntN(len(resources))] + "#" + levels[rng.IntN(3)]
				}
				if _, err := svc.AddPermission(bg, n, gr); err != nil {
					t.Fatal(err)
				}
			}
		}
		tok, _, _, err := svc.IssueToken(bg, authz.TokenSpec{Subject: nodes[0], Scopes: []string{"*#admin"}})
		if err != nil {
			t.Fatal(err)
		}
		for step := 0; step < 4; step++ {
			if step > 0 {
				n := nodes[rng.IntN(len(nodes))]
				if held, _ := svc.ListPermissions(bg, n, false, false); len(held) > 0 {
					if _, err := svc.RemovePermission(bg, n, held[rng.IntN(len(held))], rng.IntN(2) == 0); err != nil {
						t.Fatal(err)
					}
				}
			}
			base := oracleClosure(t, svc, nodes[0])
			for _, r := range requested {
				for _, l := range levels {
					req, _ := authz.ParsePermission(r + "#" + l)
					want := false
					for _, b := range base {
						want = want || b.Covers(req)
					}
					for _, noCache := range []bool{false, true, false} {
						_, err := svc.VerifyAccess(bg, tok, req.String(), authz.VerifyOptions{NoCache: noCache})
						if err != nil && !errors.Is(err, authz.ErrPermissionDenied) {
							t.Fatal(err)
						}
						if got := err == nil; got != want {
							t.Errorf("graph %d step %d: %s (no cache %v) allowed = %v, oracle says %v", g, step, req, noCache, got, want)
						}
					}
				}
			}
		}
	}
}

// oracleClosure resolves subject's base permissions from the raw grants
// in the store, depth first, visiting each resource once.
func oracleClosure(t *testing.T, svc *authz.Service, subject string) []authz.Permission {
	seen := map[string]bool{}
	var base []authz.Permission
	var visit func(string)
	visit = func(n string) {
		if seen[n] {
			return
		}
		seen[n] = true
		held, err := svc.ListPermissions(bg, n, false, false)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range held {
			g, err := authz.ParseGrant(s)
			if err != nil {
				t.Fatal(err)
			}
			if g.IsRole() {
				visit(g.Resource)
			} else {
				base = append(base, g.Permission())
			}
		}
	}
	visit(subject)
	return base
}
