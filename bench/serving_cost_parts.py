"""Serving cost, the pure parts: CPU of a process tree from /proc, perf_analyzer's CSV and
input data, Triton's sequence counters.

CPU is counted where it is spent: utime + stime of the server process and of every descendant
(tritonserver's ``triton_python_backend_stub`` children, which run the models), read from
``/proc/<pid>/stat`` before and after a measured window. The load generator's own CPU is never
in it, so a client on the same cores changes the wall-clock numbers but not the CPU per sequence.
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

TICK = os.sysconf("SC_CLK_TCK")  # clock ticks per second of utime/stime in /proc


def _stat_fields(path: Path) -> tuple[str, list[str]] | None:
    """(comm, the fields after it) of a /proc stat file, or None when the task is gone."""
    try:
        text = path.read_text()
    except OSError:
        return None
    return text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()


def descendants(pid: int) -> list[int]:
    """``pid`` and every live descendant of it (children found by their parent pid, field 4)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            st = _stat_fields(d / "stat")
            if st:
                children.setdefault(int(st[1][1]), []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def tree_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of ``pid`` and its live descendants, summed by process name
    (``tritonserver``, ``triton_python_b`` ...: the kernel keeps 15 characters of a name)."""
    out: dict[str, float] = {}
    for p in descendants(pid):
        st = _stat_fields(Path(f"/proc/{p}/stat"))
        if st:  # utime and stime: fields 14 and 15 of stat (11 and 12 after the name)
            out[st[0]] = out.get(st[0], 0.0) + (int(st[1][11]) + int(st[1][12])) / TICK
    return out


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of the threads of ``pid`` and its descendants, summed by ``process/thread``
    name (gRPC front end, scheduler, model instances ... : where the server's CPU goes). Live
    threads only: an exited thread's CPU stays in its process's total (:func:`tree_cpu`)."""
    out: dict[str, float] = {}
    for p in descendants(pid):
        proc = _stat_fields(Path(f"/proc/{p}/stat"))
        if not proc:
            continue
        for t in Path(f"/proc/{p}/task").glob("*"):
            st = _stat_fields(t / "stat")
            if st:
                name = f"{proc[0]}/{re.sub(r'[0-9]+$', '#', st[0])}"  # "grpc_worker7" -> "grpc_worker#"
                out[name] = out.get(name, 0.0) + (int(st[1][11]) + int(st[1][12])) / TICK
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """Per-key difference of two CPU snapshots (keys that appeared count from 0)."""
    return {k: after[k] - before.get(k, 0.0) for k in after}


def parse_pa_csv(text: str) -> list[dict]:
    """perf_analyzer ``-f`` CSV -> one dict per load level: ``concurrency``, ``throughput_rps``,
    ``p50_ms`` .. ``p99_ms``, ``avg_ms`` and the server-side parts of the latency (``queue_us``,
    ``compute_input_us``, ``compute_infer_us``, ``compute_output_us``, ``network_server_us``).
    perf_analyzer writes latencies in microseconds."""
    names = {"Concurrency": "concurrency", "Request Rate": "request_rate", "Inferences/Second": "throughput_rps",
             "Client Send": "client_send_us", "Network+Server Send/Recv": "network_server_us",
             "Server Queue": "queue_us", "Server Compute Input": "compute_input_us",
             "Server Compute Infer": "compute_infer_us", "Server Compute Output": "compute_output_us",
             "Client Recv": "client_recv_us", "Avg latency": "avg_ms"}
    rows = []
    for raw in csv.DictReader(io.StringIO(text.strip())):
        row: dict = {}
        for key, value in raw.items():
            if key is None or value in (None, ""):
                continue
            key = key.strip()
            m = re.fullmatch(r"p(\d+) latency", key)
            if m:
                row[f"p{m.group(1)}_ms"] = float(value) / 1000.0
            elif key in names:
                row[names[key]] = float(value) / (1000.0 if key == "Avg latency" else 1.0)
        if "throughput_rps" in row:
            if "concurrency" in row:
                row["concurrency"] = int(row["concurrency"])
            rows.append(row)
    if not rows:
        raise ValueError(f"no perf_analyzer rows in: {text[:200]!r}")
    return rows


def pa_input_data(histories: Sequence[Sequence[int]], input_name: str, pad_to: int = 0) -> dict:
    """perf_analyzer ``--input-data`` JSON: one request per history (batch 1), each at its own
    length (``pad_to`` 0) or left-padded with 0 to ``pad_to``; the shape given per request (the
    input is ragged: dims [-1])."""
    data = []
    for h in histories:
        row = [int(i) for i in h]
        if pad_to:
            row = [0] * (pad_to - len(row)) + row[-pad_to:]
        data.append({input_name: {"content": row, "shape": [len(row)]}})
    return {"data": data}


def pa_user_data(user_ids: Iterable[str], input_name: str) -> dict:
    """perf_analyzer ``--input-data`` JSON of a BYTES input: one user id per request."""
    return {"data": [{input_name: {"content": [str(u)], "shape": [1]}} for u in user_ids]}


def metric_value(text: str, name: str, model: str) -> float:
    """The sum over versions of Triton's Prometheus counter ``name`` for ``model`` (/metrics)."""
    total = 0.0
    pat = re.compile(rf'^{re.escape(name)}\{{([^}}]*)\}}\s+(\S+)$')
    for line in text.splitlines():
        m = pat.match(line.strip())
        if m and re.search(rf'(^|,)model="{re.escape(model)}"', m.group(1)):
            total += float(m.group(2))
    return total
