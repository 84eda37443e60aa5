package storetest

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portcullis/portcullis/authz"
)

func testLoginAttempts(t *testing.T, newStore func(*testing.T) authz.Store) {
	t.Run("limit, accounts apart, return", func(t *testing.T) {
		s, ctx := newStore(t), t.Context()
		var ids []string
		for i := range 3 {
			id, ok, _, err := s.TakeLoginAttempt(ctx, "user-a", 3, time.Hour)
			if err != nil || !ok || id == "" {
				t.Fatalf("attempt %d: id=%q ok=%v err=%v, want counted", i+1, id, ok, err)
			}
			ids = append(ids, id)
		}
		_, ok, retryAt, err := s.TakeLoginAttempt(ctx, "user-a", 3, time.Hour)
		if err != nil || ok {
			t.Fatalf("attempt over the limit: ok=%v err=%v, want refused", ok, err)
		}
		if d := time.Until(retryAt); d < 59*time.Minute || d > time.Hour+time.Second {
			t.Errorf("retry in %v, want about an hour", d)
		}
		if _, ok, _, err := s.TakeLoginAttempt(ctx, "user-b", 3, time.Hour); err != nil || !ok {
			t.Fatalf("another account: ok=%v err=%v, want its own budget", ok, err)
		}
		if err := s.ReturnLoginAttempt(ctx, "user-a", ids[1]); err != nil {
			t.Fatal(err)
		}
		if _, ok, _, err := s.TakeLoginAttempt(ctx, "user-a", 3, time.Hour); err != nil || !ok {
			t.Fatalf("after a return: ok=%v err=%v, want one more attempt", ok, err)
		}
		if _, ok, _, _ := s.TakeLoginAttempt(ctx, "user-a", 3, time.Hour); ok {
			t.Fatal("a return gave back more than one attempt")
		}
		if err := s.ReturnLoginAttempt(ctx, "user-a", ids[1]); err != nil {
			t.Fatalf("returning an attempt twice: %v", err)
		}
		if _, ok, _, _ := s.TakeLoginAttempt(ctx, "user-a", 3, time.Hour); ok {
			t.Fatal("returning an attempt twice gave back two")
		}
		if err := s.ReturnLoginAttempt(ctx, "nobody", "0123456789abcdef"); err != nil {
			t.Fatalf("return of an unknown attempt: %v", err)
		}
	})

	t.Run("concurrent attempts never exceed the limit", func(t *testing.T) {
		s, ctx := newStore(t), t.Context()
		const limit, n = 7, 40
		var counted atomic.Int32
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				_, ok, _, err := s.TakeLoginAttempt(ctx, "user-c", limit, time.Hour)
				if err != nil {
					t.Error(err)
				}
				if ok {
					counted.Add(1)
				}
			})
		}
		wg.Wait()
		if got := counted.Load(); got != limit {
			t.Fatalf("%d of %d concurrent attempts were counted, want exactly %d", got, n, limit)
		}
	})

	t.Run("attempts expire after the window", func(t *testing.T) {
		t.Parallel()
		s, ctx := newStore(t), t.Context()
		if _, ok, _, err := s.TakeLoginAttempt(ctx, "user-d", 1, time.Second); err != nil || !ok {
			t.Fatalf("first attempt: ok=%v err=%v", ok, err)
		}
		if _, ok, _, _ := s.TakeLoginAttempt(ctx, "user-d", 1, time.Second); ok {
			t.Fatal("second attempt in a window of one was counted")
		}
		eventually(t, 10*time.Second, "window of one second ends", func() (bool, error) {
			_, ok, _, err := s.TakeLoginAttempt(ctx, "user-d", 1, time.Second)
			return ok, err
		})
	})
}
