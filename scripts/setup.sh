#!/usr/bin/env bash
# Create .venv (if missing) and install fsrec-serve with every extra used here. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first and pinned: a bare "torch" requirement would pull a multi-GB CUDA build
python -m pip install -q "torch==2.13.0" || python -m pip install -q "torch>=2.2,<2.15" --index-url https://download.pytorch.org/whl/cpu
python -m pip install -q -e ".[triton,load,dev]"
python - <<'PY'
import numpy, torch, transformers, peft, onnxruntime, tritonclient
assert numpy.__version__.startswith("1."), "numpy must stay < 2 for Triton's python backend"
print(f"fsrec-serve env ready: torch {torch.__version__}, transformers {transformers.__version__}, "
      f"peft {peft.__version__}, onnxruntime {onnxruntime.__version__}, numpy {numpy.__version__}")
PY
