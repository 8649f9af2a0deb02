"""Serving benchmark: the limit, Triton (dynamic batching on / off) and the FastAPI alternative.

    nice -n 10 python -m bench.serving                       # full local run (~6-10 min on 2 cores)
    python -m bench.serving --model runs/ml-100k             # reuse a checkpoint (no training)
    python -m bench.serving --device cuda                    # GPU host: writes serving-gpu.json

One run, one machine, side by side (closed-loop load, one user per request):

- ``ort-inprocess`` / ``ort-inprocess-int8``: the limit. ONNX Runtime in this process on the
  exported graph (FP32, and the static INT8 of ``exporters.quantize``) at batch 1, 8, 32, 64
  and at the batch size Triton's dynamic batcher formed; rows/s and per-call latency.
- ``triton-cpu`` / ``triton-cpu-dynbatch-off``: tritonserver (``fsrec_serve.serving.serve``) on
  the ``cpu`` repository of ``exporters.build_model_repository`` with dynamic batching on and off,
  at concurrency 1, 8, 32 over gRPC; ``triton-cpu-2x1thread``: the generator's repository with two
  instances of one ONNX Runtime thread each. Load: ``perf_analyzer`` (C++, from the tritonclient 2.51
  wheel) when found, else an asyncio ``tritonclient.grpc.aio`` loop in a separate process. The
  mean batch the batcher formed comes from Triton's statistics (inference / execution count).
- ``fastapi-torch``: ``bench/fastapi_server.py`` (FastAPI + PyTorch, one forward pass per
  request) under the same closed-loop load (asyncio ``aiohttp`` loop in a separate process).
- every server point also records the server's CPU per request (``server_cpu_ms_per_req``:
  user + system CPU of the server's process group over the run / requests it answered) and the
  load generator's (``client_cpu_ms_per_req``); in-process ORT records its CPU per row. CPU per
  request does not depend on what else runs on a shared machine; wall-clock throughput does.
- ``ratio`` rows for the goals (``basis`` throughput, and the same comparison in CPU per
  request, ``basis`` cpu_per_request): Triton conc 32 / ORT at the formed batch (>= 0.60), dynamic
  batching on / off at conc 32 (>= 3), Triton / FastAPI at conc 32 with p99 no higher (>= 5).

Writes ``bench/results/serving.json`` (``serving-gpu.json`` with ``--device cuda``), the plot
``serving.png`` (p50/p99 latency against throughput), and the markdown table ``serving.md``.
Whatever cannot run here (no tritonserver, no CUDA provider) is skipped and recorded in
``notes``. The load generators share the cores with the servers: absolute numbers are lower
bounds; compare configurations within one run.

The ``load`` sub-command is the load-generator process (no torch import):
    python -m bench.serving load --target triton --url 127.0.0.1:8001 --concurrency 32 ...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
log = logging.getLogger("bench.serving")

PROTOCOL = "serving"
GOALS = {"triton-vs-ort-limit": 0.60, "dynbatch-on-vs-off": 3.0, "triton-vs-fastapi": 5.0}


# =============================================================================================
# statistics helpers (pure)
# =============================================================================================
def latency_summary(lat_s: list[float], seconds: float) -> dict:
    """Latencies (s) of the requests completed in a window of ``seconds`` -> rps and ms percentiles."""
    if not lat_s:
        return {"n": 0, "throughput_rps": 0.0, "p50_ms": float("nan"), "p95_ms": float("nan"),
                "p99_ms": float("nan"), "mean_ms": float("nan")}
    a = np.asarray(lat_s) * 1000.0
    return {
        "n": int(a.size),
        "throughput_rps": a.size / seconds,
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
    }


def mean_batch(before: dict, after: dict) -> float | None:
    """Mean batch the server formed between two Triton statistics snapshots (JSON form)."""
    def counts(s):
        m = s["model_stats"][0]
        return int(m.get("inference_count", 0)), int(m.get("execution_count", 0))

    i0, e0 = counts(before)
    i1, e1 = counts(after)
    return (i1 - i0) / (e1 - e0) if e1 > e0 else None


TRITON_ON = ("triton-cpu", "triton-cpu-2x1thread")  # Triton configurations with dynamic batching
# the in-process limit each Triton configuration is held to: the same ONNX Runtime threading
LIMIT_OF = {"triton-cpu": "ort-inprocess", "triton-cpu-2x1thread": "ort-inprocess-2x1thread"}
FASTAPI = ("fastapi-torch", "fastapi-torch-1thread")
CPU = "server_cpu_ms_per_req"


def _ratio(num: str, den: str, a: dict, b: dict, goal_key: str, basis: str, **extra) -> dict | None:
    """``a`` / ``b`` as a result row: throughput of a over b, or CPU per request of b over a."""
    if basis == "throughput":
        r = a["throughput_rps"] / b["throughput_rps"] if b.get("throughput_rps") else None
    else:
        r = b[CPU] / a[CPU] if a.get(CPU) and b.get(CPU) else None
    if r is None:
        return None
    goal = GOALS[goal_key]
    row = {"method": f"{num}/{den}", "metric": "ratio", "mean": r, "concurrency": 32, **extra, "basis": basis,
           "goal": f">= {goal}", "met": r >= goal}
    if goal_key == "triton-vs-fastapi":  # "at equal or lower p99"
        row["p99_ok"] = a["p99_ms"] <= b["p99_ms"]
        row["goal"] += " at equal or lower p99"
        row["met"] = row["met"] and row["p99_ok"]
    return row


def compute_ratios(points: dict) -> list[dict]:
    """The goal ratios from measured points, at concurrency 32.

    ``points``: method -> {concurrency or batch -> metrics}; ``points["_formed_batch"]``: Triton
    method -> the batch size in-process ORT was measured at for the batch its batcher formed.
    Each comparison is made on two bases: ``throughput`` (wall clock, what the goals name) and
    ``cpu_per_request`` (server CPU per request: what a CPU-bound server on dedicated cores turns
    into throughput; robust to the other jobs of a shared machine).
    Rows: every dynamic-batching Triton configuration against its in-process limit (ORT with the
    same threading, at the batch its batcher formed) and against both FastAPI servers;
    ``triton-cpu`` against ``triton-cpu-dynbatch-off``."""
    at32 = lambda m: points.get(m, {}).get(32)
    formed = points.get("_formed_batch") or {}
    pairs = []  # (numerator, denominator, a, b, goal, extra)
    for t in TRITON_ON:
        fb = formed.get(t)
        ort = points.get(LIMIT_OF[t], {}).get(fb) if fb else None
        pairs.append((t, LIMIT_OF[t], at32(t), ort, "triton-vs-ort-limit", {"batch": fb}))
    pairs.append(("triton-cpu", "triton-cpu-dynbatch-off", at32("triton-cpu"), at32("triton-cpu-dynbatch-off"),
                  "dynbatch-on-vs-off", {}))
    for t in TRITON_ON:
        for f in FASTAPI:
            pairs.append((t, f, at32(t), at32(f), "triton-vs-fastapi", {}))
    out = []
    for basis in ("throughput", "cpu_per_request"):
        for num, den, a, b, goal, extra in pairs:
            if a and b:
                row = _ratio(num, den, a, b, goal, basis, **extra)
                if row:
                    out.append(row)
    return out


# =============================================================================================
# the load-generator process (``python -m bench.serving load``): asyncio, no torch
# =============================================================================================
async def _triton_load(url: str, model: str, X: np.ndarray, conc: int, warmup: float,
                       duration: float, seed: int) -> dict:
    from tritonclient.grpc import aio

    client = aio.InferenceServerClient(url)
    L = X.shape[1]
    inputs = []  # one prebuilt request input per history (read-only during requests)
    for row in X:
        inp = aio.InferInput("item_ids", [1, L], "INT64")
        inp.set_data_from_numpy(row[None])
        inputs.append([inp])
    outputs = [aio.InferRequestedOutput("top_items"), aio.InferRequestedOutput("top_scores")]
    for i in range(min(4, len(inputs))):  # connection + first-request costs out of the window
        await client.infer(model, inputs[i], outputs=outputs)
    t_start = time.perf_counter()
    t_meas, t_end = t_start + warmup, t_start + warmup + duration
    lat: list[float] = []
    errors: list[str] = []
    snaps: dict = {}

    cpu: dict = {}

    async def snapshot(at: float, key: str):
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        cpu[key] = time.process_time()
        snaps[key] = await client.get_inference_statistics(model, as_json=True)

    done = [0]

    async def worker(i: int):
        rng = random.Random(seed * 1000 + i)
        while True:
            t0 = time.perf_counter()
            if t0 >= t_end:
                return
            try:
                await client.infer(model, inputs[rng.randrange(len(inputs))], outputs=outputs)
            except Exception as e:  # noqa: BLE001 - counted and reported
                errors.append(repr(e)[:200])
                continue
            done[0] += 1
            t1 = time.perf_counter()
            if t1 >= t_meas and t1 <= t_end:
                lat.append(t1 - t0)

    await asyncio.gather(snapshot(t_meas, "before"), snapshot(t_end, "after"),
                         *(worker(i) for i in range(conc)))
    await client.close()
    res = latency_summary(lat, duration)
    res["n_total"] = done[0] + min(4, len(inputs))
    if len(cpu) == 2 and lat:
        res["client_cpu_ms_per_req"] = (cpu["after"] - cpu["before"]) * 1000.0 / len(lat)
    res["errors"] = len(errors)
    res["error_examples"] = sorted(set(errors))[:5]
    res["mean_batch"] = mean_batch(snaps["before"], snaps["after"]) if len(snaps) == 2 else None
    return res


async def _http_load(url: str, hist: list[list[int]], conc: int, warmup: float, duration: float,
                     seed: int, k: int) -> dict:
    # aiohttp, not httpx: measured here, httpx's client cost 1.5-4.5 ms CPU per request (as much
    # as the server it drives), aiohttp a fraction of it; the generator shares the cores
    import aiohttp

    connector = aiohttp.TCPConnector(limit=conc, limit_per_host=conc)
    timeout = aiohttp.ClientTimeout(total=60.0)
    endpoint = url.rstrip("/") + "/recommend"
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
        bodies = [json.dumps({"item_ids": h, "k": k}).encode() for h in hist]
        headers = {"content-type": "application/json"}

        async def post(body: bytes) -> None:
            async with client.post(endpoint, data=body, headers=headers) as r:
                await r.read()
                r.raise_for_status()

        for b in bodies[:4]:
            await post(b)
        t_start = time.perf_counter()
        t_meas, t_end = t_start + warmup, t_start + warmup + duration
        lat: list[float] = []
        errors: list[str] = []
        done = [0]

        async def worker(i: int):
            rng = random.Random(seed * 1000 + i)
            while True:
                t0 = time.perf_counter()
                if t0 >= t_end:
                    return
                try:
                    await post(bodies[rng.randrange(len(bodies))])
                except Exception as e:  # noqa: BLE001
                    errors.append(repr(e)[:200])
                    continue
                done[0] += 1
                t1 = time.perf_counter()
                if t_meas <= t1 <= t_end:
                    lat.append(t1 - t0)

        cpu: dict = {}

        async def mark(at: float, key: str):
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            cpu[key] = time.process_time()

        await asyncio.gather(mark(t_meas, "before"), mark(t_end, "after"), *(worker(i) for i in range(conc)))
    res = latency_summary(lat, duration)
    res["n_total"] = done[0] + min(4, len(bodies))
    if len(cpu) == 2 and lat:
        res["client_cpu_ms_per_req"] = (cpu["after"] - cpu["before"]) * 1000.0 / len(lat)
    res["errors"] = len(errors)
    res["error_examples"] = sorted(set(errors))[:5]
    return res


def load_main(args) -> int:
    data = np.load(args.inputs)
    X = data["padded"]  # [U, L] int64
    lengths = data["lengths"]  # [U]
    if args.target == "triton":
        res = asyncio.run(_triton_load(args.url, args.model_name, X, args.concurrency, args.warmup,
                                       args.duration, args.seed))
    else:
        hist = [row[len(row) - n:].tolist() for row, n in zip(X, lengths)]
        res = asyncio.run(_http_load(args.url, hist, args.concurrency, args.warmup, args.duration,
                                     args.seed, args.k))
    print("RESULT " + json.dumps(res))
    return 0


# =============================================================================================
# orchestration
# =============================================================================================
@dataclass
class BenchConfig:
    dataset: str = "ml-100k"  # data set whose model and held-out users are used
    model: str | None = None  # checkpoint folder; None = pretrain a quick model
    epochs: int = 2  # epochs of the quick pretraining (speed does not depend on quality)
    device: str = "cpu"  # "cpu" or "cuda" (FastAPI/torch and ORT's provider)
    batches: tuple = (1, 8, 32, 64)  # in-process ORT batch sizes
    concurrency: tuple = (1, 8, 32)  # closed-loop concurrency of the servers
    duration: float = 8.0  # measured seconds per server point
    warmup: float = 2.0  # unmeasured seconds before each server point
    ort_seconds: float = 3.0  # measured seconds per in-process ORT point
    load_generator: str = "auto"  # "auto" (perf_analyzer if found), "perf_analyzer", "async"
    perf_analyzer: str | None = None  # path of the perf_analyzer binary
    int8: bool = True  # also quantize (static INT8) and measure it in-process
    skip: tuple = ()  # sections to skip: ort, triton, fastapi
    workdir: str | None = None  # scratch folder (default: a temp dir)
    out: str | None = None  # results JSON (default: bench/results/serving[-gpu].json)
    seed: int = 0  # traffic seed
    notes: list = field(default_factory=list)  # filled during the run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare_model(cfg: BenchConfig, work: Path):
    """(checkpoint dir, FsRecModel, splits, held-out histories as index lists)."""
    from fsrec_serve.data import SplitConfig, load_dataset, make_splits
    from fsrec_serve.model import FsRecModel

    splits = make_splits(load_dataset(cfg.dataset), SplitConfig(seed=0))
    if cfg.model:
        ckpt = Path(cfg.model)
        model = FsRecModel.from_pretrained(ckpt).eval()
        cfg.notes.append(f"model: checkpoint {ckpt}")
    else:
        from fsrec_serve.training import (
            default_model_config,
            default_train_config,
            pretrain,
        )

        ckpt = work / "model"
        tc = default_train_config(splits, epochs=cfg.epochs, patience=0, progress=False,
                                  output_dir=str(ckpt), device=cfg.device, max_train_seconds=180.0)
        t0 = time.perf_counter()
        res = pretrain(splits, default_model_config(splits), tc)
        model = res.model.to("cpu").eval()
        cfg.notes.append(f"model: pretrained {cfg.epochs} epochs on {cfg.dataset} in "
                         f"{time.perf_counter() - t0:.0f} s (serving speed does not depend on quality)")
    c = model.config
    cfg.notes.append(f"model size: {c.num_items} items, hidden {c.hidden_size}, {c.num_hidden_layers} layers, "
                     f"max_seq_len {c.max_seq_len}")
    users = splits.cold_users or splits.warm
    hist = [u.items for u in users if len(u.items)]
    if getattr(model, "item_map", None) is not None and model.item_map != splits.item_map:
        # a checkpoint trained on another split: go through raw ids, drop what it does not know
        hist = [[model.item_map.index(r) for r in splits.item_map.raws(h) if r in model.item_map] for h in hist]
        hist = [h for h in hist if h]
    hist = [h[-c.max_seq_len:] for h in hist]
    return ckpt, model, splits, hist


def _histories_file(hist: list[list[int]], max_len: int, path: Path) -> Path:
    from exporters.runtime import pad_left

    np.savez(path, padded=pad_left(hist, max_len), lengths=np.array([len(h) for h in hist]))
    return path


def _perf_analyzer_histories(X: np.ndarray, path: Path) -> Path:
    path.write_text(json.dumps({"data": [{"item_ids": row.tolist()} for row in X]}))
    return path


# -- CPU accounting (robust to a shared machine: CPU seconds, not wall seconds) ------------------
def group_cpu_by_process(pgid: int) -> dict[str, float]:
    """user + system CPU seconds of the live processes of process group ``pgid`` (Linux /proc),
    by process name: tritonserver and its python-backend stubs, or the uvicorn server."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        f = stat[stat.rindex(")") + 2:].split()  # f[2] = pgrp, f[11] = utime, f[12] = stime
        if int(f[2]) == pgid:
            out[name] = out.get(name, 0.0) + (int(f[11]) + int(f[12])) / tick
    return out


