"""Serving cost, the measured points: a Triton model driven by perf_analyzer, the in-process
ONNX Runtime limit, the FastAPI + PyTorch baseline, serving by user id (SQLite store).

Every point returns ``{"cpu_ms_per_seq", "throughput_rps", "p99_ms", ...}``: the CPU of the
serving process tree (:func:`bench.serving_cost_parts.tree_cpu`) over the window in which it
answered ``sequences`` sequences, divided by them.
"""

from __future__ import annotations

import json
import resource
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .serving_cost_parts import delta, metric_value, parse_pa_csv, thread_cpu, tree_cpu

PA_WRAPPER = Path.home() / ".cache" / "fsrec-serve" / "perf_analyzer" / "run-perf-analyzer"
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class LoadSpec:
    """How perf_analyzer loads one point."""

    perf_analyzer: str = str(PA_WRAPPER)  # scripts/perf_analyzer.sh writes it
    interval_ms: int = 3000  # --measurement-interval: one measurement window
    max_trials: int = 4  # windows at most; the last 3 are reported
    # windows are accepted when within this % of each other: on a shared 2-core machine they
    # never agree within perf_analyzer's default 10 %, and the CPU count covers the whole run anyway
    stability_pct: int = 1000
    timeout_s: float = 180.0  # one perf_analyzer run


def _counters(url_metrics: str, model: str) -> dict:
    """Triton's sequence counters of ``model``: nv_inference_count counts sequences (a request of
    batch n counts n; a dynamic batch of k requests counts the sum), nv_inference_exec_count
    counts model executions (batches), nv_inference_request_success requests."""
    for attempt in range(20):  # the metrics service starts a moment after the server is ready
        try:
            with urllib.request.urlopen(url_metrics, timeout=10) as r:
                text = r.read().decode()
            break
        except OSError:
            if attempt == 19:
                raise
            time.sleep(0.5)
    return {k: metric_value(text, f"nv_{k}", model)
            for k in ("inference_count", "inference_exec_count", "inference_request_success")}


def perf_analyzer_point(server, model: str, data_file: Path, conc: int, load: LoadSpec, out_csv: Path,
                        protocol: str = "grpc") -> dict:
    """One perf_analyzer run at concurrency ``conc``; server CPU and sequences over its whole run."""
    url = server.url_grpc if protocol == "grpc" else server.url_http.split("://", 1)[-1]
    cmd = [load.perf_analyzer, "-m", model, "-i", protocol, "-u", url, "--concurrency-range", str(conc),
           "--input-data", str(data_file), "--measurement-interval", str(load.interval_ms),
           "--max-trials", str(load.max_trials), "--stability-percentage", str(load.stability_pct),
           "-f", str(out_csv)]
    n0, cpu0, th0 = _counters(server.url_metrics, model), tree_cpu(server.pid), thread_cpu(server.pid)
    ru0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=load.timeout_s)
    wall = time.perf_counter() - t0
    cpu, th = delta(tree_cpu(server.pid), cpu0), delta(thread_cpu(server.pid), th0)
    n = {k: v - n0[k] for k, v in _counters(server.url_metrics, model).items()}
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0 or not out_csv.exists():
        raise RuntimeError(f"perf_analyzer failed ({r.returncode}): {r.stdout[-800:]} {r.stderr[-800:]}")
    p = parse_pa_csv(out_csv.read_text())[0]
    seqs = max(1.0, n["inference_count"])
    p.update(sequences=int(seqs), requests=int(n["inference_request_success"]),
             mean_batch=round(seqs / max(1.0, n["inference_exec_count"]), 2),
             cpu_ms_per_seq=1000 * sum(cpu.values()) / seqs, window_s=round(wall, 2),
             cpu_ms_per_seq_by_process={k: round(1000 * v / seqs, 4) for k, v in cpu.items()},
             cpu_ms_per_seq_by_thread=_top({k: 1000 * v / seqs for k, v in th.items()}),
             client_cpu_ms_per_seq=round(1000 * ((ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime))
                                         / seqs, 4), load="perf_analyzer", protocol_wire=protocol)
    return p


