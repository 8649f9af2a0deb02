"""Serving benchmark, part 2 of 3: the measured points (servers, traffic, in-process limit).

Every point runs :func:`bench.serving_load.closed_loop` (servers: in a separate load process;
in-process ONNX Runtime: here) on the same traffic: the real history lengths of a data set's
users, one user per request.

- ``triton-cpu-varlen``: tritonserver on the ``cpu`` repository (python backend, ragged
  ``item_ids``), each request at its history's own length;
- ``triton-cpu``: the same server, every request left-padded to ``max_seq_len`` (what every
  request cost before real-length serving);
- ``fastapi-torch``: ``bench/fastapi_server.py`` (FastAPI + PyTorch, one request per forward
  pass, the history at its own length, ``torch.inference_mode``);
- ``ort-inprocess``: ONNX Runtime in this process on the same graph, the same bucketing as the
  python model, at the mean batch Triton's dynamic batcher formed (``instance_count`` threads,
  each with its own 1-thread session: Triton's instances x threads).

Models are randomly initialised with the data set's recommended configuration: serving speed
does not depend on the weights.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .serving_load import closed_loop

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ServingConfig:
    datasets: tuple = ("ml-100k", "beauty")  # traffic + model configuration of each
    concurrency: tuple = (1, 16)  # closed-loop concurrency of the server points
    seconds: float = 6.0  # measured seconds per point
    rounds: int = 3  # each server point repeated, methods interleaved; the median is reported
    warmup: float = 2.0  # unmeasured seconds before each point
    methods: tuple = ("triton-cpu-varlen", "triton-cpu", "fastapi-torch", "ort-inprocess")
    max_users: int = 2000  # traffic histories per data set (sampled when there are more)
    seed: int = 0  # model init and traffic seed
    workdir: str = "/tmp/fsrec-bench-serving"  # scratch folder (models, exports, repositories, logs)
    spec_overrides: dict = field(default_factory=dict)  # RepositorySpec fields changed for this run
    notes: list = field(default_factory=list)  # filled during the run


@dataclass
class Traffic:
    dataset: str  # data set name
    histories: list  # index histories (newest last, at most max_seq_len items)
    model_config: dict  # FsRecConfig kwargs (recommended configuration + num_items)
    item_map: object  # IdMap of the data set


def load_traffic(dataset: str, max_users: int, seed: int) -> Traffic:
    """ML-100K: the cold (held-out) users, as the issue asks; other data sets: every user."""
    from fsrec_serve.data import SplitConfig, load_dataset, make_splits
    from fsrec_serve.training import recommended_config

    splits = make_splits(load_dataset(dataset), SplitConfig(seed=0))
    users = splits.cold_users if dataset == "ml-100k" else list(splits.cold_users or []) + list(splits.warm)
    rec = recommended_config(splits, "cloze" if dataset == "ml-100k" else "causal").model
    L = int(rec["max_seq_len"])
    hist = [list(u.items)[-L:] for u in users if len(u.items)]
    if len(hist) > max_users:
        idx = np.random.default_rng(seed).choice(len(hist), size=max_users, replace=False)
        hist = [hist[i] for i in sorted(idx)]
    cfg = {k: v for k, v in rec.items() if k not in ("mask_prob",)}
    return Traffic(dataset, hist, {**cfg, "num_items": len(splits.item_map)}, splits.item_map)


def prepare(tr: Traffic, work: Path, seed: int) -> tuple[Path, Path]:
    """(checkpoint dir, export dir) of a randomly initialised model of the data set's shape."""
    import torch

    from exporters.export import export_onnx
    from fsrec_serve.model import FsRecConfig, FsRecModel

    ckpt, exp = work / "model", work / "export"
    if not (exp / "model.onnx").exists():
        torch.manual_seed(seed)
        model = FsRecModel(FsRecConfig(**tr.model_config)).eval()
        model.item_map = tr.item_map
        model.save_pretrained(ckpt)
        export_onnx(model, exp, validate_with=tr.histories[:64], source="bench: random init")
    return ckpt, exp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_point(target: str, url: str, hist_file: Path, conc: int, cfg: ServingConfig, out: Path,
               pad_to: int = 0) -> dict:
    """One point through the load process (``python -m bench.serving_load``)."""
    cmd = [sys.executable, "-m", "bench.serving_load", "--target", target, "--url", url,
           "--histories", str(hist_file), "--concurrency", str(conc), "--seconds", str(cfg.seconds),
           "--warmup", str(cfg.warmup), "--out", str(out), "--pad-to", str(pad_to)]
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=cfg.seconds + cfg.warmup + 120)
    return json.loads(out.read_text())


