#!/usr/bin/env bash
# Builds the static binary exactly as the Dockerfile does: the go build line
# below and the Dockerfile's are the same text up to -o (deploy/build_test.go
# compares them). OUT names the output file, VERSION the stamped version.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
out=${OUT:-portcullis}
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o "$out" ./cmd/portcullis
