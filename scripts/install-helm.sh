#!/usr/bin/env bash
# Installs the pinned helm and prints its path. Helm is built from its Go
# module (the Go module proxy is the registry CI reaches), with the version
# stamps of helm's own release build, so that `helm version` and the default
# Kubernetes version (used by lint and client-side dry runs) are a release's.
# The binary is kept in the user's cache directory, outside the work tree,
# so every later run and every fresh clone on the same machine finds it at
# once; the first build takes a few minutes.
set -euo pipefail
HELM_VERSION=${HELM_VERSION:-v3.22.0}
# The Kubernetes minor version of helm's client-go (v0.37 for helm v3.22).
K8S_MINOR=${HELM_K8S_MINOR:-37}
bin_dir=${HELM_BIN_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/portcullis/helm-$HELM_VERSION}
helm="$bin_dir/helm"
if [[ -x "$helm" ]] && [[ "$("$helm" version --template '{{.Version}}' 2>/dev/null)" == "$HELM_VERSION" ]]; then
	echo "$helm"
	exit 0
fi
mkdir -p "$bin_dir"
echo "building helm $HELM_VERSION into $bin_dir (once)" >&2
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
	ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$K8S_MINOR"
done
# Run outside any module, so helm's dependencies never touch go.mod.
(cd "$bin_dir" && CGO_ENABLED=0 GOBIN="$bin_dir" go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}") >&2
echo "$helm"
