package main

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/portcullis/portcullis/authz"
)

// grantsPerUser is how many grants every bulk-loaded user holds: the two
// DefaultUserGrants plus eight project permissions. 100,000 users hold
// 1,000,000 grants.
const grantsPerUser = 10

// projectCount is how many distinct projects the users' grants spread over.
const projectCount = 10000

// userCreator is the part of authz.Store the loader writes users through.
type userCreator interface {
	CreateUser(ctx context.Context, u authz.UserRecord, grants []string) (authz.Revision, error)
}

// tokenIssuer is the part of authz.Service the loader issues API tokens
// through: the code path `POST /auth/tokens` ends in, minus HTTP.
type tokenIssuer interface {
	IssueToken(ctx context.Context, spec authz.TokenSpec) (string, authz.TokenInfo, authz.Revision, error)
}

// loadedUser is one bulk-loaded user and the secret of its API token.
type loadedUser struct {
	id, token string
	project   string // a project the user holds #write on
}

// bulkLoader seeds users, grants and API tokens through the store's and
// the service's own write methods, concurrently. Each user is one
// Store.CreateUser transaction (the user, its login id and its grants with
// their reverse index, exactly as Service.CreateUser writes them, minus the
// bcrypt hash: the users are technical users without a password) and one
// Service.IssueToken (one Store.CreateToken transaction). So the keys are
// exactly those the normal code paths write, and etcd batches the
// concurrent transactions into few raft entries.
type bulkLoader struct {
	users   userCreator
	tokens  tokenIssuer
	workers int
	loaded  []loadedUser
}

var lowerBase32 = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// userID is an id in authz's format: 10 random bytes in lower-case base32.
func userID() string {
	b := make([]byte, 10)
	_, _ = rand.Read(b)
	return lowerBase32.EncodeToString(b)
}

// userGrants returns the canonical grants of the i-th user and the project
// it holds #write on.
func userGrants(id string, i int) ([]string, string, error) {
	raw := authz.DefaultUserGrants(id)
	var first string
	for j := range grantsPerUser - len(raw) {
		p := fmt.Sprintf("projects/scale-%d", (i*(grantsPerUser-2)+j)%projectCount)
		if j == 0 {
			first = p
		}
		raw = append(raw, p+"#write")
	}
	out := make([]string, len(raw))
	for k, s := range raw {
		g, err := authz.ParseGrant(s)
		if err != nil {
			return nil, "", fmt.Errorf("grant %q: %w", s, err)
		}
		out[k] = g.String()
	}
	return out, first, nil
}

// loadTo creates users (each with its grants and one API token) until n
// users exist, reporting progress every 10,000.
func (b *bulkLoader) loadTo(ctx context.Context, n int) error {
	start := len(b.loaded)
	if n <= start {
		return nil
	}
	b.loaded = append(b.loaded, make([]loadedUser, n-start)...)
	var (
		next  atomic.Int64
		done  atomic.Int64
		first error
		once  sync.Once
		wg    sync.WaitGroup
	)
	next.Store(int64(start))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	fail := func(err error) {
		once.Do(func() { first = err })
		cancel()
	}
	t0 := time.Now()
	for range b.workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				u, err := b.loadOne(ctx, i)
				if err != nil {
					fail(fmt.Errorf("user %d: %w", i, err))
					return
				}
				b.loaded[i] = u
				if d := done.Add(1); d%10000 == 0 {
					progress("bulk load: %d/%d users (%.0f users/s)", start+int(d), n, float64(d)/time.Since(t0).Seconds())
				}
			}
		})
	}
	wg.Wait()
	if first != nil {
		b.loaded = b.loaded[:start]
		return first
	}
	return ctx.Err()
}

func (b *bulkLoader) loadOne(ctx context.Context, i int) (loadedUser, error) {
	id := userID()
	grants, project, err := userGrants(id, i)
	if err != nil {
		return loadedUser{}, err
	}
	rec := authz.UserRecord{
		ID:            id,
		Username:      fmt.Sprintf("scale-%d", i),
		TechnicalUser: true,
		CreatedAt:     time.Now().UTC().Truncate(time.Millisecond),
	}
	if _, err := b.users.CreateUser(ctx, rec, grants); err != nil {
		return loadedUser{}, err
	}
	tok, _, _, err := b.tokens.IssueToken(ctx, authz.TokenSpec{
		Subject: authz.UserSubject(id), Scopes: []string{"*#admin"}, Purpose: authz.PurposeUserAPI,
	})
	if err != nil {
		return loadedUser{}, err
	}
	return loadedUser{id: id, token: tok, project: project}, nil
}