def _top(d: dict, n: int = 8) -> dict:
    """The ``n`` largest entries of ``d``, rounded (where the CPU went)."""
    return {k: round(v, 4) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:n]}


def ort_point(export: Path, histories: list, spec, batch: int, seconds: float) -> dict:
    """In-process ONNX Runtime: the python model's session options (from the rendered config's
    parameters), its bucketing and padding, ``batch`` histories per call, one thread; the CPU of
    this process (time.process_time: every thread of it, ORT's included) per sequence."""
    from exporters.triton_config import model_config
    from exporters.triton_python import model as pm
    import onnxruntime as ort

    cfg = model_config(spec, "cpu")
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    sess = ort.InferenceSession(str(export / "model.onnx"), sess_options=pm.session_options_from(params),
                                providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    h = int(sess.get_inputs()[1].shape[1]) if len(names) > 1 else 0
    outs = [o.name for o in sess.get_outputs()]
    buckets = tuple(spec.buckets())
    calls = [histories[i:i + batch] for i in range(0, len(histories) - batch + 1, batch)] or [histories]

    def one(rows: list) -> None:
        for width, members in pm.plan_groups([len(r) for r in rows], buckets):
            x = np.zeros((len(members), width), np.int64)
            for j, i in enumerate(members):
                x[j, width - len(rows[i]):] = rows[i]
            feed = {names[0]: x}
            if h:
                feed[names[1]] = np.zeros((len(members), h), np.float32)
            sess.run(outs, feed)

    for c in calls[:4]:  # warm-up: every shape once
        one(c)
    lat, seqs, i = [], 0, 0
    c0, t0 = time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        t = time.perf_counter()
        one(calls[i % len(calls)])
        lat.append(time.perf_counter() - t)
        seqs += len(calls[i % len(calls)])
        i += 1
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    return {"cpu_ms_per_seq": 1000 * cpu / seqs, "throughput_rps": seqs / wall,
            "p99_ms": float(np.percentile(lat, 99) * 1000), "p50_ms": float(np.percentile(lat, 50) * 1000),
            "sequences": seqs, "call_batch": batch, "window_s": round(wall, 2), "load": "in-process loop",
            "latency_of": f"one call of {batch} sequences"}


def fastapi_point(ckpt: Path, work: Path, hist_file: Path, conc: int, seconds: float, warmup: float) -> dict:
    """FastAPI + PyTorch (it speaks its own JSON, not the KServe v2 protocol perf_analyzer
    needs): the Python closed-loop load of bench.serving_load in a separate process; the server
    process's own CPU per answered request (one sequence each)."""
    from .serving_measure import ServingConfig, measure_fastapi

    cfg = ServingConfig(concurrency=(conc,), seconds=seconds, warmup=warmup, rounds=1)
    p = measure_fastapi(ckpt, work, cfg, hist_file)[("fastapi-torch", conc)]
    return {"cpu_ms_per_seq": p["server_cpu_ms_per_req"], "throughput_rps": p["throughput_rps"],
            "p99_ms": p["p99_ms"], "p50_ms": p["p50_ms"], "sequences": int(p.get("answered") or 0),
            "errors": int(p.get("errors", 0)), "load": "python closed loop (bench.serving_load)"}


def seed_store(store_url: str, histories: list) -> list[str]:
    """Write each history as a user's events into the store and apply them (the state
    ``fsrec_user`` looks up) -> the user ids."""
    from fsrec_serve.store import Event, UserKeyer, open_store

    keyer, users = UserKeyer(), [f"cost-user-{i}" for i in range(len(histories))]
    with open_store(store_url) as store:
        for u, h in zip(users, histories):
            k = keyer.key(u)
            store.append([Event(f"{u}-{j}", k, int(it), float(j)) for j, it in enumerate(h)])
        while batch := store.pending("bench", 5000):
            store.apply("bench", batch)
    return users


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path
