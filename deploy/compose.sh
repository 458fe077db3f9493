#!/usr/bin/env bash
# Provides docker-compose to check deploy/compose.yaml (`config`: the file
# parsed and validated against the Compose specification; no engine is
# needed, none runs on CI's machines): Debian's docker-compose package,
# installed with apt-get (as root, or through sudo) when it is missing.
# Prints its path.
set -euo pipefail
if ! command -v docker-compose >/dev/null 2>&1; then
  as_root=""
  [ "$(id -u)" -eq 0 ] || as_root="sudo"
  DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq docker-compose >&2 \
    || { $as_root apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq docker-compose >&2; }
fi
command -v docker-compose
