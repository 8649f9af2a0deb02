#!/usr/bin/env bash
# One prepared run of the quality / few-shot / MetaRec benchmarks on a GPU host (one GPU, 16
# cores); results are written under $OUT. The Triton serving run is bench/gpu_run.sh.
# Expects, in the working tree: .whl/ (py3.12 wheels of transformers 4.57, tokenizers, hub, peft,
# optimum(-onnx), tritonclient, fastapi/uvicorn) and .device/data.tar.xz (the data sets).
# Jobs run side by side (one GPU, 16 cores), each bounded in time; per-seed records of the
# few-shot and MetaRec benchmarks are cached and aggregated at the end. Everything lands in $OUT.
set -u
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
B=${BUDGET:-420}   # seconds for each job
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
mkdir -p /tmp/fsrec && tar -xJf .device/data.tar.xz -C /tmp/fsrec && export FSREC_DATA_DIR=/tmp/fsrec/data
nvidia-smi -L | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, peft, optimum, numpy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__, 'peft', peft.__version__, 'numpy', numpy.__version__)" 2>&1 | tee -a "$OUT/gpu.txt"
C=/tmp/fsrec/cache
run() {  # name seconds cores command...
  local name=$1 secs=$2 cores=$3; shift 3
  ( timeout "$secs" taskset -c "$cores" "$@" > "$OUT/$name.log" 2>&1; echo "$name exit $?" >> "$OUT/status.txt" ) &
}
R=bench/results
JOBS=${JOBS:-"quality fewshot metarec"}   # which groups to run
want() { case " $JOBS " in *" $1 "*) return 0;; esac; return 1; }
if want quality; then
run q-ml-cloze   "$B" 0-11 python3 -m bench.quality --device cuda --num-threads 1 --datasets ml-100k --methods fsrec-bert4rec popularity --seeds 0 1 2 --max-train-seconds 90 --out quality-gpu-ml-cloze
run q-ml-causal  "$B" 0-11 python3 -m bench.quality --device cuda --num-threads 1 --datasets ml-100k --methods fsrec-sasrec --seeds 0 1 2 --max-train-seconds 90 --out quality-gpu-ml-causal
run q-be-cloze   "$B" 0-11 python3 -m bench.quality --device cuda --num-threads 1 --datasets beauty --methods fsrec-bert4rec popularity --seeds 0 1 2 --max-train-seconds 110 --out quality-gpu-be-cloze
run q-be-causal  "$B" 0-11 python3 -m bench.quality --device cuda --num-threads 1 --datasets beauty --methods fsrec-sasrec --seeds 0 1 2 --max-train-seconds 110 --out quality-gpu-be-causal
fi
if want quality-ml; then
run q-ml-cloze   "$B" 0-11 python3 -m bench.quality --device cuda --num-threads 1 --datasets ml-100k --methods fsrec-bert4rec popularity --seeds 0 1 2 --max-train-seconds ${QSECS:-60} --out quality-gpu-ml-cloze
run q-ml-causal  "$B" 0-11 python3 -m bench.quality --device cuda --num-threads 1 --datasets ml-100k --methods fsrec-sasrec --seeds 0 1 2 --max-train-seconds ${QSECS:-60} --out quality-gpu-ml-causal
fi
if want fewshot; then
for s in 0 1 2; do
  run fs-ml-$s "$B" 0-11 python3 -m bench.fewshot --device cuda --num-threads 1 --datasets ml-100k --seeds $s --pretrain-seconds ${FSECS_ML:-90} --cache $C --out fewshot-gpu-ml-s$s
  run fs-be-$s "$B" 0-11 python3 -m bench.fewshot --device cuda --num-threads 1 --datasets beauty --seeds $s --pretrain-seconds ${FSECS_BE:-120} --cache $C --out fewshot-gpu-be-s$s
done
fi
if want metarec; then
run mr-a "$B" 0-11 python3 -m bench.metarec --device cuda --num-threads 1 --seeds 0 1 2 3 4 --pretrain-seconds 25 --cache $C --out metarec-gpu-a
run mr-b "$B" 0-11 python3 -m bench.metarec --device cuda --num-threads 1 --seeds 5 6 7 8 9 --pretrain-seconds 25 --cache $C --out metarec-gpu-b
fi
# serving on the GPU: bench/gpu_run.sh (real tritonserver, gpu-python target)
wait
# one archive under $OUT: everything the run produced, in one place
mkdir -p "$OUT/all/cache"; cp $C/*.json "$OUT/all/cache/" 2>/dev/null
cp $R/*gpu*.json $R/*gpu*.png $R/*gpu*.md "$OUT"/*.log "$OUT"/*.txt "$OUT/all/" 2>/dev/null
tar -czf "$OUT/gpu-results.tgz" -C "$OUT" all && rm -rf "$OUT/all" "$OUT"/*.log
cat "$OUT/status.txt"; ls "$OUT"