def merge_rounds(runs: list[dict]) -> dict:
    """Repeated runs of one point -> the median of each metric, with ``<metric>_std`` and ``n``
    (a shared machine: the median of interleaved rounds, not one lucky or unlucky run)."""
    out = dict(runs[-1])
    for m in ("throughput_rps", "p50_ms", "p95_ms", "p99_ms", "mean_batch", "server_cpu_ms_per_req"):
        vals = [r[m] for r in runs if r.get(m) is not None]
        if vals:
            out[m] = float(np.median(vals))
            out[f"{m}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    out["n"] = len(runs)
    out["errors"] = sum(r.get("errors", 0) for r in runs)
    return out


def group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of the live processes of process group ``pgid`` (a server and
    its python-backend stubs): unlike wall-clock throughput, CPU per request does not depend on
    what else runs on a shared machine."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid:  # pgrp; utime and stime are fields 14 and 15 of stat
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _counts(url_http: str) -> tuple[int, int]:
    with urllib.request.urlopen(f"{url_http}/v2/models/fsrec/stats", timeout=10) as r:
        s = json.loads(r.read())["model_stats"]
    return sum(int(m.get("inference_count", 0)) for m in s), sum(int(m.get("execution_count", 0)) for m in s)


def measure_triton(tr: Traffic, export: Path, work: Path, cfg: ServingConfig, hist_file: Path,
                   spec_overrides: dict | None = None, pads: dict | None = None,
                   concurrency: tuple | None = None) -> dict:
    """{(method, conc): point} for one server on the cpu repository (``pads``: method -> width)."""
    from exporters.repository import DEFAULT_SPEC, build_model_repository
    from fsrec_serve.serving import serve

    spec = dataclasses.replace(DEFAULT_SPEC, **{**cfg.spec_overrides, **(spec_overrides or {})})
    tag = "-".join(f"{k}{v}" for k, v in sorted((spec_overrides or {}).items())) or "default"
    repo = work / f"repo-{tag}".replace(" ", "").replace(",", "_").replace("[", "").replace("]", "")
    if repo.exists():
        import shutil

        shutil.rmtree(repo)
    build_model_repository(repo, export, spec, target="cpu")
    L = int(tr.model_config["max_seq_len"])
    pads = pads or {"triton-cpu-varlen": 0, "triton-cpu": L}
    runs: dict = {}
    with serve(repo, http_port=0, grpc_port=0, metrics_port=0, startup_timeout=180,
               log_file=work / f"tritonserver-{tag}.log") as server:
        for conc in concurrency or cfg.concurrency:
            for r in range(cfg.rounds):
                order = list(pads.items())[:: 1 if r % 2 == 0 else -1]
                for method, pad in order:  # interleaved, order alternating: a busy spell hits every method alike
                    before, cpu0 = _counts(server.url_http), group_cpu_s(server.pid)
                    p = load_point("triton", server.url_grpc, hist_file, conc, cfg,
                                   work / f"{method}-{tag}-c{conc}-r{r}.json", pad_to=pad)
                    inf, ex = (a - b for a, b in zip(_counts(server.url_http), before))
                    p["mean_batch"] = inf / ex if ex else None
                    # over warm-up + measured window: every request the server answered then
                    p["server_cpu_ms_per_req"] = 1000 * (group_cpu_s(server.pid) - cpu0) / max(1, inf)
                    runs.setdefault((method, conc), []).append(p)
    return {k: merge_rounds(v) for k, v in runs.items()}


def measure_fastapi(ckpt: Path, work: Path, cfg: ServingConfig, hist_file: Path) -> dict:
    port = _free_port()
    log = open(work / "fastapi.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "bench.fastapi_server", "--model", str(ckpt), "--port", str(port)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"the FastAPI server did not start: see {work / 'fastapi.log'}") from None
                time.sleep(0.5)
        out = {}
        for c in cfg.concurrency:
            runs = []
            for r in range(cfg.rounds):
                cpu0 = group_cpu_s(proc.pid)
                p = load_point("fastapi", url, hist_file, c, cfg, work / f"fastapi-c{c}-r{r}.json")
                answered = p.get("answered") or p["requests"] * (cfg.seconds + cfg.warmup) / cfg.seconds
                p["server_cpu_ms_per_req"] = 1000 * (group_cpu_s(proc.pid) - cpu0) / max(1, answered)
                runs.append(p)
            out[("fastapi-torch", c)] = merge_rounds(runs)
        return out
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()


def measure_ort(tr: Traffic, export: Path, cfg: ServingConfig, batch: int, threads: int) -> dict:
    """In-process ONNX Runtime at ``batch`` users per call: ``threads`` threads, each with its own
    1-thread session (Triton's instances x threads), the python model's bucketing."""
    from exporters.runtime import make_session
    from exporters.triton_config import DEFAULT_SPEC
    from exporters.triton_python import model as pm
    from fsrec_serve.contract import INPUT_ITEM_IDS, INPUT_USER_PARAMS, OUTPUT_NAMES
    from fsrec_serve.idmap import pad_left

    L = int(tr.model_config["max_seq_len"])
    spec = dataclasses.replace(DEFAULT_SPEC, max_seq_len=L, **cfg.spec_overrides)
    buckets = tuple(spec.buckets())
    calls = [tr.histories[i:i + batch] for i in range(0, len(tr.histories) - batch + 1, batch)] or [tr.histories]

    def make():
        sess = make_session(export, intra_op_threads=1)
        h = int(next(i.shape[1] for i in sess.get_inputs() if i.name == INPUT_USER_PARAMS))

        def send(rows: list) -> None:
            for width, members in pm.plan_groups([len(r) for r in rows], buckets):
                x = pad_left([rows[i] for i in members], width)
                sess.run(list(OUTPUT_NAMES), {INPUT_ITEM_IDS: x, INPUT_USER_PARAMS: np.zeros((len(members), h), np.float32)})

        return send

    runs = []
    for r in range(cfg.rounds):
        cpu0 = time.process_time()
        p = closed_loop(make, calls, threads, cfg.seconds, cfg.warmup, seed=cfg.seed + r)
        p["server_cpu_ms_per_req"] = 1000 * (time.process_time() - cpu0) / max(1, p["answered"] * len(calls[0]))
        p["throughput_rps"] *= len(calls[0])  # users per second
        p["batch"] = len(calls[0])
        runs.append(p)
    return merge_rounds(runs)


def run_dataset(dataset: str, cfg: ServingConfig) -> tuple[dict, Traffic]:
    """Every configured method on one data set's traffic -> {(method, concurrency): point}."""
    work = Path(cfg.workdir) / dataset
    work.mkdir(parents=True, exist_ok=True)
    tr = load_traffic(dataset, cfg.max_users, cfg.seed)
    lengths = np.asarray([len(h) for h in tr.histories])
    cfg.notes.append(f"{dataset} traffic: {len(lengths)} users, history length median {np.median(lengths):.0f}, "
                     f"p90 {np.percentile(lengths, 90):.0f}, max {lengths.max()} (capped at max_seq_len "
                     f"{tr.model_config['max_seq_len']})")
    ckpt, export = prepare(tr, work, cfg.seed)
    hist_file = work / "histories.json"
    hist_file.write_text(json.dumps(tr.histories))
    points: dict = {}
    triton_methods = {m: p for m, p in {"triton-cpu-varlen": 0, "triton-cpu": int(tr.model_config["max_seq_len"])}.items()
                      if m in cfg.methods}
    if triton_methods:
        points.update(measure_triton(tr, export, work, cfg, hist_file, pads=triton_methods))
    if "fastapi-torch" in cfg.methods:
        points.update(measure_fastapi(ckpt, work, cfg, hist_file))
    if "ort-inprocess" in cfg.methods:
        from exporters.triton_config import DEFAULT_SPEC

        conc = max(cfg.concurrency)
        mb = (points.get(("triton-cpu-varlen", conc)) or {}).get("mean_batch") or 1.0
        batch = max(1, int(round(mb)))
        threads = int(cfg.spec_overrides.get("instance_count", DEFAULT_SPEC.instance_count))
        points[("ort-inprocess", conc)] = measure_ort(tr, export, cfg, batch, threads)
    return points, tr
