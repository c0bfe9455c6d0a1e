#!/usr/bin/env bash
# Debian's chromium and its matching chromedriver, for the browser tests (tests/e2e/test_browser_*.py).
# No browser download of its own: the distribution's packages, through apt-get, once.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null; then
  echo "chromium/chromedriver missing and not root: install Debian's chromium and chromium-driver" >&2
  exit 1
fi
SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
echo "▶ installing Debian's chromium and chromium-driver (browser tests)"
$SUDO apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null
