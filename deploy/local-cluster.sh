#!/usr/bin/env bash
# A master and workers on 127.0.0.1 (ports picked by the kernel) until Ctrl-C or SIGTERM; logs
# and segment files go at stop. A thin wrapper over `python -m mooncake_client.local_cluster`
# (client/local_cluster.py, the LocalCluster the tests use), with the repository's .venv when
# there is one (`make venv` builds it), else $MOONCAKE_PYTHON or python3.
#
#   deploy/local-cluster.sh [--workers 2] [--dram 256MiB] [--ssd 1GiB] [--dir DIR] [--ready-file F]
#
# It prints the master's addresses and a mooncake-admin line to try; --ready-file writes them
# as JSON ({"master": {...}, "workers": {...}, "dir": ...}) once every daemon is ready.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${MOONCAKE_PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$here/../.venv/bin/python" ]]; then
    python="$here/../.venv/bin/python"
  else
    python=python3
  fi
fi
# exec: Ctrl-C and SIGTERM reach the Python process, which stops every daemon it started
exec "$python" -m mooncake_client.local_cluster "$@"
