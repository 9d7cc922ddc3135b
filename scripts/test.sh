#!/usr/bin/env bash
# README command 2: install what is missing, then run the test suite. The
# integration tests start their own private services on free ports, so this
# works whether or not `scripts/up.sh` is running.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest "$@"