def group_cpu_seconds(pgid: int) -> float:
    return sum(group_cpu_by_process(pgid).values())


def children_cpu_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def accounted(run_point, pgid: int, count=None) -> dict:
    """Run one load point and add the server's and the load generator's CPU per request.

    ``count()``: the server's request counter (Triton's inference count); without it the load
    generator's ``n_total`` (every request it completed, warm-up included) is used."""
    c0, g0, n0 = group_cpu_by_process(pgid), children_cpu_seconds(), count() if count else 0
    m = run_point()
    c1, g1 = group_cpu_by_process(pgid), children_cpu_seconds()
    n = (count() - n0) if count else m.get("n_total") or 0
    if n:
        m["server_cpu_ms_per_req"] = (sum(c1.values()) - sum(c0.values())) * 1000.0 / n
        # where the server's CPU went, by process (tritonserver core vs python-backend stub)
        m["server_cpu_split_ms_per_req"] = {k: round((v - c0.get(k, 0.0)) * 1000.0 / n, 3) for k, v in c1.items()}
        # the generator's own figure (its CPU in the measured window) when it has one; else its
        # whole process (perf_analyzer: C++, negligible start-up)
        m.setdefault("client_cpu_ms_per_req", (g1 - g0) * 1000.0 / n)
    return m


