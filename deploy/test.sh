#!/usr/bin/env bash
# README's second command: installs nats-server and the example producer's
# Python packages if needed, then runs every test (unit and end to end,
# against a real nats-server the tests start).
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/nats-server.sh >/dev/null
# The example Python producer's test needs its interpreter and packages.
CUSTODY_PYTHON="$(deploy/python.sh)"
export CUSTODY_PYTHON
cargo test --workspace --locked "$@"
