package etcdlog

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"

	"go.uber.org/zap"
)

func TestNew(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	stopping := new(atomic.Bool)
	lg := New(l, slog.LevelWarn, stopping).With(zap.String("component", "etcd"))

	lg.Info("routine step")
	lg.Warn("slow apply", zap.Duration("took", 0), zap.Error(errors.New("disk")))
	out := buf.String()
	if strings.Contains(out, "routine step") {
		t.Errorf("info entry passed a warn threshold: %s", out)
	}
	for _, want := range []string{"level=WARN", `msg="slow apply"`, "component=etcd", "error=disk", "took=0s"} {
		if !strings.Contains(out, want) {
			t.Errorf("output %q lacks %q", out, want)
		}
	}

	// While stopping, etcd's shutdown errors are demoted below the threshold.
	buf.Reset()
	stopping.Store(true)
	lg.Error("accept tcp: use of closed network connection")
	if buf.Len() != 0 {
		t.Errorf("error while stopping was logged: %s", buf.String())
	}
}

func TestNewDefaults(t *testing.T) {
	var buf bytes.Buffer
	old := slog.Default()
	defer slog.SetDefault(old)
	slog.SetDefault(slog.New(slog.NewTextHandler(&buf, nil)))
	lg := New(nil, nil, nil)
	lg.Warn("warning")
	lg.Error("failure")
	if out := buf.String(); strings.Contains(out, "warning") || !strings.Contains(out, "failure") {
		t.Errorf("default threshold should be error: %q", out)
	}
}
