#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh), then runs the whole pipeline on the embedded demo task.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/jmlr demo -c configs/demo.yaml "$@"
