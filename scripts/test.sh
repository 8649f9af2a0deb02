#!/usr/bin/env bash
# The test command: set up the environment, then run unit and end-to-end tests (real Triton).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# the real data sets live beside the project (../shared/data) unless FSREC_DATA_DIR says otherwise
export FSREC_DATA_DIR="${FSREC_DATA_DIR:-$(cd .. && pwd)/shared/data}"
python -m pytest -q -p no:cacheprovider --durations=15 tests "$@"
