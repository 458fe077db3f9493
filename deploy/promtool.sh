#!/usr/bin/env bash
# Provides promtool, to check deploy/prometheus/alerts.yml: the one from
# Debian's prometheus package, unpacked into deploy/.bin (the package is
# downloaded, not installed: no service is started). Prints its path.
set -euo pipefail
cd "$(dirname "$0")"
bin="$PWD/.bin/promtool"
if command -v promtool >/dev/null 2>&1; then command -v promtool; exit 0; fi
if [ ! -x "$bin" ]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  as_root=""
  [ "$(id -u)" -eq 0 ] || as_root="sudo"
  (cd "$work" && apt-get download -qq prometheus >&2) \
    || { $as_root apt-get update -qq >&2 && (cd "$work" && apt-get download -qq prometheus >&2); }
  dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
  mkdir -p .bin
  install -m 0755 "$work/root/usr/bin/promtool" "$bin"
fi
echo "$bin"
