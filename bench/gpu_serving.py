"""Triton on a GPU: the ``gpu-python`` target (torch on CUDA, DLPack) vs torch in-process.

Run by ``bench/gpu_run.sh`` on the lent H200 (issue 12 item 4); ``--cpu-check`` runs the same
code path on this CPU machine (device cpu, KIND_CPU, tiny durations) so that the script is known
to work before device time is spent.

    python -m bench.gpu_serving --out $OUT/serving-gpu-h200.json
    python -m bench.gpu_serving --cpu-check --out /tmp/gpu-check.json

Points (one run, one GPU):

- ``triton-gpu-python`` (dynamic batching on) and ``triton-gpu-python-dynbatch-off``: real
  tritonserver from the nvidia-pytriton wheel, the generated gpu-python repository (two models
  in one server), closed-loop load (``bench.serving_load``, several load processes so that the
  Python client is not the limit) at concurrency 1, 64 and 256, requests of 1 and of 16 users;
- ``torch-inprocess``: the same TorchScript graph called in this process at batch 1, 16, 64, 256.

Metrics: ``throughput_rps`` = sequences (users) per second, ``p50_ms``, ``p99_ms`` per request.
Traffic: ML-100K-shaped histories (the cold users' recorded lengths, random item ids).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .common import write_results

ROOT = Path(__file__).resolve().parent.parent
# history lengths of ML-100K's 94 cold users (capped at max_seq_len 200), from bench/serving's traffic
ML100K_LENGTHS = {"median": 74, "p90": 200, "share_at_cap": 0.16}
MODEL = {"num_items": 1682, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
         "intermediate_size": 256, "max_seq_len": 200, "objective": "cloze"}


def fail(msg: str) -> None:
    print(f"gpu_serving: {msg}", file=sys.stderr)
    raise SystemExit(3)


def traffic(n: int, seed: int = 0) -> list[list[int]]:
    """n histories: lengths ~ ML-100K cold users (lognormal around the median, 16 % at the cap)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(ML100K_LENGTHS["median"]), 0.6, size=n), 20, 200).astype(int)
    lengths[rng.random(n) < ML100K_LENGTHS["share_at_cap"]] = 200
    return [rng.integers(1, MODEL["num_items"] + 1, size=int(L)).tolist() for L in lengths]


def torch_inprocess(module, hist: list, device: str, seconds: float) -> list[dict]:
    import torch

    from fsrec_serve.idmap import pad_left

    out = []
    for b in (1, 16, 64, 256):
        rows = hist[:b]
        x = torch.from_numpy(pad_left(rows, max(len(r) for r in rows)))
        x, up = x.to(device), torch.zeros(len(rows), MODEL["hidden_size"], device=device)
        lat = []
        with torch.inference_mode():
            for _ in range(3):
                module(x, up)
            t_end = time.perf_counter() + seconds
            while time.perf_counter() < t_end:
                t0 = time.perf_counter()
                module(x, up)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                lat.append((time.perf_counter() - t0) * 1000)
        lat_a = np.asarray(lat)
        out.append({"method": "torch-inprocess", "batch": b, "throughput_rps": b * len(lat) / seconds,
                    "p50_ms": float(np.percentile(lat_a, 50)), "p99_ms": float(np.percentile(lat_a, 99))})
    return out


