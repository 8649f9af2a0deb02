"""The pure parts of bench/serving_cost: CPU of a real process tree from /proc, perf_analyzer's
CSV (a real output), its input data, Triton's counters."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from bench.serving_cost_parts import (
    delta,
    descendants,
    metric_value,
    pa_input_data,
    pa_user_data,
    parse_pa_csv,
    thread_cpu,
    tree_cpu,
)

# a process that burns ~`burn` CPU seconds in a (still live) thread, starts a child that does the same, prints
# its own process_time and its child's, then waits for stdin to close
BURNER = textwrap.dedent("""
    import subprocess, sys, threading, time

    done, stop = threading.Event(), threading.Event()

    def burn(s):
        t = time.process_time()
        while time.process_time() - t < s:
            pass
        done.set()
        stop.wait()  # stays alive: thread_cpu reads live threads

    burn_s, depth = float(sys.argv[1]), int(sys.argv[2])
    child = None
    if depth:
        child = subprocess.Popen([sys.executable, "-c", sys.argv[3], sys.argv[1], "0", sys.argv[3]],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        child_cpu = float(child.stdout.readline())
    th = threading.Thread(target=burn, args=(burn_s,))
    th.start()
    done.wait()
    print(time.process_time() + (child_cpu if child else 0.0), flush=True)
    sys.stdin.read()
    stop.set()
    if child:
        child.stdin.close()
        child.wait()
""")

# real perf_analyzer 2.51 output (-f csv) of the fsrec_user model at concurrency 16
PA_CSV = """Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,\
Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency
16,1061.16,6,3429,1338,93,9609,536,5,12000,24579,40029,75093
"""


def test_tree_cpu_counts_a_process_and_its_child_and_nothing_else():
    proc = subprocess.Popen([sys.executable, "-c", BURNER, "0.4", "1", BURNER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        reported = float(proc.stdout.readline())  # both processes' own process_time, startup included
        tree = descendants(proc.pid)
        assert len(tree) == 2 and tree[0] == proc.pid
        cpu = tree_cpu(proc.pid)
        threads = thread_cpu(proc.pid)
        assert reported >= 0.8
        assert sum(cpu.values()) == pytest.approx(reported, abs=0.06)  # clock ticks of 10 ms, a few reads
        assert sum(threads.values()) == pytest.approx(sum(cpu.values()), abs=0.06)
        assert all("/" in k for k in threads)  # "process/thread"
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def test_delta_counts_new_keys_from_zero():
    assert delta({"a": 3.0, "b": 1.5}, {"a": 1.0}) == {"a": 2.0, "b": 1.5}


def test_parse_pa_csv_real_output():
    (row,) = parse_pa_csv(PA_CSV)
    assert row["concurrency"] == 16
    assert row["throughput_rps"] == pytest.approx(1061.16)
    assert row["p99_ms"] == pytest.approx(75.093)  # microseconds -> ms
    assert row["p50_ms"] == pytest.approx(12.0)
    assert row["queue_us"] == 1338 and row["compute_infer_us"] == 9609 and row["compute_output_us"] == 536
    with pytest.raises(ValueError):
        parse_pa_csv("Concurrency,Client Send\n")


def test_pa_input_data_real_length_and_padded():
    real = pa_input_data([[5, 6, 7], [9]], "item_ids")["data"]
    assert real[0]["item_ids"] == {"content": [5, 6, 7], "shape": [3]}
    assert real[1]["item_ids"]["shape"] == [1]
    padded = pa_input_data([[5, 6, 7], [1, 2, 3, 4, 5, 6]], "item_ids", pad_to=4)["data"]
    assert padded[0]["item_ids"] == {"content": [0, 5, 6, 7], "shape": [4]}  # left-padded with 0
    assert padded[1]["item_ids"]["content"] == [3, 4, 5, 6]  # the newest items kept
    assert pa_user_data(["u1"], "user_id") == {"data": [{"user_id": {"content": ["u1"], "shape": [1]}}]}


def test_metric_value_sums_versions_of_one_model_only():
    text = textwrap.dedent("""
        # HELP nv_inference_count Number of inferences performed (does not include cached requests)
        # TYPE nv_inference_count counter
        nv_inference_count{model="fsrec",version="1"} 7834
        nv_inference_count{model="fsrec",version="2"} 6
        nv_inference_count{model="fsrec_user",version="1"} 3939
        nv_inference_exec_count{model="fsrec",version="1"} 1396
    """)
    assert metric_value(text, "nv_inference_count", "fsrec") == 7840
    assert metric_value(text, "nv_inference_count", "fsrec_user") == 3939
    assert metric_value(text, "nv_inference_exec_count", "fsrec") == 1396
    assert metric_value(text, "nv_inference_count", "other") == 0
