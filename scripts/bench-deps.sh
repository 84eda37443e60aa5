#!/bin/sh
# Installs what scripts/bench.sh needs beyond the Go toolchain (Debian/Ubuntu):
# wrk, the load generator the harness prefers because it takes less of a
# small machine's CPU than a Go client. Not part of the CI test path.
#
# Idempotent: packages already installed are left alone, and the package
# lists are only refreshed when something is missing.
set -eu

PACKAGES="
wrk
"

missing=""
for pkg in $PACKAGES; do
	if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
		missing="$missing $pkg"
	fi
done

if [ -z "$missing" ]; then
	echo "bench-deps: all benchmark dependencies are installed"
	exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
	SUDO="sudo"
fi

echo "bench-deps: installing$missing"
# Through env, because sudo resets the environment.
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update
# shellcheck disable=SC2086 # $missing is a list of package names
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
echo "bench-deps: done"