def load(url: str, model: str, hist_file: Path, conc: int, users: int, seconds: float, warmup: float,
         work: Path, procs: int) -> dict:
    """``procs`` load processes share the concurrency; their points are summed / merged."""
    per = [conc // procs + (1 if i < conc % procs else 0) for i in range(procs)]
    per = [c for c in per if c]
    runs = []
    for i, c in enumerate(per):
        out = work / f"{model}-c{conc}-u{users}-{i}.json"
        cmd = [sys.executable, "-m", "bench.serving_load", "--target", "triton", "--url", url, "--model", model,
               "--histories", str(hist_file), "--concurrency", str(c), "--seconds", str(seconds),
               "--warmup", str(warmup), "--users-per-request", str(users), "--out", str(out)]
        runs.append((subprocess.Popen(cmd, cwd=ROOT), out))
    parts = []
    for p, out in runs:
        p.wait(timeout=seconds + warmup + 120)
        parts.append(json.loads(out.read_text()))
    req = sum(x["requests"] for x in parts)
    return {"concurrency": conc, "users_per_request": users, "requests": req,
            "errors": sum(x["errors"] for x in parts), "throughput_rps": sum(x["sequences_per_s"] for x in parts),
            # the slowest process's percentiles: an upper bound of the merged ones
            "p50_ms": max(x["p50_ms"] for x in parts), "p99_ms": max(x["p99_ms"] for x in parts),
            "first_error": next((x["first_error"] for x in parts if x["first_error"]), "")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--workdir", default="/tmp/fsrec-gpu-serving")
    ap.add_argument("--cpu-check", action="store_true", help="CPU, tiny durations: check the script itself")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--load-procs", type=int, default=6)
    args = ap.parse_args(argv)
    import torch

    device = "cpu" if args.cpu_check else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        fail(f"torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False): run on the GPU host")
    from exporters import build_model_repository, export_onnx
    from exporters.triton_config import DEFAULT_SPEC
    from fsrec_serve.errors import TritonNotFoundError
    from fsrec_serve.model import FsRecConfig, FsRecModel
    from fsrec_serve.serving import find_triton, serve

    try:
        find_triton()
    except TritonNotFoundError as e:
        fail(f"no tritonserver: {e}")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    secs, warm = (1.0, 0.5) if args.cpu_check else (args.seconds, args.warmup)
    concs = (1, 4) if args.cpu_check else (1, 64, 256)
    torch.manual_seed(0)
    model = FsRecModel(FsRecConfig(**MODEL)).eval()
    exp = export_onnx(model, work / "export", torchscript=True, source="bench.gpu_serving random init").output_dir
    hist = traffic(4096)
    hist_file = work / "histories.json"
    hist_file.write_text(json.dumps(hist))
    spec = dataclasses.replace(DEFAULT_SPEC, torch_device=device, max_batch_size=256, instance_count=2,
                               max_queue_delay_us=200, preferred_batch_sizes=[64, 128, 256],
                               instance_kind="KIND_CPU" if args.cpu_check else "")
    repo = work / "repo"
    build_model_repository(repo, exp, spec, target="gpu-python", overwrite=True, version=1)
    build_model_repository(repo, exp, dataclasses.replace(spec, model_name="fsrec_nobatch", dynamic_batching=False),
                           target="gpu-python", overwrite=True, version=1)
    notes = [f"torch {torch.__version__}, device {torch.cuda.get_device_name(0) if device == 'cuda' else 'cpu'}",
             f"traffic: {len(hist)} ML-100K-shaped histories (median {ML100K_LENGTHS['median']}, "
             f"{ML100K_LENGTHS['share_at_cap']:.0%} at the cap 200), random item ids; model random init (ML-100K shape)",
             f"load: {args.load_procs} bench.serving_load processes (Python gRPC client threads), "
             f"{secs:g} s after {warm:g} s warm-up per point"]
    points = torch_inprocess(torch.jit.load(str(exp / "model.pt"), map_location=device).eval(), hist, device, secs)
    with serve(repo, http_port=0, grpc_port=0, metrics_port=0, startup_timeout=300,
               log_file=work / "tritonserver.log") as server:
        for model_name, method in (("fsrec", "triton-gpu-python"), ("fsrec_nobatch", "triton-gpu-python-dynbatch-off")):
            for users in (1, 16):
                for conc in concs:
                    p = load(server.url_grpc, model_name, hist_file, conc, users, secs, warm, work,
                             min(args.load_procs, conc))
                    points.append({"method": method, **p})
                    print(method, users, conc, round(p["throughput_rps"]), round(p["p99_ms"], 2), flush=True)
    rows = []
    for p in points:
        extra = {k: p[k] for k in ("batch", "concurrency", "users_per_request", "errors") if k in p}
        for m in ("throughput_rps", "p50_ms", "p99_ms"):
            rows.append({"dataset": "ml-100k", "protocol": "serving", "method": p["method"], "metric": m,
                         "mean": round(float(p[m]), 3), "std": 0.0, "n": 1, **extra})
    cmd = "python -m bench.gpu_serving " + " ".join(argv if argv is not None else sys.argv[1:])
    write_results("serving-gpu", cmd, rows, extra={"notes": notes, "raw": points}, path=Path(args.out))
    print(args.out)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
