"""The ``fsrec`` entry point: every command module must load, and library noise stays hidden
unless -v."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

NOISE = """
import logging, warnings
from fsrec_serve.cli import configure_output
configure_output({verbose})
TracerWarning = type("TracerWarning", (Warning,), {{"__module__": "torch.jit._trace"}})
OwnWarning = type("ExportDriftWarning", (UserWarning,), {{"__module__": "exporters.export"}})
logging.warning("Axis 1 is out-of-range for weight 'w' with rank 1")  # onnxruntime logs on the root logger
logging.getLogger("optimum.exporters").warning("library chatter")
logging.getLogger("onnxruntime").error("a library ERROR always shows")
logging.getLogger("fsrec_serve.pipeline").info("1/7 step summary")
warnings.warn("Converting a tensor to a Python boolean", TracerWarning)
warnings.warn("old API", DeprecationWarning)
warnings.warn("export drifted by 1e-3", OwnWarning)
"""


def _run(verbose: bool) -> str:
    out = subprocess.run([sys.executable, "-c", NOISE.format(verbose=verbose)], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stderr


def test_library_warnings_are_hidden_without_verbose():
    err = _run(False)
    assert "1/7 step summary" in err and "a library ERROR always shows" in err and "export drifted" in err
    for noise in ("out-of-range", "library chatter", "Converting a tensor", "old API"):
        assert noise not in err, err


def test_verbose_shows_everything():
    err = _run(True)
    for line in ("out-of-range", "library chatter", "Converting a tensor", "old API", "1/7 step summary"):
        assert line in err, err


def test_a_command_module_that_fails_to_import_is_an_error(monkeypatch):
    from fsrec_serve import cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, "no_such_area"])
    with pytest.raises(ImportError, match="fsrec_serve.commands.no_such_area failed to import"):
        cli.build_parser()


def test_every_command_registers():
    from fsrec_serve.cli import build_parser

    text = build_parser().format_help()
    for cmd in ("serve", "recommend", "loadtest", "rollout", "models", "pipeline", "export", "train"):
        assert cmd in text
