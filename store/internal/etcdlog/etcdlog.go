// Package etcdlog routes the zap logs of etcd's server and client libraries
// into a *slog.Logger, so that Portcullis has one log stream and one format.
package etcdlog

import (
	"cmp"
	"context"
	"log/slog"
	"slices"
	"sync/atomic"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// New returns a zap logger that writes every entry at or above min to l.
// A nil l means slog.Default(); a nil min means slog.LevelError, because etcd
// logs every routine step at info level and would drown Portcullis' own logs.
//
// While stopping (if not nil) is true, every entry is demoted to debug level:
// etcd reports each of its listeners closing during shutdown as an error.
func New(l *slog.Logger, min slog.Leveler, stopping *atomic.Bool) *zap.Logger {
	if l == nil {
		l = slog.Default()
	}
	if min == nil {
		min = slog.LevelError
	}
	if stopping == nil {
		stopping = new(atomic.Bool)
	}
	return zap.New(&core{h: l.Handler(), min: min, stopping: stopping})
}

// core is a zapcore.Core that hands entries to a slog.Handler.
type core struct {
	h        slog.Handler
	min      slog.Leveler
	stopping *atomic.Bool
	attrs    []slog.Attr
}

func (c *core) level(l zapcore.Level) slog.Level {
	if c.stopping.Load() {
		return slog.LevelDebug
	}
	return level(l)
}

func (c *core) Enabled(l zapcore.Level) bool {
	lvl := c.level(l)
	return lvl >= c.min.Level() && c.h.Enabled(context.Background(), lvl)
}

func (c *core) With(fields []zapcore.Field) zapcore.Core {
	return &core{h: c.h, min: c.min, stopping: c.stopping, attrs: append(slices.Clip(c.attrs), attrs(fields)...)}
}

func (c *core) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *core) Write(e zapcore.Entry, fields []zapcore.Field) error {
	r := slog.NewRecord(e.Time, c.level(e.Level), e.Message, 0)
	if e.LoggerName != "" {
		r.AddAttrs(slog.String("logger", e.LoggerName))
	}
	r.AddAttrs(c.attrs...)
	r.AddAttrs(attrs(fields)...)
	return c.h.Handle(context.Background(), r)
}

func (c *core) Sync() error { return nil }

// attrs encodes zap fields with zap's own encoder, so every field type
// (errors, durations, objects) renders the way zap would render it.
func attrs(fields []zapcore.Field) []slog.Attr {
	if len(fields) == 0 {
		return nil
	}
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range fields {
		f.AddTo(enc)
	}
	out := make([]slog.Attr, 0, len(enc.Fields))
	for k, v := range enc.Fields {
		out = append(out, slog.Any(k, v))
	}
	// Map order is random; sorted keys keep log lines stable and diffable.
	slices.SortFunc(out, func(a, b slog.Attr) int { return cmp.Compare(a.Key, b.Key) })
	return out
}

func level(l zapcore.Level) slog.Level {
	switch {
	case l <= zapcore.DebugLevel:
		return slog.LevelDebug
	case l == zapcore.InfoLevel:
		return slog.LevelInfo
	case l == zapcore.WarnLevel:
		return slog.LevelWarn
	}
	return slog.LevelError
}
