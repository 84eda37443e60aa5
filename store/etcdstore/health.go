package etcdstore

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// DefaultEndpointCheckInterval is how often a Store with several endpoints
// checks each one.
const DefaultEndpointCheckInterval = time.Second

// endpointChecker keeps the client's endpoint list to the members that
// answer. etcd's client balances requests round-robin over every endpoint
// and never stops using one whose process is frozen (a hung host, SIGSTOP):
// the TCP connection stays open, so every third request and any watch
// stream on that member wait for their timeouts, and gRPC's keepalive
// cannot notice in less than ten seconds. A member is left out while it
// fails a Status call within the interval or reports no leader, and taken
// back as soon as it answers again. Removing it also breaks the streams it
// held, and the client resumes them on another member.
type endpointChecker struct {
	client   *clientv3.Client
	all      []string
	interval time.Duration
	log      *slog.Logger
	cancel   context.CancelFunc
	done     chan struct{}
}

func startEndpointChecker(client *clientv3.Client, endpoints []string, interval time.Duration, log *slog.Logger) *endpointChecker {
	ctx, cancel := context.WithCancel(context.Background())
	c := &endpointChecker{client: client, all: slices.Clone(endpoints), interval: interval, log: log, cancel: cancel, done: make(chan struct{})}
	go c.run(ctx)
	return c
}

func (c *endpointChecker) stop() {
	c.cancel()
	<-c.done
}

func (c *endpointChecker) run(ctx context.Context) {
	defer close(c.done)
	current := c.all
	t := time.NewTicker(c.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		healthy := c.check(ctx)
		if ctx.Err() != nil {
			return
		}
		if len(healthy) == 0 {
			// No member answers: keep them all, so the client reconnects
			// to whichever comes back first.
			healthy = c.all
		}
		if slices.Equal(healthy, current) {
			continue
		}
		c.log.Warn("etcd store: endpoints in use changed", "in_use", healthy, "configured", c.all)
		c.client.SetEndpoints(healthy...)
		current = healthy
	}
}

// check asks every endpoint for its status at once, each bounded by the
// interval, and returns those that answered with a leader, in configured
// order.
func (c *endpointChecker) check(ctx context.Context) []string {
	ok := make([]bool, len(c.all))
	var wg sync.WaitGroup
	for i, ep := range c.all {
		wg.Go(func() {
			sctx, cancel := context.WithTimeout(ctx, c.interval)
			defer cancel()
			st, err := c.client.Status(sctx, ep)
			ok[i] = err == nil && st.Leader != 0
		})
	}
	wg.Wait()
	var healthy []string
	for i, ep := range c.all {
		if ok[i] {
			healthy = append(healthy, ep)
		}
	}
	return healthy
}
