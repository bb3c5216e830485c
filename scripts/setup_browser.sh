#!/usr/bin/env bash
# Install the headless browser the front-end tests (tests/browser/) drive: Debian's `chromium`
# plus a font, with apt-get, when it is missing. Idempotent: instant when chromium is present.
# Exit codes: 0 chromium ready (its path on stdout's last line), 3 cannot install (no apt-get,
# not root and no sudo, or apt failed: the browser tests then skip with a line saying so).
set -uo pipefail

find_chromium() {
  for c in "${REALIZ3D_CHROMIUM:-}" chromium chromium-browser google-chrome; do
    [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 && { command -v "$c"; return 0; }
  done
  return 1
}

if path=$(find_chromium); then
  echo "$path"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "WARNING: chromium is not installed and there is no apt-get here: browser tests will be skipped" >&2
  exit 3
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "WARNING: chromium is not installed and installing it needs root: browser tests will be skipped" >&2
    exit 3
  fi
fi

echo "Installing Debian's chromium for the browser tests (once)..." >&2
export DEBIAN_FRONTEND=noninteractive
# fonts-liberation: metric-compatible sans/serif for the page text (DejaVu alone renders fine too)
pkgs="chromium fonts-liberation"
if ! $SUDO apt-get install -y --no-install-recommends $pkgs >/tmp/realiz3d-apt.log 2>&1; then
  # the package lists may be stale or absent (fresh container): refresh once and retry
  if ! { $SUDO apt-get update >>/tmp/realiz3d-apt.log 2>&1 &&
         $SUDO apt-get install -y --no-install-recommends $pkgs >>/tmp/realiz3d-apt.log 2>&1; }; then
    echo "WARNING: apt-get could not install chromium (log: /tmp/realiz3d-apt.log): browser tests will be skipped" >&2
    tail -5 /tmp/realiz3d-apt.log >&2
    exit 3
  fi
fi

if path=$(find_chromium); then
  echo "$path"
  exit 0
fi
echo "WARNING: chromium was installed but is not on PATH: browser tests will be skipped" >&2
exit 3
