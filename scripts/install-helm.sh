#!/usr/bin/env bash
# Installs the pinned helm and prints its path. Helm is built from its Go
# module (the Go module proxy is the registry CI reaches). The binary is kept
# in the user's cache directory, outside the work tree, so every later run
# and every fresh clone on the same machine finds it at once; the first build
# takes a few minutes.
set -euo pipefail
HELM_VERSION=${HELM_VERSION:-v3.22.0}
bin_dir=${HELM_BIN_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/portcullis/helm-$HELM_VERSION}
helm="$bin_dir/helm"
if [[ ! -x "$helm" ]]; then
	mkdir -p "$bin_dir"
	echo "building helm $HELM_VERSION into $bin_dir (once)" >&2
	# Run outside any module, so helm's dependencies never touch go.mod.
	(cd "$bin_dir" && GOBIN="$bin_dir" go install "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}") >&2
fi
echo "$helm"