# -- in-process ORT ---------------------------------------------------------------------------
def _ort_loop(sess, pool: list, offset: int, t0: float, seconds: float, lat: list) -> None:
    i = offset
    while time.perf_counter() - t0 < seconds:
        t = time.perf_counter()
        sess.run(None, {"item_ids": pool[i % len(pool)]})
        lat.append(time.perf_counter() - t)  # list.append is atomic under the GIL
        i += 1


def measure_ort(export_dir: Path, X: np.ndarray, batches, seconds: float, providers, seed: int,
                parallel: int = 1) -> dict:
    """batch -> metrics of back-to-back ``session.run`` calls on random held-out rows.

    ``parallel=1``: one session with ONNX Runtime's default threads (intra-op = cores, as in the
    generated repository). ``parallel=n``: n sessions of one intra-op thread each, run by n
    Python threads at once (ORT releases the GIL): the in-process twin of n Triton instances."""
    import threading

    from exporters.runtime import make_session

    sessions = ([make_session(export_dir, providers=providers)] if parallel == 1 else
                [make_session(export_dir, intra_op_threads=1, providers=providers) for _ in range(parallel)])
    rng = np.random.default_rng(seed)
    out = {}
    for b in batches:
        pool = [X[rng.integers(0, len(X), size=b)] for _ in range(16)]
        for sess in sessions:
            for x in pool[:3]:
                sess.run(None, {"item_ids": x})
        lat: list[float] = []
        c0, t0 = time.process_time(), time.perf_counter()

        threads = [threading.Thread(target=_ort_loop, args=(sess, pool, k * 7, t0, seconds, lat))
                   for k, sess in enumerate(sessions)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        el = time.perf_counter() - t0
        m = latency_summary(lat, el)
        m["throughput_rps"] = len(lat) * b / el  # rows (users) per second
        m["server_cpu_ms_per_req"] = (time.process_time() - c0) * 1000.0 / (len(lat) * b)  # per row
        out[b] = m
        log.info("ort %s x%d batch %d: %.0f rows/s, p50 %.2f ms, CPU %.2f ms/row", export_dir.name, parallel, b,
                 m["throughput_rps"], m["p50_ms"], m["server_cpu_ms_per_req"])
    return out


# -- load generators --------------------------------------------------------------------------
def find_perf_analyzer(explicit: str | None = None) -> Path | None:
    cands = [explicit, os.environ.get("PERF_ANALYZER"), shutil.which("perf_analyzer"),
             str(PERF_ANALYZER_CACHE / "perf_analyzer")]
    for c in cands:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c)
    return None


