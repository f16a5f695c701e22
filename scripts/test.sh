#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh), then runs the lint and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check jmlr tests benchmarks scripts
exec .venv/bin/python -m pytest "$@"
