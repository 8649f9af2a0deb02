#!/usr/bin/env bash
# Triton on a GPU (issue 12 item 4): real tritonserver 2.51 from the nvidia-pytriton wheel serving
# the gpu-python target (torch on CUDA, tensors through DLPack), dynamic batching on and off,
# concurrency 1 / 64 / 256, requests of 1 and 16 users, and torch in-process on the same GPU.
# At most 10 minutes; fails fast, saying what is missing; leaves ONE archive: $OUT/gpu-serving.tgz
# (results JSON, logs, nvidia-smi, versions).
#
# Expects in the working tree: .whl/ holding the nvidia-pytriton 0.7.0 wheel and py3 wheels of
# tritonclient[grpc], transformers 4.57, tokenizers, huggingface-hub, safetensors, optimum,
# optimum-onnx, onnx (the project tree itself travels with the working tree).
#   OUT=/path bash bench/gpu_run.sh
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
LOGS="$OUT/gpu-serving"
mkdir -p "$LOGS"
pack() { tar -czf "$OUT/gpu-serving.tgz" -C "$OUT" gpu-serving && rm -rf "$LOGS"; ls -l "$OUT"; }
die() { echo "gpu_run: FAILED: $*" | tee -a "$LOGS/status.txt" >&2; pack; exit 2; }
T0=$(date +%s)
echo "start $(date -u +%FT%TZ)" > "$LOGS/status.txt"

# -- 1. the GPU -------------------------------------------------------------------------------------
command -v nvidia-smi >/dev/null 2>&1 || die "nvidia-smi not found: this is not a GPU host"
timeout 30 nvidia-smi > "$LOGS/nvidia-smi.txt" 2>&1 || die "nvidia-smi failed (no usable GPU / driver): $(tail -1 "$LOGS/nvidia-smi.txt")"

# -- 2. the wheels, in a venv that sees the image's torch / numpy -------------------------------------
ls .whl/nvidia_pytriton-*.whl >/dev/null 2>&1 || die "the nvidia-pytriton wheel is missing: put nvidia_pytriton-0.7.0-*.whl under .whl/"
python3 -m venv --system-site-packages /tmp/fsrec-venv > "$LOGS/venv.log" 2>&1 || die "python3 -m venv failed: $(tail -2 "$LOGS/venv.log")"
PY=/tmp/fsrec-venv/bin/python
timeout 180 "$PY" -m pip install -q --no-index --no-deps --no-cache-dir .whl/*.whl >> "$LOGS/venv.log" 2>&1 \
  || die "installing .whl/*.whl failed: $(tail -2 "$LOGS/venv.log")"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
"$PY" - > "$LOGS/versions.txt" 2>&1 <<'EOF' || die "a required module is missing or CUDA is not usable: $(tail -3 "$LOGS/versions.txt")"
import importlib, sys
mods = ["torch", "numpy", "transformers", "optimum", "onnx", "tritonclient.grpc", "pytriton"]
for m in mods:
    mod = importlib.import_module(m)
    print(m, getattr(mod, "__version__", ""))
import torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__}: torch.cuda.is_available() is False (CUDA runtime/driver mismatch?)")
print("cuda", torch.version.cuda, torch.cuda.get_device_name(0))
EOF
# tritonserver from the wheel: its CUDA 12 runtime and libs sit in nvidia_pytriton.libs
"$PY" -c "from fsrec_serve.serving import find_triton; print(find_triton())" >> "$LOGS/versions.txt" 2>&1 \
  || die "tritonserver from the nvidia-pytriton wheel not found/usable: $(tail -2 "$LOGS/versions.txt")"

# -- 3. the run (bounded: 10 min in all) ------------------------------------------------------------
LEFT=$(( 570 - ($(date +%s) - T0) ))
[ "$LEFT" -gt 120 ] || die "only ${LEFT}s left after the setup"
timeout "$LEFT" "$PY" -m bench.gpu_serving --out "$LOGS/serving-gpu-h200.json" --workdir /tmp/fsrec-gpu-serving \
  > "$LOGS/gpu_serving.log" 2>&1
RC=$?
cp /tmp/fsrec-gpu-serving/tritonserver.log "$LOGS/" 2>/dev/null
[ "$RC" -eq 0 ] || die "bench.gpu_serving exit $RC (124 = out of time): $(tail -3 "$LOGS/gpu_serving.log")"
echo "done in $(( $(date +%s) - T0 ))s" >> "$LOGS/status.txt"
pack