PERF_ANALYZER_CACHE = Path.home() / ".cache" / "fsrec" / "perf_analyzer"


def fetch_perf_analyzer(dest: Path = PERF_ANALYZER_CACHE, version: str = "2.51.0") -> Path:
    """Extract ``perf_analyzer`` from the manylinux wheel of ``tritonclient==<version>`` (the
    PyPI ``perf-analyzer`` package is empty; STACK.md) into ``dest``, without installing the
    wheel (the venv keeps its newer tritonclient)."""
    import zipfile

    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", f"tritonclient=={version}", "--no-deps",
                        "--only-binary=:all:", "--platform", "manylinux1_x86_64", "-d", tmp, "-q"], check=True)
        wheel = next(Path(tmp).glob("tritonclient-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            name = next(n for n in z.namelist() if n.endswith("/bin/perf_analyzer"))
            (dest / "perf_analyzer").write_bytes(z.read(name))
    (dest / "perf_analyzer").chmod(0o755)
    return dest / "perf_analyzer"


def perf_analyzer_env(work: Path) -> dict:
    """LD_LIBRARY_PATH for the wheel's perf_analyzer: libcudart.so.12 and libb64.so.0d symlinked
    from the nvidia-pytriton wheel's bundled libraries (no CUDA or apt package needed)."""
    env = dict(os.environ)
    import importlib.util

    spec = importlib.util.find_spec("pytriton")  # the nvidia-pytriton wheel
    if spec is None or not spec.submodule_search_locations:
        return env
    libs = Path(next(iter(spec.submodule_search_locations))).resolve().parent / "nvidia_pytriton.libs"
    if not libs.is_dir():
        return env
    lib = work / "pa-lib"
    lib.mkdir(exist_ok=True)
    for pattern, name in (("libcudart-*.so.12*", "libcudart.so.12"), ("libb64-*.so.0d", "libb64.so.0d")):
        found = sorted(libs.glob(pattern))
        if found and not (lib / name).exists():
            (lib / name).symlink_to(found[0])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(lib), str(libs), env.get("LD_LIBRARY_PATH")]))
    return env


