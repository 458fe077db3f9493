#!/usr/bin/env bash
# Runs one fuzz target for a while: fuzz/run.sh payload 600
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`) and a nightly
# toolchain (`rustup toolchain install nightly`). New inputs are kept in
# fuzz/corpus/<target> (ignored by git); crashes land in fuzz/artifacts.
set -euo pipefail
target="${1:?target: envelope, payload or entry}"
seconds="${2:-600}"
cd "$(dirname "$0")"
mkdir -p "corpus/$target" "seeds/$target"
exec cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
  -dict=custody.dict -max_total_time="$seconds" -print_final_stats=1
