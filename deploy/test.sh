#!/usr/bin/env bash
# README's second command: installs nats-server if needed, then runs every
# test (unit and end to end, against a real nats-server the tests start).
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/nats-server.sh >/dev/null
cargo test --workspace --locked "$@"
