"""A tritonserver that dies during start-up: the error names the signal (a negative exit code),
and for SIGSEGV the known cause (Triton 2.51 crashes on a model warm-up the model refuses).
No server needed: the "server" here is a real process that kills itself with the signal."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from fsrec_serve.errors import ServerStartError
from fsrec_serve.serving.ports import ServerPorts
from fsrec_serve.serving.process import TritonServer, startup_exit_message


def test_sigsegv_is_named_with_the_warmup_hint():
    msg = startup_exit_message(-11)
    assert msg.startswith("tritonserver died of SIGSEGV (exit code -11) during start-up")
    assert "model_warmup" in msg and "config.pbtxt" in msg and "2.51" in msg


def test_other_signals_are_named_without_the_warmup_hint():
    assert startup_exit_message(-9) == "tritonserver died of SIGKILL (exit code -9) during start-up"
    assert startup_exit_message(-6) == "tritonserver died of SIGABRT (exit code -6) during start-up"
    assert startup_exit_message(-200) == "tritonserver died of signal 200 (exit code -200) during start-up"


def test_ordinary_exit_codes_keep_the_plain_message():
    assert startup_exit_message(1) == "tritonserver exited with code 1 during start-up"
    assert startup_exit_message(0) == "tritonserver exited with code 0 during start-up"


@pytest.mark.timeout(60)
def test_start_up_crash_raises_with_the_signal_and_the_last_log_lines(tmp_path: Path):
    # a process that logs like Triton, then dies of SIGSEGV (what 2.51 does on a refused warm-up)
    code = ("import os, signal, sys\n"
            "print('I1202 16:00:00.000 model_lifecycle.cc:472] loading: fsrec:1', flush=True)\n"
            "print('I1202 16:00:00.100 python_be.cc:2248] TRITONBACKEND_ModelInstanceInitialize: fsrec_0_0', "
            "flush=True)\n"
            "os.kill(os.getpid(), signal.SIGSEGV)\n")
    log_path = tmp_path / "tritonserver.log"
    server = TritonServer([sys.executable, "-c", code], env={}, host="127.0.0.1",
                          ports=ServerPorts(http=9, grpc=9, metrics=0), log_path=log_path,
                          repository=tmp_path, runtime_repository=tmp_path, models=["fsrec"],
                          startup_timeout=30, stop_timeout=2)
    with pytest.raises(ServerStartError) as e:
        server.start().wait_ready()
    msg = str(e.value)
    assert server.returncode == -signal.SIGSEGV
    assert "died of SIGSEGV (exit code -11) during start-up" in msg and "model_warmup" in msg
    assert "exited with code -11" not in msg
    assert f"last log lines ({log_path})" in msg
    assert "TRITONBACKEND_ModelInstanceInitialize: fsrec_0_0" in msg  # the server's last words are quoted
