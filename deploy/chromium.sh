#!/usr/bin/env bash
# Provides a headless browser for the page test: Debian's chromium package,
# installed with apt-get (as root, or through sudo) when it is missing.
# Prints its path.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  as_root=""
  [ "$(id -u)" -eq 0 ] || as_root="sudo"
  $as_root apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq chromium >&2
fi
command -v chromium
