"""Where a python-backend stub's CPU goes: py-spy samples of one stub under perf_analyzer load.

    python -m pip install --target /tmp/pyspy py-spy      # py-spy outside the venv
    python -m bench.serving_cost_profile --py-spy /tmp/pyspy/bin/py-spy [--dataset ml-100k] \
        [--into bench/results/serving-cost.json]

Starts the default cpu repository of the data set (bench/serving_cost's work folder), loads it
with perf_analyzer at concurrency 16 (real-length histories), samples one
``triton_python_backend_stub`` for ``--seconds`` (Python frames, active samples only: the stub's
C++ wait for the next batch is not sampled) and prints the share of samples per part of
``execute``: ONNX Runtime's run, reading requests, building responses, the rest. Writes
``<work>/profile-<dataset>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

from .serving_cost_parts import descendants
from .serving_cost_points import LoadSpec

# part of execute -> function names in a sampled stack (the first part that matches wins)
PARTS = (("onnxruntime run", ("onnxruntime_inference_collection.py",)),
         ("reading and checking requests", ("_read (", "read (", "validate_")),
         ("building responses", ("tensors (", "InferenceResponse", "split_outputs (")),
         ("padding and grouping", ("fill_left (", "plan_groups (", "bucket_of (")))


def classify(stack: str) -> str:
    """A py-spy raw stack ("f (file:line);g (file:line)") -> the part of execute it is in."""
    for part, keys in PARTS:
        if any(k in stack for k in keys):
            return part
    return "other python"


def profile(work: Path, py_spy: str, seconds: float, load: LoadSpec) -> dict:
    from exporters.repository import DEFAULT_SPEC, build_model_repository
    from fsrec_serve.serving import serve

    meta = json.loads((work / "export" / "fsrec_meta.json").read_text())
    spec = dataclasses.replace(DEFAULT_SPEC, max_seq_len=int(meta.get("max_seq_len", DEFAULT_SPEC.max_seq_len)))
    repo = work / "repo-profile"
    shutil.rmtree(repo, ignore_errors=True)
    build_model_repository(repo, work / "export", spec, target="cpu")
    raw = work / "profile-stacks.txt"
    with serve(repo, http_port=0, grpc_port=0, metrics_port=0, startup_timeout=240,
               log_file=work / "tritonserver-profile.log") as server:
        stubs = [p for p in descendants(server.pid)[1:]
                 if "triton_python" in Path(f"/proc/{p}/comm").read_text()]
        window = str(int((seconds + 8) * 1000))  # one perf_analyzer window longer than the sampling
        pa = subprocess.Popen([load.perf_analyzer, "-m", "fsrec", "-i", "grpc", "-u", server.url_grpc,
                               "--concurrency-range", "16", "--input-data", str(work / "pa-varlen.json"),
                               "--measurement-interval", window, "--max-trials", "1",
                               "--stability-percentage", str(load.stability_pct)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(3)
        subprocess.run([py_spy, "record", "--pid", str(stubs[0]), "--duration", str(int(seconds)), "--rate", "200",
                        "--format", "raw", "--output", str(raw), "--nonblocking"], check=True,
                       capture_output=True, timeout=seconds + 60)
        pa.wait(timeout=seconds + 120)
    parts: Counter = Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            parts[classify(stack)] += int(n)
    total = sum(parts.values()) or 1
    out = {"samples": total, "share": {k: round(v / total, 3) for k, v in parts.most_common()}}
    (work / f"profile-{work.name}.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.serving_cost_profile", description=__doc__.split("\n")[0])
    ap.add_argument("--py-spy", default="py-spy", help="the py-spy binary")
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--seconds", type=float, default=10.0, help="sampling seconds")
    ap.add_argument("--workdir", default="/tmp/fsrec-bench-cost", help="bench.serving_cost's work folder")
    ap.add_argument("--into", default=None, help="a results JSON to add the shares to (key `profile`)")
    args = ap.parse_args(argv)
    import os

    load0 = os.getloadavg()[0]
    out = profile(Path(args.workdir) / args.dataset, args.py_spy, args.seconds, LoadSpec())
    out.update(dataset=args.dataset, method="triton-cpu-varlen", concurrency=16, load_avg=round(load0, 1),
               sampled="one triton_python_backend_stub, Python frames, active samples only, 200 Hz")
    print(json.dumps(out, indent=2))
    if args.into:
        data = json.loads(Path(args.into).read_text())
        data["profile"] = out
        Path(args.into).write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
