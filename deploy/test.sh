#!/usr/bin/env bash
# README's second command: installs nats-server, the example producer's
# Python packages and Debian's chromium if needed, then runs every test (unit and end to end,
# against a real nats-server the tests start).
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/nats-server.sh >/dev/null
# The example Python producer's test needs its interpreter and packages.
CUSTODY_PYTHON="$(deploy/python.sh)"
# The page test drives a real headless browser.
CUSTODY_CHROMIUM="$(deploy/chromium.sh)"
export CUSTODY_PYTHON CUSTODY_CHROMIUM
cargo test --workspace --locked "$@"
