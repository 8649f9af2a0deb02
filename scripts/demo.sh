#!/usr/bin/env bash
# The main job end to end: set up, then data -> pretrain -> adapt -> export -> quantize ->
# repository -> start Triton -> recommendations for real users -> stop the server.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export FSREC_DATA_DIR="${FSREC_DATA_DIR:-$(cd .. && pwd)/shared/data}"
exec fsrec pipeline "$@"
