#!/bin/sh
# Installs what scripts/bench.sh needs beyond the Go toolchain (Debian/Ubuntu):
# wrk, the load generator the harness prefers because it takes less of a
# small machine's CPU than a Go client. Not part of the CI test path.
# Idempotent, like the test dependencies it shares the installer with.
set -eu
exec sh "$(dirname "$0")/install-test-deps.sh" wrk
