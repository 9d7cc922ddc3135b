#!/usr/bin/env bash
# README command 1: install what is missing, then start the whole system
# (Redis, Kafka-protocol broker, ClickHouse, S3, the dataflow and the API).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/meterflow up
