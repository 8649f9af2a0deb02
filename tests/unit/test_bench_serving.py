"""The serving benchmark's pieces (bench/serving_load.py, bench/serving_report.py): the one
closed-loop load function on a real sleeping sender, request widths, result rows and the goal
ratios judged with hand-computed numbers."""

from __future__ import annotations

import time

import pytest

from bench.serving_load import closed_loop, width_of
from bench.serving_report import goal_rows, markdown_table, result_rows


def test_closed_loop_keeps_concurrency_requests_in_flight():
    def make():
        def send(h):
            time.sleep(0.01)  # a 10 ms "server"
            if h == "bad":
                raise ValueError("refused")

        return send

    p = closed_loop(make, ["a", "b", "c", "bad"], concurrency=4, seconds=0.6, warmup=0.2)
    # 4 workers x 10 ms per request -> about 400 requests/s, 3/4 of them answered
    assert 200 <= p["throughput_rps"] <= 320, p
    assert p["errors"] > 0 and "refused" in p["first_error"]
    assert 9.5 <= p["p50_ms"] <= 30 and p["p99_ms"] >= p["p50_ms"] and p["concurrency"] == 4


def test_request_width():
    assert width_of(7, 0, ()) == 7  # its own length
    assert width_of(7, 200, ()) == 200  # padded
    assert [width_of(n, 0, (8, 16)) for n in (1, 8, 9, 16, 17)] == [8, 8, 16, 16, 17]


def _pt(rps, p99):
    return {"throughput_rps": rps, "p50_ms": p99 / 2, "p99_ms": p99}


def test_rows_and_goals_with_hand_computed_ratios():
    points = {
        ("triton-cpu-varlen", 16): {**_pt(900, 20), "mean_batch": 7.6},
        ("triton-cpu", 16): _pt(500, 30),
        ("fastapi-torch", 16): _pt(150, 18),
        ("ort-inprocess", 16): {**_pt(1000, 5), "batch": 8},
        ("triton-cpu-varlen", 1): _pt(100, 3),
    }
    rows = result_rows(points, "beauty")
    assert len(rows) == 5 * 3 and {r["metric"] for r in rows} == {"throughput_rps", "p50_ms", "p99_ms"}
    mb = [r for r in rows if r["method"] == "triton-cpu-varlen" and r["concurrency"] == 16]
    assert all(r["mean_batch"] == 7.6 for r in mb)
    g, lines = goal_rows(points, "beauty")
    got = {r["method"]: r for r in g}
    assert got["triton-cpu-varlen/triton-cpu"]["mean"] == 1.8  # 900 / 500
    assert not got["triton-cpu-varlen/triton-cpu"]["met"]  # beauty goal 3x
    fa = got["triton-cpu-varlen/fastapi-torch"]
    assert fa["mean"] == 6.0 and not fa["met"]  # 6x, but p99 20 > 18 ms
    assert got["triton-cpu-varlen/ort-inprocess"]["mean"] == 0.9 and got["triton-cpu-varlen/ort-inprocess"]["met"]
    assert all(r["concurrency"] == 16 for r in g)
    assert sum("MISSED" in x for x in lines) == 2 and "p99 20.0 > 18.0 ms" in lines[1]
    ml = {r["method"]: r for r in goal_rows(points, "ml-100k")[0]}
    assert ml["triton-cpu-varlen/triton-cpu"]["met"]  # 1.8 >= 1.5 and p99 20 <= 30
    table = markdown_table(rows)
    assert "| beauty | triton-cpu-varlen | 16 | 900 | 10.00 | 20.00 |" in table


@pytest.mark.parametrize("path", ["bench/serving.py", "bench/serving_load.py", "bench/serving_measure.py",
                                  "bench/serving_report.py", "bench/gpu_serving.py"])
def test_bench_serving_modules_are_small(path):
    from pathlib import Path

    assert len((Path(__file__).resolve().parents[2] / path).read_text().splitlines()) <= 400
