#!/usr/bin/env bash
# A project-local Python with the custody-client package (clients/python)
# and its dependencies (examples/requirements.txt, pinned) and the C2SP tools the interop test
# uses (deploy/interop-requirements.txt), in deploy/.venv. Prints its python.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/../examples/requirements.txt" >&2
# The Python client package (clients/python), as a producer installs it.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall "$here/../clients/python" >&2
# The C2SP tools the witness interop test checks the formats against.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --ignore-requires-python -r "$here/interop-requirements.txt" >&2
echo "$venv/bin/python"
