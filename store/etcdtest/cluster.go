package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Cluster is a multi-member etcd cluster of real etcd processes on
// loopback, for tests that kill, pause and restart members.
type Cluster struct {
	bin     string
	members []*Member
}

// Member is one etcd process of a Cluster. Its ports and data directory
// stay the same across restarts, as a real member's would.
type Member struct {
	Name           string
	client, peer   string
	dir            string
	initialCluster string
	mu             sync.Mutex
	proc           *exec.Cmd
	exited         chan struct{}
	log            *SyncBuffer
	created        bool
}

// StartCluster starts an n-member cluster and waits until it has a leader
// and every member serves linearizable reads. Members are stopped when the
// test ends; a start that loses a race for its ports is retried.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	bin := binary(t, "etcd")
	var lastErr error
	for range 3 {
		c, err := tryCluster(bin, t.TempDir(), n)
		if err == nil {
			t.Cleanup(c.Stop)
			return c
		}
		lastErr = err
	}
	t.Fatalf("start a %d-member etcd cluster: %v", n, lastErr)
	return nil
}

func tryCluster(bin, dir string, n int) (*Cluster, error) {
	ports, err := freePorts(2 * n)
	if err != nil {
		return nil, err
	}
	c := &Cluster{bin: bin}
	var peers []string
	for i := range n {
		m := &Member{
			Name:   "m" + strconv.Itoa(i),
			client: "http://127.0.0.1:" + strconv.Itoa(ports[2*i]),
			peer:   "http://127.0.0.1:" + strconv.Itoa(ports[2*i+1]),
			dir:    filepath.Join(dir, "m"+strconv.Itoa(i)),
		}
		peers = append(peers, m.Name+"="+m.peer)
		c.members = append(c.members, m)
	}
	for _, m := range c.members {
		m.initialCluster = strings.Join(peers, ",")
		if err := m.start(bin); err != nil {
			c.Stop()
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, m := range c.members {
		if err := m.WaitReady(ctx); err != nil {
			c.Stop()
			return nil, describe(err, m.log)
		}
	}
	return c, nil
}

// start runs the member's process; the first start creates the cluster,
// later ones rejoin it from the data directory.
func (m *Member) start(bin string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	state := "new"
	if m.created {
		state = "existing"
	}
	if m.log == nil {
		m.log = new(SyncBuffer)
	}
	cmd := exec.Command(bin,
		"--name="+m.Name,
		"--data-dir="+m.dir,
		"--listen-client-urls="+m.client,
		"--advertise-client-urls="+m.client,
		"--listen-peer-urls="+m.peer,
		"--initial-advertise-peer-urls="+m.peer,
		"--initial-cluster="+m.initialCluster,
		"--initial-cluster-state="+state,
		"--initial-cluster-token=etcdtest",
		"--max-txn-ops=10000",
		"--experimental-watch-progress-notify-interval="+ProgressNotifyInterval.String(),
		// Loopback: elections in a few hundred milliseconds rather than
		// etcd's WAN-safe second.
		"--heartbeat-interval=50",
		"--election-timeout=500",
		"--logger=zap",
		"--log-level=error",
		"--log-outputs=stderr",
	)
	cmd.Stdout, cmd.Stderr = m.log, m.log
	cmd.SysProcAttr = procAttr()
	if err := os.MkdirAll(filepath.Dir(m.dir), 0o700); err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start etcd member %s: %w", m.Name, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	m.proc, m.exited, m.created = cmd, exited, true
	return nil
}

// Endpoints are the members' client URLs.
func (c *Cluster) Endpoints() []string {
	var eps []string
	for _, m := range c.members {
		eps = append(eps, m.client)
	}
	return eps
}

// Members lists the members in a stable order.
func (c *Cluster) Members() []*Member { return c.members }

// Endpoint is the member's client URL.
func (m *Member) Endpoint() string { return m.client }

// Log is what the member's process printed.
func (m *Member) Log() string { return m.log.String() }

// Leader finds the current leader by asking each reachable member.
func (c *Cluster) Leader(ctx context.Context) (*Member, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), Logger: zap.NewNop(), DialTimeout: 2 * time.Second})
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	var errs []error
	for _, m := range c.members {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := cli.Status(sctx, m.client)
		cancel()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if st.Leader == 0 {
			continue
		}
		for _, cand := range c.members {
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			cst, err := cli.Status(cctx, cand.client)
			cancel()
			if err == nil && cst.Header.MemberId == st.Leader {
				return cand, nil
			}
		}
	}
	return nil, fmt.Errorf("no leader found: %w", errors.Join(errs...))
}

// Kill ends the member with SIGKILL, as a crash would.
func (m *Member) Kill() { m.signalAndWait(syscall.SIGKILL) }

// Stop ends the member with SIGTERM (SIGKILL if it hangs).
func (m *Member) Stop() {
	m.mu.Lock()
	proc, exited := m.proc, m.exited
	m.mu.Unlock()
	if proc == nil {
		return
	}
	_ = proc.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		_ = proc.Process.Kill()
		<-exited
	}
}

func (m *Member) signalAndWait(sig syscall.Signal) {
	m.mu.Lock()
	proc, exited := m.proc, m.exited
	m.mu.Unlock()
	if proc == nil {
		return
	}
	_ = proc.Process.Signal(sig)
	<-exited
}

// Pause stops the member's process (SIGSTOP): it holds its ports and
// answers nothing, like a member on a frozen host.
func (m *Member) Pause() error { return m.signal(syscall.SIGSTOP) }

// Resume continues a paused member (SIGCONT).
func (m *Member) Resume() error { return m.signal(syscall.SIGCONT) }

func (m *Member) signal(sig syscall.Signal) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.proc == nil {
		return errors.New("member not started")
	}
	return m.proc.Process.Signal(sig)
}

// Restart starts a stopped or killed member again on its ports and data.
func (c *Cluster) Restart(ctx context.Context, m *Member) error {
	m.mu.Lock()
	exited := m.exited
	m.mu.Unlock()
	select {
	case <-exited:
	default:
		return fmt.Errorf("member %s is still running", m.Name)
	}
	if err := m.start(c.bin); err != nil {
		return err
	}
	return m.WaitReady(ctx)
}

// WaitReady polls until the member answers a linearizable read, which
// needs a leader and this member caught up with it.
func (m *Member) WaitReady(ctx context.Context) error {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{m.client}, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	m.mu.Lock()
	exited := m.exited
	m.mu.Unlock()
	for {
		rctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		_, err := cli.Get(rctx, "etcdtest-ready")
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return errExited
		case <-ctx.Done():
			return fmt.Errorf("etcd member %s not ready: %w (last error: %v)", m.Name, ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop ends every member (resuming paused ones first, so SIGTERM lands).
func (c *Cluster) Stop() {
	var wg sync.WaitGroup
	for _, m := range c.members {
		_ = m.Resume()
		wg.Go(m.Stop)
	}
	wg.Wait()
}
