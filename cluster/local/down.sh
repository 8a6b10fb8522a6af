#!/usr/bin/env bash
# Stops the nodes cluster/local/up.sh started (by their PIDs, never by name).
#   cluster/local/down.sh [--state DIR]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
py="${VLM3R_PYTHON:-$repo/.venv/bin/python}"
[ -x "$py" ] || py="$(command -v python)"
exec "$py" "$here/local_cluster.py" down "$@"