def run_perf_analyzer(pa: Path, env: dict, url: str, model: str, data_json: Path, conc: int,
                      duration: float, work: Path, stats_fn) -> dict:
    csv_path = work / f"pa-{conc}.csv"
    cmd = [str(pa), "-m", model, "-u", url, "-i", "grpc", "--input-data", str(data_json),
           "--concurrency-range", f"{conc}:{conc}",
           # three windows of duration/3 s; a shared machine is never "stable": accept any spread
           "--measurement-interval", str(int(duration * 1000 / 3)), "--max-trials", "3",
           "--stability-percentage", "999", "--percentile", "99", "-f", str(csv_path)]
    before = stats_fn()
    for attempt in range(2):  # one retry: a start-up hiccup should not lose the point
        csv_path.unlink(missing_ok=True)
        p = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=duration * 8 + 120)
        (work / f"pa-{conc}.log").write_text(shlex.join(cmd) + "\n" + p.stdout + p.stderr)
        if p.returncode == 0 and csv_path.exists():
            break
        log.warning("perf_analyzer exited with %d (attempt %d), log %s", p.returncode, attempt + 1,
                    work / f"pa-{conc}.log")
        time.sleep(1.0)
    after = stats_fn()
    if p.returncode != 0 or not csv_path.exists():
        raise RuntimeError(f"perf_analyzer failed ({p.returncode}): {(p.stdout + p.stderr)[-800:]}")
    import csv

    with csv_path.open() as f:
        row = next(csv.DictReader(f))
    us = lambda k: float(row[k]) / 1000.0
    return {"n": None, "throughput_rps": float(row["Inferences/Second"]), "p50_ms": us("p50 latency"),
            "p95_ms": us("p95 latency"), "p99_ms": us("p99 latency"),
            "mean_batch": mean_batch(before, after), "errors": 0,
            "server_queue_ms": us("Server Queue"), "server_compute_ms": us("Server Compute Infer")}


def run_load_process(target: str, url: str, inputs: Path, conc: int, cfg: BenchConfig,
                     model_name: str = "fsrec") -> dict:
    cmd = [sys.executable, "-m", "bench.serving", "load", "--target", target, "--url", url,
           "--inputs", str(inputs), "--concurrency", str(conc), "--duration", str(cfg.duration),
           "--warmup", str(cfg.warmup), "--seed", str(cfg.seed), "--model-name", model_name]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT, env=env,
                       timeout=cfg.duration + cfg.warmup + 120)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if p.returncode != 0 or line is None:
        raise RuntimeError(f"load generator failed ({p.returncode}): {(p.stdout + p.stderr)[-800:]}")
    return json.loads(line[len("RESULT "):])


# -- Triton ------------------------------------------------------------------------------------
def build_repositories(export_dir: Path, work: Path, model_name: str = "fsrec") -> dict[str, Path]:
    """{"triton-cpu": the generator's cpu repository (dynamic batching on), "triton-cpu-dynbatch-off":
    the same repository with the ``dynamic_batching`` field removed from its ModelConfig,
    "triton-cpu-2x1thread": two model instances with one ONNX Runtime thread each}.

    The generator (``exporters.build_model_repository``) always enables dynamic batching; the OFF
    variant is derived through Triton's ModelConfig protobuf (``load_model_config`` ->
    ``ClearField`` -> text format), never by string editing."""
    from google.protobuf import text_format

    from exporters.repository import build_model_repository, load_model_config

    out = {}
    variants = (("triton-cpu", True, {}), ("triton-cpu-dynbatch-off", False, {}),
                # the generator's own knobs: one ORT thread per instance, one instance per core
                ("triton-cpu-2x1thread", True, {"intra_op_threads": 1, "instance_count": 2}))
    for method, dyn, kw in variants:
        repo = work / f"repo-{method}"
        shutil.rmtree(repo, ignore_errors=True)
        build_model_repository(repo, export_dir, target="cpu", model_name=model_name, **kw)
        if not dyn:
            cfg = load_model_config(repo / model_name)
            cfg.ClearField("dynamic_batching")
            (repo / model_name / "config.pbtxt").write_text(
                "# bench.serving: the generator's cpu config without dynamic_batching\n"
                + text_format.MessageToString(cfg))
        out[method] = repo
    return out


def measure_triton(repo: Path, method: str, cfg: BenchConfig, work: Path, inputs: Path,
                   pa_json: Path | None, pa: Path | None, pa_env: dict | None) -> dict:
    import tritonclient.grpc as grpcclient

    from fsrec_serve.serving import serve

    out = {}
    server = serve(repo, http_port=0, grpc_port=0, metrics_port=-1,
                   log_file=work / f"{method}.tritonserver.log")
    try:
        url = server.url_grpc
        stats_client = grpcclient.InferenceServerClient(url)
        stats = lambda: stats_client.get_inference_statistics("fsrec", as_json=True)
        count = lambda: int(stats()["model_stats"][0].get("inference_count", 0))
        pgid = os.getpgid(server.pid)
        for conc in cfg.concurrency:
            if pa is not None:
                m = accounted(lambda c=conc: run_perf_analyzer(pa, pa_env, url, "fsrec", pa_json, c, cfg.duration,
                                                               work, stats), pgid, count)
                m["load_generator"] = "perf_analyzer"
            else:
                m = accounted(lambda c=conc: run_load_process("triton", url, inputs, c, cfg), pgid, count)
                m["load_generator"] = "async-grpc"
            out[conc] = m
            log.info("%s conc %d: %.0f req/s, p50 %.1f ms, p99 %.1f ms, mean batch %s, server CPU %.2f ms/req",
                     method, conc, m["throughput_rps"], m["p50_ms"], m["p99_ms"], m.get("mean_batch"),
                     m.get("server_cpu_ms_per_req", float("nan")))
        if pa is not None and 32 in cfg.concurrency:  # cross-check with the python generator
            m = accounted(lambda: run_load_process("triton", url, inputs, 32, cfg), pgid, count)
            m["load_generator"] = "async-grpc"
            out["32-async"] = m
            log.info("%s conc 32 (async-grpc): %.0f req/s, p99 %.1f ms", method, m["throughput_rps"], m["p99_ms"])
        stats_client.close()
    finally:
        server.stop()
    return out


