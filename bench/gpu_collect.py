"""Collect the results of one GPU run (bench/gpu_run.sh) into bench/results/*-h200.json.

The few-shot and MetaRec benchmarks ran one process per seed on the GPU host and cached one raw
record per seed; they are aggregated here with the benchmarks' own code (``--cache`` pointing at
the fetched records), then labelled with the machine and the command that produced them.

    python -m bench.gpu_collect --records /tmp/gpucache --quality DIR_WITH_quality-gpu-*.json \
        --serving PATH/serving-gpu.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench.common import RESULTS_DIR

MACHINE = "16 cores x86_64, GPU NVIDIA H200 (lent device; torch 2.11+cu130, onnxruntime 1.30 CPU)"
RUN = "OUT=... bash bench/gpu_run.sh (JOBS='quality-ml fewshot serving' / 'metarec'; see the notes)"


def _relabel(path: Path, command: str, notes: list[str]) -> None:
    d = json.loads(path.read_text())
    d["machine"] = MACHINE
    d["command"] = command
    d["notes"] = notes + list(d.get("notes") or [])
    path.write_text(json.dumps(d, indent=2) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", required=True, help="folder with fewshot-*/metarec-* per-seed records")
    ap.add_argument("--quality", default=None, help="folder with quality-gpu-*.json")
    ap.add_argument("--serving", default=None, help="serving-gpu.json of the GPU run")
    a = ap.parse_args(argv)
    rec = Path(a.records)
    py = sys.executable
    jobs = [
        ("fewshot-h200", ["-m", "bench.fewshot", "--datasets", "ml-100k", "--seeds", "0", "1", "2"],
         "python -m bench.fewshot --device cuda --num-threads 1 --datasets ml-100k --seeds S "
         "--pretrain-seconds 60 (one process per seed S in 0 1 2)",
         ["ML-100K, 3 seeds; pretraining capped at 60 s per seed on the GPU"]),
        ("fewshot-h200-beauty", ["-m", "bench.fewshot", "--datasets", "beauty", "--seeds", "1"],
         "python -m bench.fewshot --device cuda --num-threads 1 --datasets beauty --seeds 1 "
         "--pretrain-seconds 80",
         ["Beauty, ONE seed (1): seeds 0 and 2 stopped on an AdaLoRA error in that run "
          "(rank_pattern None after pruning) and the device time was spent; pretraining capped at 80 s"]),
        ("metarec-h200", ["-m", "bench.metarec", "--seeds", *map(str, range(10))],
         "python -m bench.metarec --device cuda --num-threads 1 --seeds 0 1 2 3 4 (and 5 6 7 8 9) "
         "--pretrain-seconds 25",
         ["10 random splits (seeds 0-9), pretraining capped at 25 s per split on the GPU"]),
    ]
    for name, args, command, notes in jobs:
        subprocess.run([py, *args, "--cache", str(rec), "--out", name], check=True)
        _relabel(RESULTS_DIR / f"{name}.json", command, notes)
    if a.quality:
        rows, cmds = [], []
        for f in sorted(Path(a.quality).glob("quality-gpu-*.json")):
            d = json.loads(f.read_text())
            rows += d["results"]
            cmds.append(d["command"])
        out = RESULTS_DIR / "quality-h200.json"
        from bench.common import write_results

        write_results("quality-h200", " && ".join(cmds), rows, machine=MACHINE, path=out,
                      extra={"notes": ["ML-100K leave-one-out over every user, full ranking; each run "
                                       "capped at 50 s of training on the GPU (the cloze runs were "
                                       "still improving at the cap)"]})
    if a.serving:
        d = json.loads(Path(a.serving).read_text())
        d["machine"] = MACHINE
        (RESULTS_DIR / "serving-gpu.json").write_text(json.dumps(d, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
