"""Serving benchmark, part 1 of 3: the load. ONE closed-loop load function for every target.

    python -m bench.serving_load --target triton --url 127.0.0.1:8001 --histories h.json \
        --concurrency 16 --seconds 6 --warmup 2 --out point.json [--pad-to 200]

:func:`closed_loop` keeps ``concurrency`` requests in flight (each worker sends its next request
as soon as the previous answer arrives) for ``warmup + seconds`` and records the latency of every
request that started inside the measured window. What a request is comes from a *sender
factory*: ``make_sender() -> send(history) -> None`` (one per worker: its own connection).

Targets (one user per request, the history as item indices, newest last):

- ``triton``: gRPC ``tritonclient`` to tritonserver; ``--pad-to 0`` sends each history at its
  own length (``triton-cpu-varlen``), ``--pad-to N`` left-pads it to N (``triton-cpu``, the padded
  baseline), ``--buckets 16,32,..`` pads to the next bucket (the gpu contract);
- ``fastapi``: HTTP POST of ``{"item_ids": [...], "k": 10}`` to ``bench/fastapi_server.py``.

This process imports neither torch nor onnxruntime, so that it stays small beside the servers
on a shared machine. The in-process ONNX Runtime point (``ort-inprocess``) runs the same
:func:`closed_loop` from :mod:`bench.serving_measure`.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from fsrec_serve.contract import (
    INPUT_ITEM_IDS,
    OUTPUT_TOP_ITEMS,
    OUTPUT_TOP_SCORES,
    TRITON_ITEM_IDS_DTYPE,
)
from fsrec_serve.idmap import pad_left

K = 10  # recommendations asked per request


def closed_loop(make_sender: Callable[[], Callable[[list], None]], histories: Sequence[list],
                concurrency: int, seconds: float, warmup: float = 2.0, seed: int = 0) -> dict:
    """Closed-loop load: ``concurrency`` workers, each with its own sender, walk the histories
    (each worker from its own random offset) for ``warmup + seconds``. Returns
    ``{"requests", "errors", "seconds", "throughput_rps", "p50_ms", "p95_ms", "p99_ms",
    "first_error"}`` over the requests that started after the warm-up."""
    rng = np.random.default_rng(seed)
    offsets = rng.integers(0, len(histories), size=concurrency)
    t_measure = t_end = 0.0  # set once every worker is connected
    lat: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    counted = [0] * concurrency  # answered requests of the warm-up
    first_error: list[str] = []
    ready = threading.Barrier(concurrency + 1)
    go = threading.Event()

    def worker(w: int) -> None:
        send = make_sender()
        ready.wait()
        go.wait()
        i = int(offsets[w])
        while True:
            t0 = time.perf_counter()
            if t0 >= t_end:
                break
            try:
                send(histories[i % len(histories)])
                if t0 >= t_measure:
                    lat[w].append(time.perf_counter() - t0)
                else:
                    counted[w] += 1
            except Exception as e:  # noqa: BLE001 - counted, the first one reported
                errors[w] += 1
                if not first_error:
                    first_error.append(f"{type(e).__name__}: {e}"[:300])
            i += 1

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(concurrency)]
    for t in threads:
        t.start()
    ready.wait()
    t_start = time.perf_counter()  # senders are connected: the clock starts now
    t_measure, t_end = t_start + warmup, t_start + warmup + seconds
    go.set()
    for t in threads:
        t.join(timeout=warmup + seconds + 60)
    answered = sum(len(w) for w in lat) + sum(counted)  # warm-up included: what the server did
    all_lat = np.asarray([x for w in lat for x in w]) * 1000.0
    n = len(all_lat)
    pct = (lambda q: float(np.percentile(all_lat, q))) if n else (lambda q: float("nan"))
    return {"requests": n, "answered": int(answered), "errors": int(sum(errors)), "seconds": seconds,
            "concurrency": concurrency,
            "throughput_rps": n / seconds, "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99),
            "first_error": first_error[0] if first_error else ""}


def width_of(n: int, pad_to: int, buckets: Sequence[int]) -> int:
    """Request width for a history of n items: its own length, a fixed pad, or the next bucket."""
    if pad_to:
        return pad_to
    for b in buckets:
        if n <= b:
            return int(b)
    return n


def triton_sender(url: str, model: str, pad_to: int = 0, buckets: Sequence[int] = (), users: int = 1):
    """Sender factory for tritonserver over gRPC (one client per worker). ``users`` > 1: each
    request carries that many histories (the one given and random others), padded to the
    longest of them."""
    def make():
        import tritonclient.grpc as tc

        client = tc.InferenceServerClient(url)
        outs = [tc.InferRequestedOutput(OUTPUT_TOP_ITEMS), tc.InferRequestedOutput(OUTPUT_TOP_SCORES)]
        rng = np.random.default_rng()
        pool: list = []

        def send(h: list) -> None:
            rows = [h]
            if users > 1:
                pool.append(h)
                del pool[:-256]
                rows += [pool[int(i)] for i in rng.integers(0, len(pool), size=users - 1)]
            x = pad_left(rows, width_of(max(len(r) for r in rows), pad_to, buckets))
            inp = tc.InferInput(INPUT_ITEM_IDS, list(x.shape), TRITON_ITEM_IDS_DTYPE)
            inp.set_data_from_numpy(x)
            r = client.infer(model, [inp], outputs=outs)
            if r.as_numpy(OUTPUT_TOP_ITEMS) is None:
                raise RuntimeError("empty response")

        return send

    return make


def fastapi_sender(url: str):
    """Sender factory for the FastAPI server (one keep-alive HTTP connection per worker)."""
    def make():
        import http.client
        from urllib.parse import urlsplit

        u = urlsplit(url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        headers = {"Content-Type": "application/json"}

        def send(h: list) -> None:
            conn.request("POST", "/recommend", body=json.dumps({"item_ids": h, "k": K}), headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {body[:200]!r}")

        return send

    return make


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="closed-loop load generator (one point)")
    ap.add_argument("--target", choices=["triton", "fastapi"], required=True)
    ap.add_argument("--url", required=True, help="host:port (triton gRPC) or http://host:port (fastapi)")
    ap.add_argument("--model", default="fsrec")
    ap.add_argument("--histories", required=True, help="JSON list of index histories (newest last)")
    ap.add_argument("--pad-to", type=int, default=0, help="triton: left-pad every request to this width")
    ap.add_argument("--buckets", default="", help="triton: pad to the next of these lengths")
    ap.add_argument("--users-per-request", type=int, default=1, help="triton: histories per request")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    hist = json.loads(Path(args.histories).read_text())
    if args.target == "triton":
        buckets = [int(b) for b in args.buckets.split(",") if b]
        make = triton_sender(args.url, args.model, args.pad_to, buckets, args.users_per_request)
    else:
        make = fastapi_sender(args.url)
    res = closed_loop(make, hist, args.concurrency, args.seconds, args.warmup)
    res["users_per_request"] = args.users_per_request
    res["sequences_per_s"] = res["throughput_rps"] * args.users_per_request
    Path(args.out).write_text(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