# -- FastAPI -----------------------------------------------------------------------------------
def measure_fastapi(ckpt: Path, cfg: BenchConfig, work: Path, inputs: Path, threads: int | None = None,
                    method: str = "fastapi-torch") -> dict:
    port = _free_port()
    logf = (work / f"{method}.log").open("w")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "bench.fastapi_server", "--model", str(ckpt), "--port", str(port),
           "--device", cfg.device] + (["--threads", str(threads)] if threads else [])
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"FastAPI server exited: {(work / f'{method}.log').read_text()[-800:]}")
            try:
                urllib.request.urlopen(url + "/health", timeout=1).read()
                break
            except Exception:  # noqa: BLE001
                if time.time() > deadline:
                    raise RuntimeError("FastAPI server not ready after 120 s") from None
                time.sleep(0.3)
        out = {}
        for conc in cfg.concurrency:
            m = accounted(lambda c=conc: run_load_process("fastapi", url, inputs, c, cfg), proc.pid)
            m["load_generator"] = "async-aiohttp"
            out[conc] = m
            log.info("%s conc %d: %.0f req/s, p50 %.1f ms, p99 %.1f ms, server CPU %.2f ms/req", method, conc,
                     m["throughput_rps"], m["p50_ms"], m["p99_ms"], m.get("server_cpu_ms_per_req", float("nan")))
        return out
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        logf.close()


# -- outputs -----------------------------------------------------------------------------------
def result_rows(points: dict, dataset: str) -> list[dict]:
    rows = []
    for method, pts in points.items():
        if method.startswith("_"):
            continue
        for key, m in pts.items():
            extra = {}
            if method.startswith(("ort", "torch")):
                extra["batch"] = key
            else:
                conc = int(str(key).split("-")[0])
                extra["concurrency"] = conc
            if m.get("load_generator"):
                extra["load_generator"] = m["load_generator"]
            for metric in ("throughput_rps", "p50_ms", "p95_ms", "p99_ms", "server_cpu_ms_per_req",
                           "client_cpu_ms_per_req"):
                if m.get(metric) is not None and m[metric] == m[metric]:
                    rows.append({"dataset": dataset, "protocol": PROTOCOL, "method": method, "metric": metric,
                                 "mean": round(float(m[metric]), 3), "std": 0.0, "n": 1, **extra})
            if m.get("mean_batch") is not None:
                rows.append({"dataset": dataset, "protocol": PROTOCOL, "method": method, "metric": "mean_batch_size",
                             "mean": round(float(m["mean_batch"]), 3), "std": 0.0, "n": 1, **extra})
    for r in compute_ratios(points):
        rows.append({"dataset": dataset, "protocol": PROTOCOL, **{k: v for k, v in r.items() if k != "mean"},
                     "mean": round(float(r["mean"]), 3), "std": 0.0, "n": 1})
    return rows


