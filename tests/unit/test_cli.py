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


# -- fsrec learn: the options a container / several learners need ---------------------------------
def test_learn_options_metrics_host_and_partitions():
    from fsrec_serve.cli import build_parser
    from fsrec_serve.commands.learn import DEFAULT_LEARNER_METRICS_PORT

    p = build_parser()
    a = p.parse_args(["learn", "--model-dir", "m"])
    assert (a.metrics_host, a.metrics_port, a.partitions, a.partition) == ("127.0.0.1", DEFAULT_LEARNER_METRICS_PORT,
                                                                         None, None)
    a = p.parse_args(["learn", "--model-dir", "m", "--metrics-host", "0.0.0.0", "--partitions", "4", "--partition", "3"])
    assert (a.metrics_host, a.partitions, a.partition) == ("0.0.0.0", 4, 3)


def test_learn_refuses_partitions_with_a_sqlite_store(tmp_path, capsys, monkeypatch):
    from fsrec_serve.cli import main

    model = tmp_path / "served"
    model.mkdir()
    (model / "config.json").write_text("{}")  # the store is refused before the model is read
    monkeypatch.delenv("FSREC_STORE", raising=False)
    for store in ([], ["--store", str(tmp_path / "store.sqlite3")]):
        rc = main(["learn", "--model-dir", str(model), *store, "--partitions", "2", "--partition", "1",
                   "--metrics-port", "-1"])
        err = capsys.readouterr().err
        assert rc == 2 and "event partitions need a redis store" in err and "--partition" in err, err
    rc = main(["learn", "--model-dir", str(model), "--partitions", "2", "--partition", "2", "--metrics-port", "-1"])
    assert rc == 2 and "partition" in capsys.readouterr().err


def test_store_url_carries_the_partitions_for_writers_and_learners():
    """?partitions=N in the shared URL: the front models (which only see the URL) and the learners
    hash users into the same streams; a learner's --partitions must agree with it."""
    pytest.importorskip("redis")
    from fsrec_serve.errors import ConfigError
    from fsrec_serve.store import open_store

    writer = open_store("redis://:pw@127.0.0.1:1/0?partitions=4")  # no connection until used
    assert writer.partitions == 4 and writer.owned == [0, 1, 2, 3] and "partitions" not in writer.url
    learner = open_store("redis://127.0.0.1:1/0?partitions=4", owned_partitions=[2])
    assert learner.partitions == 4 and learner.owned == [2]
    sock = open_store("unix:///tmp/fsrec-redis.sock?db=2&partitions=3")
    assert sock.partitions == 3 and sock._r.connection_pool.connection_kwargs["path"] == "/tmp/fsrec-redis.sock"
    assert open_store("redis://127.0.0.1:1/0", partitions=2).partitions == 2
    assert open_store("redis://127.0.0.1:1/0").partitions == 1
    with pytest.raises(ConfigError, match="disagrees") as ei:
        open_store("redis://:pw@127.0.0.1:1/0?partitions=4", partitions=3)
    assert "pw" not in str(ei.value)
    for bad in ("redis://h/0?partitions=0", "redis://h/0?partitions=x", "redis://h/0?partitions=2&partitions=3"):
        with pytest.raises(ConfigError, match="partitions"):
            open_store(bad)
    with pytest.raises(ConfigError, match="owned_partitions"):
        open_store("redis://h/0?partitions=2", owned_partitions=[2])
