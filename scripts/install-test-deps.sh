#!/bin/sh
# Installs the system packages Portcullis' tests need (Debian/Ubuntu).
#
# Idempotent: packages already installed are left alone, and the package
# lists are only refreshed when something is missing. Run as root (or with
# sudo) before `go test ./...`.
set -eu

# Extend this list as tests gain dependencies (nginx, chromium, prometheus
# for promtool, ...). One Debian package name per entry.
PACKAGES="
etcd-server
etcd-client
util-linux
nginx
chromium
prometheus
"

# Other scripts (scripts/bench-deps.sh) pass their own package list.
if [ "$#" -gt 0 ]; then
	PACKAGES="$*"
fi

missing=""
for pkg in $PACKAGES; do
	if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
		missing="$missing $pkg"
	fi
done

if [ -z "$missing" ]; then
	echo "install-test-deps: all test dependencies are installed"
	exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
	SUDO="sudo"
fi

echo "install-test-deps: installing$missing"
# Through env, because sudo resets the environment.
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update
# shellcheck disable=SC2086 # $missing is a list of package names
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing

# The etcd-server package starts an etcd service on the default ports; the
# tests start their own on free ports and do not need it.
echo "install-test-deps: done"
