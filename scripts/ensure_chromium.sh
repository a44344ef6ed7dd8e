#!/usr/bin/env bash
# Installs Debian's chromium and chromium-driver for the browser tests when either is missing.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
install() {
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver
}
# The package lists may be missing or stale on a new machine: refresh them only if the install needs it.
if ! install; then
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
  install
fi
/usr/bin/chromium --version
/usr/bin/chromedriver --version
