package etcdtest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// process is a running etcd binary.
type process struct {
	cmd       *exec.Cmd
	exited    chan struct{} // closed when the process has exited
	log       *SyncBuffer
	endpoints []string
	stopOnce  sync.Once
}

// startProcess starts bin with its data in dir and waits until it serves
// reads. A start that loses a race for its ports is retried on new ones.
func startProcess(ctx context.Context, bin, dir string) (*process, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var err error
	for range 3 {
		var p *process
		if p, err = tryProcess(ctx, bin, dir); err == nil {
			return p, nil
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, err
}

func tryProcess(ctx context.Context, bin, dir string) (*process, error) {
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	client := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	peer := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	p := &process{
		exited:    make(chan struct{}),
		log:       new(SyncBuffer),
		endpoints: []string{client},
	}
	// Not exec.CommandContext: the process must outlive ctx, which only
	// bounds the start.
	p.cmd = exec.Command(bin,
		"--name=etcdtest",
		"--data-dir="+dir+"/data", // fresh per attempt: a failed attempt may leave a WAL behind
		"--listen-client-urls="+client,
		"--advertise-client-urls="+client,
		"--listen-peer-urls="+peer,
		"--initial-advertise-peer-urls="+peer,
		"--initial-cluster=etcdtest="+peer,
		// Portcullis writes a user's deletion as one transaction; etcd's
		// default of 128 operations is too small for that.
		"--max-txn-ops=10000",
		"--experimental-watch-progress-notify-interval="+ProgressNotifyInterval.String(),
		"--logger=zap",
		"--log-level=error",
		"--log-outputs=stderr",
	)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	p.cmd.SysProcAttr = procAttr()
	if err := os.RemoveAll(dir + "/data"); err != nil {
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	go func() {
		p.cmd.Wait()
		close(p.exited)
	}()
	if err := p.waitReady(ctx); err != nil {
		p.stop()
		return nil, describe(err, p.log)
	}
	return p, nil
}

// waitReady polls until etcd answers a linearizable read, which needs an
// elected leader, not just an open port.
func (p *process) waitReady(ctx context.Context) error {
	c, err := clientv3.New(clientv3.Config{Endpoints: p.endpoints, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer c.Close()
	for {
		rctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		_, err := c.Get(rctx, "etcdtest-ready")
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-p.exited:
			return errExited
		case <-ctx.Done():
			return fmt.Errorf("etcd not ready: %w (last error: %v)", ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stop terminates etcd and waits for it: SIGTERM lets it close its files,
// SIGKILL follows if it hangs.
func (p *process) stop() {
	p.stopOnce.Do(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(5 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
}

// freePorts returns n distinct loopback ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		defer l.Close() // held until all ports are picked, so they differ
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// SyncBuffer is a bytes.Buffer safe for the concurrent writes of a
// process's stdout and stderr and reads by the test; tests of other
// processes (the portcullis binary) use it too.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
