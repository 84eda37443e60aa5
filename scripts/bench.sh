#!/usr/bin/env bash
# Every performance figure of docs/PERFORMANCE.md in one command: the Go
# benchmarks of the decision engine and the forward-auth handler, then the
# load harness (cmd/loadtest). Everything is printed; nothing is asserted.
# Not part of CI: it takes about 10 minutes (plus the soak, when asked for)
# and loads 2 million keys into an embedded etcd for the 1M-grant store.
#
# Knobs (environment):
#   BENCH_COUNT=5                 -count of the Go benchmarks
#   PORTCULLIS_BENCH_GRANTS=1000,100000,1000000
#                                 store sizes of BenchmarkVerifyStoreSize
#   BENCH_STORE_COUNT=1           -count of BenchmarkVerifyStoreSize (each
#                                 count loads every size again)
#   BENCH_STORE_TIMEOUT=40m       bound on the store-size benchmark
#   LOADTEST_DURATION=20s         measured time per load target
#   LOADTEST_GEN=                 go or wrk (default: wrk when installed)
#   LOADTEST_SOAK=0               e.g. 5m: RSS of Portcullis under a long run
#   BENCH_SKIP_GO=1 / BENCH_SKIP_LOAD=1
set -euo pipefail
cd "$(dirname "$0")/.."

count=${BENCH_COUNT:-5}
grants=${PORTCULLIS_BENCH_GRANTS:-1000,100000,1000000}
store_count=${BENCH_STORE_COUNT:-1}
store_timeout=${BENCH_STORE_TIMEOUT:-40m}

echo "== machine"
echo "cpus: $(nproc); $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); memory: $(free -m | awk '/^Mem:/ {print $2 " MiB total, " $7 " MiB available"}')"
go version
echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (dirty tree)')"

if [ -z "${BENCH_SKIP_GO:-}" ]; then
  echo
  echo "== go test -bench: decision engine (authz), count $count"
  go test -run '^$' -bench 'BenchmarkVerifyWarm|BenchmarkVerifyCold|BenchmarkRoleResolution' -benchmem -count "$count" -timeout 30m ./authz/

  echo
  echo "== go test -bench: forward-auth handler in process (proxy), count $count"
  go test -run '^$' -bench . -benchmem -count "$count" -timeout 10m ./proxy/

  echo
  echo "== go test -bench: store size $grants, count $store_count (bounded by $store_timeout)"
  # timeout(1) bounds the whole run, including building the test binary;
  # go test's own -timeout panics with every goroutine's stack.
  PORTCULLIS_BENCH_GRANTS="$grants" timeout --signal=INT --kill-after=1m "$store_timeout" \
    go test -run '^$' -bench 'BenchmarkVerifyStoreSize' -benchmem -count "$store_count" -timeout 0 ./authz/ ||
    echo "store-size benchmark failed or ran out of $store_timeout"
fi

if [ -z "${BENCH_SKIP_LOAD:-}" ]; then
  gen=${LOADTEST_GEN:-}
  if [ -z "$gen" ]; then
    if command -v wrk >/dev/null 2>&1; then gen=wrk; else
      echo "(wrk not installed: scripts/bench-deps.sh installs it; using the Go load generator)"
      gen=go
    fi
  fi
  echo
  echo "== load harness (generator $gen)"
  go build -o "${TMPDIR:-/tmp}/portcullis-loadtest" ./cmd/loadtest
  "${TMPDIR:-/tmp}/portcullis-loadtest" -duration "${LOADTEST_DURATION:-20s}" -gen "$gen" -soak "${LOADTEST_SOAK:-0}"
fi
