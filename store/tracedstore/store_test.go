package tracedstore_test

import (
	"context"
	"errors"
	"testing"

	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/store/etcdtest"
	"github.com/portcullis/portcullis/store/storetest"
	"github.com/portcullis/portcullis/store/tracedstore"
)

func TestMain(m *testing.M) { etcdtest.Main(m) }

// TestConformance runs the store contract through the decorator: tracing
// must not change what any method does.
func TestConformance(t *testing.T) {
	endpoints := etcdtest.SharedEmbedded(t)
	tp := sdktrace.NewTracerProvider()
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	storetest.RunAll(t, func(t *testing.T) authz.Store {
		return tracedstore.New(etcdtest.NewStore(t, endpoints), tp.Tracer("test"))
	})
}

func TestSpansAreChildrenOfTheCaller(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	st := tracedstore.New(etcdtest.NewStore(t, etcdtest.SharedEmbedded(t)), tp.Tracer("test"))

	ctx, parent := tp.Tracer("test").Start(context.Background(), "decision")
	if _, err := st.AddGrant(ctx, "users/u1", "projects/p#read"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.User(ctx, "nobody"); !errors.Is(err, authz.ErrNotFound) {
		t.Fatalf("User: %v", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := st.Users(cancelled); err == nil {
		t.Fatal("Users on a cancelled context succeeded")
	}
	parent.End()

	spans := rec.Ended()
	byName := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range spans {
		byName[s.Name()] = s
	}
	for _, name := range []string{"store.AddGrant", "store.User", "store.Users"} {
		s, ok := byName[name]
		if !ok {
			t.Fatalf("no span %s among %d", name, len(spans))
		}
		if s.Parent().SpanID() != parent.SpanContext().SpanID() || s.SpanContext().TraceID() != parent.SpanContext().TraceID() {
			t.Errorf("%s is not a child of the caller's span", name)
		}
	}
	if got := byName["store.User"].Status().Code; got == codes.Error {
		t.Errorf("not found marked as a failed call")
	}
	if got := byName["store.Users"].Status().Code; got != codes.Error {
		t.Errorf("failed call has status %v", got)
	}
}
