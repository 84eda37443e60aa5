package accesslog

import (
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// Writer collects whole lines in memory and writes them to an io.Writer
// from one background goroutine, so that a request never waits for a
// write system call. When the buffer is full (the destination is slower
// than the traffic) lines are dropped and counted, never blocking the
// caller.
type Writer struct {
	out      io.Writer
	limit    int
	interval time.Duration

	mu     sync.Mutex
	buf    []byte // lines waiting to be written
	spare  []byte // the other buffer, swapped in at each flush
	closed bool

	kick    chan struct{} // wakes the flusher early when buf is half full
	done    chan struct{} // closed by Close: the flusher's way to end
	stopped chan struct{} // closed by the flusher when it has ended
	dropped atomic.Uint64
	werr    atomic.Pointer[error]
}

// Defaults of NewWriter.
const (
	DefaultBufferBytes   = 1 << 20
	DefaultFlushInterval = 100 * time.Millisecond
)

// NewWriter starts a Writer that flushes to out every interval, and
// earlier when half of bufferBytes is used. Zero values take the
// defaults. Close ends its goroutine.
func NewWriter(out io.Writer, bufferBytes int, interval time.Duration) *Writer {
	if bufferBytes <= 0 {
		bufferBytes = DefaultBufferBytes
	}
	if interval <= 0 {
		interval = DefaultFlushInterval
	}
	w := &Writer{
		out: out, limit: bufferBytes, interval: interval,
		buf: make([]byte, 0, bufferBytes), spare: make([]byte, 0, bufferBytes),
		kick: make(chan struct{}, 1), done: make(chan struct{}), stopped: make(chan struct{}),
	}
	go w.run()
	return w
}

// WriteLine queues a copy of line (which should end with '\n'). It
// reports false when the line was dropped: the buffer is full or the
// Writer is closed.
func (w *Writer) WriteLine(line []byte) bool {
	w.mu.Lock()
	if w.closed || len(w.buf)+len(line) > w.limit {
		w.mu.Unlock()
		w.dropped.Add(1)
		return false
	}
	w.buf = append(w.buf, line...)
	half := len(w.buf) >= w.limit/2
	w.mu.Unlock()
	if half {
		select {
		case w.kick <- struct{}{}:
		default:
		}
	}
	return true
}

// Dropped is the number of lines dropped so far.
func (w *Writer) Dropped() uint64 { return w.dropped.Load() }

// Close writes what is buffered, stops the background goroutine and
// returns the first write error seen, if any. Lines written after Close
// are dropped. Close is idempotent.
func (w *Writer) Close() error {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		close(w.done)
	}
	w.mu.Unlock()
	<-w.stopped
	if p := w.werr.Load(); p != nil {
		return *p
	}
	return nil
}

func (w *Writer) run() {
	defer close(w.stopped)
	t := time.NewTicker(w.interval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-w.kick:
		case <-w.done:
			w.flush()
			return
		}
		w.flush()
	}
}

// flush swaps the buffers under the lock and writes outside it, so that
// requests keep appending while the destination is slow. Only the
// flusher goroutine calls it.
func (w *Writer) flush() {
	w.mu.Lock()
	out := w.buf
	w.buf = w.spare[:0]
	w.mu.Unlock()
	if len(out) > 0 {
		if _, err := w.out.Write(out); err != nil {
			w.werr.CompareAndSwap(nil, &err)
		}
	}
	w.spare = out[:0] // only this goroutine touches spare
}
