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
# redis-server: the tests of the shared store start their own (tests/redis_server.py) on a free
# loopback port, so the Debian package's service is not needed: it is stopped if apt started it
if ! command -v redis-server >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (timeout 300 apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq --no-install-recommends redis-server >/dev/null \
      && { service redis-server stop >/dev/null 2>&1 || true; }) \
      || echo "note: redis-server not installed; the redis store tests will be skipped"
  else
    echo "note: redis-server not found (apt-get install redis-server as root); the redis store tests will be skipped"
  fi
fi
# promtool (Debian's prometheus package): the alert rules' checks and unit tests
# (tests/unit/test_monitoring_static.py, which fails on CI without it); only the binary is needed,
# so the service apt may start is stopped
if ! command -v promtool >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (timeout 300 apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
      && { service prometheus stop >/dev/null 2>&1 || true; }) \
      || echo "note: promtool not installed; the Prometheus rule tests will be skipped (they fail on CI)"
  else
    echo "note: promtool not found (apt-get install prometheus as root); the Prometheus rule tests will be skipped"
  fi
fi
# amtool and alertmanager (Debian's prometheus-alertmanager package): the Alertmanager config's
# checks and routing tests, and a real alertmanager that pages a local webhook
# (tests/unit/test_alerting.py, which fails on CI without them); the service apt may start is stopped
if ! command -v amtool >/dev/null 2>&1 || ! command -v prometheus-alertmanager >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (timeout 300 apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq --no-install-recommends prometheus-alertmanager >/dev/null \
      && { service prometheus-alertmanager stop >/dev/null 2>&1 || true; }) \
      || echo "note: amtool not installed; the Alertmanager tests will be skipped (they fail on CI)"
  else
    echo "note: amtool not found (apt-get install prometheus-alertmanager as root); the Alertmanager tests will be skipped"
  fi
fi
python - <<'PY'
import numpy, torch, transformers, peft, onnxruntime, tritonclient
assert numpy.__version__.startswith("1."), "numpy must stay < 2 for Triton's python backend"
print(f"fsrec-serve env ready: torch {torch.__version__}, transformers {transformers.__version__}, "
      f"peft {peft.__version__}, onnxruntime {onnxruntime.__version__}, numpy {numpy.__version__}")
PY
