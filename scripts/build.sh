#!/usr/bin/env bash
# Builds the static binary exactly as the Dockerfile does.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${version}" -o "${OUT:-portcullis}" ./cmd/portcullis
