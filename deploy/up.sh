#!/usr/bin/env bash
# README's first command: everything on this machine with embedded defaults.
# Installs nats-server if needed, builds custody, and runs `custody up` on a
# data folder (default ./data): local NATS, the ledger, the demo chain.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/nats-server.sh >/dev/null
cargo build --release --quiet
exec target/release/custody up --data "${CUSTODY_DATA:-data}" "$@"
