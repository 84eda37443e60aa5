package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// etcdProcess is an external etcd (Debian's etcd-server) on loopback, with
// its data in a temporary directory, for the modes that must write to the
// store from this process while Portcullis children read it.
type etcdProcess struct {
	cmd      *exec.Cmd
	dir      string
	endpoint string
	log      *syncBuffer
	done     chan struct{}
}

// startEtcd starts the etcd on PATH and waits until it serves
// linearizable reads.
func startEtcd(ctx context.Context) (*etcdProcess, error) {
	return startEtcdOn(ctx, nil)
}

// startEtcdOn is startEtcd on the CPUs cpus (nil: anywhere), started
// through taskset.
func startEtcdOn(ctx context.Context, cpus cpuSet) (*etcdProcess, error) {
	bin, err := exec.LookPath("etcd")
	if err != nil {
		return nil, fmt.Errorf("etcd not on PATH (scripts/install-test-deps.sh installs etcd-server): %w", err)
	}
	dir, err := os.MkdirTemp("", "portcullis-loadtest-etcd-")
	if err != nil {
		return nil, err
	}
	ports, err := freePorts(2)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	client := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	peer := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	p := &etcdProcess{dir: dir, endpoint: client, log: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = tasksetCommand(cpus, bin,
		"--name=loadtest",
		"--data-dir="+filepath.Join(dir, "data"),
		"--listen-client-urls="+client,
		"--advertise-client-urls="+client,
		"--listen-peer-urls="+peer,
		"--initial-advertise-peer-urls="+peer,
		"--initial-cluster=loadtest="+peer,
		// As `portcullis serve` documents for production: a user's
		// deletion is one transaction, larger than etcd's default 128 ops.
		"--max-txn-ops=10000",
		// 1M grants with their reverse index and history exceed the
		// default 2 GiB quota before compaction; 8 GiB is etcd's
		// documented maximum recommendation.
		"--quota-backend-bytes="+strconv.Itoa(8<<30),
		// etcd 3.4 (Debian's) answers watch progress requests unsafely,
		// so Portcullis relies on these periodic notifications to know its
		// watch is current; docs/etcd-layout.md asks operators for this.
		"--experimental-watch-progress-notify-interval=500ms",
		"--logger=zap", "--log-level=error", "--log-outputs=stderr",
	)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{client}, Logger: zap.NewNop()})
	if err != nil {
		p.stop()
		return nil, err
	}
	defer c.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		rctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		_, err := c.Get(rctx, "loadtest-ready")
		cancel()
		if err == nil && cpus != nil {
			if err := checkAffinity(p.pid(), cpus); err != nil {
				p.stop()
				return nil, fmt.Errorf("etcd: %w", err)
			}
		}
		if err == nil {
			return p, nil
		}
		select {
		case <-p.done:
			p.stop()
			return nil, fmt.Errorf("etcd exited: %s", p.log.String())
		case <-ctx.Done():
			p.stop()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("etcd not ready after 30s: %w\n%s", err, p.log.String())
		}
	}
}

func (p *etcdProcess) pid() int { return p.cmd.Process.Pid }

// stop terminates etcd (SIGTERM, then SIGKILL after 10s) and removes its
// data.
func (p *etcdProcess) stop() {
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	os.RemoveAll(p.dir)
}

// dbSize is the size of etcd's backend database file as Status reports it,
// and the part of it in use.
func dbSize(ctx context.Context, c *clientv3.Client, endpoint string) (size, inUse int64, err error) {
	st, err := c.Status(ctx, endpoint)
	if err != nil {
		return 0, 0, fmt.Errorf("etcd status: %w", err)
	}
	return st.DbSize, st.DbSizeInUse, nil
}

// freePorts returns n distinct loopback ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, errors.Join(errors.New("find a free port"), err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// kvCalls is how many ranges and transactions etcd's MVCC store has seen,
// from etcd_mvcc_range_total and etcd_mvcc_txn_total on its /metrics; the
// difference across a phase,
// per decision, says how often Portcullis had to read the store (a cache
// miss), independently of Portcullis's own bookkeeping.
func (p *etcdProcess) kvCalls(ctx context.Context) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", p.endpoint+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("etcd metrics: %w", err)
	}
	defer resp.Body.Close()
	var n float64
	found := false
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "etcd_mvcc_range_total ") && !strings.HasPrefix(line, "etcd_mvcc_txn_total ") {
			continue
		}
		f, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			return 0, fmt.Errorf("etcd metrics: %q", line)
		}
		n += f
		found = true
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	if !found {
		return 0, errors.New("etcd metrics: no etcd_mvcc_range_total or etcd_mvcc_txn_total")
	}
	return int64(n), nil
}
