#!/usr/bin/env bash
# A real Ray cluster on this machine: a head and two worker nodes, each its own `ray start`, on
# loopback ports, token auth on (cluster/local/local_cluster.py says how and why).
#
#   cluster/local/up.sh [--state DIR] [--workers N]    # default state: /tmp/vlm3r-local
#   source /tmp/vlm3r-local/env.sh                     # RAY_ADDRESS, RAY_DASHBOARD_ADDRESS, RAY_AUTH_MODE, RAY_AUTH_TOKEN
#   cluster/local/down.sh [--state DIR]
#
# Export AWS_ENDPOINT_URL (and credentials) first when the jobs use an S3 endpoint such as moto:
# the nodes take this shell's environment.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
py="${VLM3R_PYTHON:-$repo/.venv/bin/python}"   # the project's venv (make install); else the python on PATH
[ -x "$py" ] || py="$(command -v python)"
exec "$py" "$here/local_cluster.py" up "$@"