def plot(points: dict, path: Path, title: str) -> Path:
    """Two panels (p99 left, p50 right): latency against throughput, one line per configuration
    (servers: one point per concurrency, c1/c8/c32; in-process: one per batch size, b1...)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    styles = {"triton-cpu": ("C0", "-"), "triton-cpu-dynbatch-off": ("C1", "-"),
              "triton-cpu-2x1thread": ("C9", "-"), "fastapi-torch": ("C3", "-"),
              "fastapi-torch-1thread": ("C6", "-"), "ort-inprocess": ("C2", ":"),
              "ort-inprocess-int8": ("C4", ":"), "ort-inprocess-2x1thread": ("C8", ":"),
              "torch-inprocess": ("C5", ":")}
    for ax, q in zip(axes, ("p99_ms", "p50_ms")):
        for method, pts in points.items():
            if method.startswith("_") or not pts:
                continue
            keys = sorted(k for k in pts if isinstance(k, int))
            xs = [pts[k]["throughput_rps"] for k in keys]
            ys = [pts[k][q] for k in keys]
            color, ls = styles.get(method, (None, "-"))
            ax.plot(xs, ys, ls, marker="o", ms=4, color=color, label=method)
            for k, x, y in zip(keys, xs, ys):
                label = f"b{k}" if method.startswith(("ort", "torch")) else f"c{k}"
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7, color=color)
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(ScalarFormatter())
            axis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("throughput (users / s)")
        ax.set_title(f"{q[:3]} latency", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("latency per request (servers) or per batch call (in-process), ms")
    axes[1].legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def replot(results_json: Path) -> None:
    """Re-render the PNG and the markdown table of a results file (from its ``raw`` points)."""
    data = json.loads(Path(results_json).read_text())
    points = {m: {int(k) if k.isdigit() else k: v for k, v in pts.items()} for m, pts in data.get("raw", {}).items()}
    plot(points, Path(results_json).with_suffix(".png"),
         f"{data['benchmark']}: latency vs throughput ({data['machine']}, {data['date']})")
    Path(results_json).with_suffix(".md").write_text(markdown_table(data["results"]))


def markdown_table(rows: list[dict]) -> str:
    lines = ["| configuration | load | users/s | p50 ms | p95 ms | p99 ms | mean batch | server CPU ms/req |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    table: dict[tuple, dict] = {}
    for r in rows:
        if r["metric"] == "ratio":
            continue
        key = (r["method"], f"batch {r['batch']}" if "batch" in r else f"conc {r['concurrency']}",
               r.get("load_generator", "in-process"))
        table.setdefault(key, {})[r["metric"]] = r["mean"]
    for (method, load, gen), m in table.items():
        f = lambda k, fmt="{:.1f}", m=m: fmt.format(m[k]) if k in m else ""
        lines.append(f"| {method} | {load} ({gen}) | {f('throughput_rps', '{:.0f}')} | {f('p50_ms', '{:.2f}')} | "
                     f"{f('p95_ms', '{:.2f}')} | {f('p99_ms', '{:.2f}')} | {f('mean_batch_size', '{:.1f}')} | "
                     f"{f('server_cpu_ms_per_req', '{:.2f}')} |")
    lines += ["", "| goal | basis | ratio | target | met |", "|---|---|---:|---|---|"]
    for r in rows:
        if r["metric"] == "ratio":
            lines.append(f"| {r['method']} (conc {r.get('concurrency')}{', batch ' + str(r['batch']) if 'batch' in r else ''}) "
                         f"| {r.get('basis', 'throughput')} | {r['mean']:.2f} | {r['goal']} | {'yes' if r['met'] else 'NO'} |")
    return "\n".join(lines) + "\n"


# -- main --------------------------------------------------------------------------------------
def run(cfg: BenchConfig, command: str) -> Path:
    from bench.common import machine_description, write_results

    gpu = cfg.device.startswith("cuda")
    name = "serving-gpu" if gpu else "serving"
    work = Path(cfg.workdir) if cfg.workdir else Path(tempfile.mkdtemp(prefix="fsrec-bench-serving-"))
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    points: dict = {}

    if gpu:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA device here; run without --device "
                             "cuda (CPU benchmark) or on the GPU host")
    ckpt, model, splits, hist = _prepare_model(cfg, work)
    L = int(model.config.max_seq_len)
    inputs = _histories_file(hist, L, work / "histories.npz")
    X = np.load(inputs)["padded"]
    lens = [len(h) for h in hist]
    cfg.notes.append(f"traffic: {len(hist)} held-out (cold) users of {cfg.dataset}, history length "
                     f"median {int(np.median(lens))} (min {min(lens)}, max {max(lens)}, capped at {L}); "
                     "one user per request, closed loop")

    from exporters.export import export_onnx

    export_dir = work / "export"
    export_onnx(model, export_dir, validate_with=hist[:32], source=str(ckpt))
    int8_dir = None
    if cfg.int8 and "ort" not in cfg.skip:
        try:
            from exporters.quantize import quantize

            calib = [s.items for s in splits.loo_train()][:256]
            int8_dir = quantize(export_dir, work / "export-int8", mode="int8-static", preset="avx2",
                                calibration_histories=calib, calibration_size=256)
        except Exception as e:  # noqa: BLE001
            cfg.notes.append(f"ort-inprocess-int8 not measured: static INT8 quantization failed ({e})")

    # the limit: in-process ORT
    providers = ["CPUExecutionProvider"]
    if gpu:
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            cfg.notes.append("ort-inprocess ran on the CPU: this onnxruntime has no CUDAExecutionProvider "
                             "(install onnxruntime-gpu instead of onnxruntime)")
    ncores = os.cpu_count() or 1
    if "ort" not in cfg.skip:
        points["ort-inprocess"] = measure_ort(export_dir, X, cfg.batches, cfg.ort_seconds, providers, cfg.seed)
        if ncores > 1 and not gpu:
            points["ort-inprocess-2x1thread"] = measure_ort(export_dir, X, cfg.batches, cfg.ort_seconds,
                                                            providers, cfg.seed, parallel=2)
        if int8_dir is not None:
            points["ort-inprocess-int8"] = measure_ort(int8_dir, X, cfg.batches, cfg.ort_seconds,
                                                       ["CPUExecutionProvider"], cfg.seed)
    if gpu:
        points["torch-inprocess"] = measure_torch(model, X, cfg.batches, cfg.ort_seconds, cfg.device)

    # Triton
    if "triton" not in cfg.skip:
        try:
            pa = None
            pa_env = None
            pa_json = None
            if cfg.load_generator in ("auto", "perf_analyzer"):
                pa = find_perf_analyzer(cfg.perf_analyzer)
                if pa is None and cfg.load_generator == "perf_analyzer":
                    raise RuntimeError("perf_analyzer not found: pass --perf-analyzer PATH (see docs/loadtests.md)")
                if pa is not None:
                    pa_env = perf_analyzer_env(work)
                    pa_json = _perf_analyzer_histories(X, work / "pa-input.json")
            gen = "perf_analyzer (C++, tritonclient 2.51 wheel)" if pa else "asyncio tritonclient.grpc.aio loop"
            cfg.notes.append(f"Triton load generator: {gen} in a separate process, gRPC")
            repos = build_repositories(export_dir, work)
            for method, repo in repos.items():
                points[method] = measure_triton(repo, method, cfg, work, inputs, pa_json, pa, pa_env)
        except Exception as e:
            log.exception("triton section failed")
            cfg.notes.append(f"Triton not measured: {type(e).__name__}: {str(e)[:300]}")

        # the limit at the batch size each batcher formed (conc 32)
        points["_formed_batch"] = {}
        for method in TRITON_ON:
            formed = (points.get(method, {}).get(32) or {}).get("mean_batch")
            limit = LIMIT_OF[method]
            if formed and limit in points:
                fb = max(1, round(formed))
                if fb not in points[limit]:
                    points[limit].update(measure_ort(export_dir, X, [fb], cfg.ort_seconds, providers, cfg.seed,
                                                     parallel=2 if limit.endswith("2x1thread") else 1))
                points["_formed_batch"][method] = fb

    if "fastapi" not in cfg.skip:
        # as a user writes it (torch's default threads), and with the usual serving tweak
        # torch.set_num_threads(1) (one OpenMP pool per FastAPI worker thread otherwise)
        for method, threads in (("fastapi-torch", None), ("fastapi-torch-1thread", 1)):
            try:
                points[method] = measure_fastapi(ckpt, cfg, work, inputs, threads=threads, method=method)
            except Exception as e:
                log.exception("fastapi section failed")
                cfg.notes.append(f"{method} not measured: {type(e).__name__}: {str(e)[:300]}")

    for method, pts in points.items():
        split = (pts.get(32) or {}).get("server_cpu_split_ms_per_req") if not method.startswith("_") else None
        if split:
            parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(split.items(), key=lambda kv: -kv[1]))
            cfg.notes.append(f"{method} conc 32: server CPU {pts[32]['server_cpu_ms_per_req']:.2f} ms/request = {parts}")
    if "ort-inprocess" in points:
        cfg.notes.append("ONNX Runtime threading: ort-inprocess and triton-cpu use ORT's defaults (intra-op = "
                         "cores, spinning on; the generated repository's setting); triton-cpu-2x1thread = 2 model "
                         "instances x 1 intra-op thread, held to ort-inprocess-2x1thread = 2 sessions x 1 thread "
                         "run by 2 threads at once")
    rows = result_rows(points, cfg.dataset)
    for r in rows:
        if r["metric"] == "ratio":
            cfg.notes.append(f"ratio {r['method']} ({r['basis']}): {r['mean']:.2f} (goal {r['goal']}): "
                             f"{'met' if r['met'] else 'MISSED'}")
    cfg.notes.append(f"throughput = users (rows) per second; in-process latency is per batch call; "
                     f"server latency per request; {cfg.duration:g} s measured after {cfg.warmup:g} s warm-up "
                     f"per point; full run {time.perf_counter() - t_all:.0f} s")
    out = Path(cfg.out) if cfg.out else RESULTS / f"{name}.json"
    raw = {m: {str(k): v for k, v in p.items()} for m, p in points.items() if not m.startswith("_")}
    write_results(name, command, rows, machine=machine_description(),
                  extra={"notes": cfg.notes, "raw": raw}, path=out)
    replot(out)
    log.info("wrote %s, %s, %s", out, out.with_suffix(".png"), out.with_suffix(".md"))
    return out


def measure_torch(model, X: np.ndarray, batches, seconds: float, device: str) -> dict:
    """In-process PyTorch (the served graph's torch twin) at each batch size, on ``device``."""
    import torch

    from exporters.export import FsRecTopKModule

    m = FsRecTopKModule(model.to(device).eval(), min(100, model.config.num_items)).eval()
    rng = np.random.default_rng(0)
    out = {}
    for b in batches:
        pool = [torch.as_tensor(X[rng.integers(0, len(X), size=b)], device=device) for _ in range(8)]
        with torch.inference_mode():
            for x in pool[:3]:
                m(x)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            lat, t0, i = [], time.perf_counter(), 0
            while time.perf_counter() - t0 < seconds:
                t = time.perf_counter()
                o = m(pool[i % len(pool)])
                o["top_items"].cpu()
                lat.append(time.perf_counter() - t)
                i += 1
        el = time.perf_counter() - t0
        r = latency_summary(lat, el)
        r["throughput_rps"] = len(lat) * b / el
        out[b] = r
    model.to("cpu")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["replot"]:
        replot(Path(argv[1]) if len(argv) > 1 else RESULTS / "serving.json")
        return 0
    if argv[:1] == ["fetch-perf-analyzer"]:
        print(fetch_perf_analyzer())
        return 0
    if argv[:1] == ["load"]:
        ap = argparse.ArgumentParser(prog="bench.serving load")
        ap.add_argument("--target", choices=["triton", "fastapi"], required=True)
        ap.add_argument("--url", required=True)
        ap.add_argument("--inputs", required=True)
        ap.add_argument("--concurrency", type=int, default=1)
        ap.add_argument("--duration", type=float, default=8.0)
        ap.add_argument("--warmup", type=float, default=2.0)
        ap.add_argument("--seed", type=int, default=0)
        ap.add_argument("--k", type=int, default=10)
        ap.add_argument("--model-name", default="fsrec")
        return load_main(ap.parse_args(argv[1:]))

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--model", default=None, help="checkpoint folder (default: pretrain a quick one)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs of the quick pretraining")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (GPU host: writes serving-gpu.json)")
    ap.add_argument("--gpu", action="store_true", help="same as --device cuda")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--duration", type=float, default=8.0, help="measured seconds per server point")
    ap.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per server point")
    ap.add_argument("--ort-seconds", type=float, default=3.0, help="seconds per in-process ORT point")
    ap.add_argument("--load-generator", choices=["auto", "perf_analyzer", "async"], default="auto")
    ap.add_argument("--perf-analyzer", default=None, help="path of perf_analyzer (tritonclient 2.51 wheel)")
    ap.add_argument("--no-int8", action="store_true", help="skip the INT8 in-process measurement")
    ap.add_argument("--skip", nargs="*", default=[], choices=["ort", "triton", "fastapi"])
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None, help="results JSON (default bench/results/serving[-gpu].json)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = BenchConfig(
        dataset=args.dataset, model=args.model, epochs=args.epochs,
        device="cuda" if args.gpu else args.device, batches=tuple(args.batches),
        concurrency=tuple(args.concurrency), duration=args.duration, warmup=args.warmup,
        ort_seconds=args.ort_seconds, load_generator=args.load_generator,
        perf_analyzer=args.perf_analyzer, int8=not args.no_int8, skip=tuple(args.skip),
        workdir=args.workdir, out=args.out, seed=args.seed,
    )
    command = "python -m bench.serving " + shlex.join(argv) if argv else "python -m bench.serving"
    run(cfg, command.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
