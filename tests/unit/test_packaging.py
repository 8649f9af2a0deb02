"""The wheel ships what the commands need by default: built from a copy of the tracked files,
installed without its source tree (``--no-deps``) into a fresh venv that sees the project's
installed dependencies (a .pth line, the equivalent of --system-site-packages), then
``fsrec repository --check`` and ``fsrec loadtest --help`` run from an unrelated folder. The build
prints no setuptools warning about the package configuration (data folders taken for packages)."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ["fsrec_serve", "exporters", "loadtests", "model_repository", "pyproject.toml", "README.md"]


def _run(cmd: list, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd}: {out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.mark.timeout(180)
def test_wheel_installs_without_the_source_tree_and_finds_its_data(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is needed to list the tracked files")
    files = subprocess.run(["git", "ls-files", "-z", *SHIPPED], cwd=ROOT, capture_output=True, check=True).stdout
    src = tmp_path / "src"
    for rel in filter(None, files.decode().split("\0")):
        if (ROOT / rel).is_file():  # tracked and present in the working tree
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    for new in [*ROOT.glob("fsrec_serve/**/*.py"), *ROOT.glob("exporters/**/*.py")]:  # not yet committed
        dst = src / new.relative_to(ROOT)
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(new, dst)
    # -v: pip shows the build backend's output, where setuptools' configuration warnings go
    build = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v", "-w",
                  tmp_path / "dist", src], cwd=tmp_path, timeout=120)
    noise = [ln.strip() for ln in (build.stdout + build.stderr).splitlines()
             if "Package would be ignored" in ln or "absent from the `packages` configuration" in ln]
    assert not noise, "setuptools warns about the package configuration (pyproject.toml):\n" + "\n".join(noise)
    (wheel,) = (tmp_path / "dist").glob("fsrec_serve-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"loadtests/locustfile.py", "loadtests/gate.yaml", "model_repository/cpu/fsrec/config.pbtxt",
            "model_repository/cpu/fsrec/1/model.py", "model_repository/gpu/fsrec/config.pbtxt",
            "model_repository/gpu-python/fsrec/config.pbtxt", "model_repository/cpu/fsrec_user/1/model.py"} <= names
    assert not any(n.startswith("model_repository/fsrec") for n in names)  # no model outside a target root

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    py = venv / "bin" / "python"
    purelib = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).stdout.strip())
    (purelib / "project-deps.pth").write_text(site.getsitepackages()[0] + "\n")  # deps only: no editable hook runs
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "-q", wheel], cwd=tmp_path)

    work = tmp_path / "elsewhere"
    work.mkdir()
    where = _run([py, "-c", "import fsrec_serve, exporters; from fsrec_serve.operations.loadtest import "
                  "DEFAULT_GATE, DEFAULT_LOCUSTFILE; print(fsrec_serve.__file__, exporters.__file__, "
                  "DEFAULT_LOCUSTFILE.is_file(), DEFAULT_GATE.is_file())"], work).stdout.split()
    assert all(str(purelib) in w for w in where[:2]) and where[2:] == ["True", "True"], where
    check = _run([venv / "bin" / "fsrec", "repository", "--check"], work)
    assert "up to date" in check.stdout and str(purelib / "model_repository") in check.stdout
    help_text = _run([venv / "bin" / "fsrec", "loadtest", "--help"], work).stdout
    assert "--allow-remote-host" in help_text and "--gate" in help_text


@pytest.mark.timeout(180)
def test_editable_install_is_quiet_and_imports_from_the_checkout(tmp_path):
    """``pip install -e .`` (what a new user and scripts/setup.sh run) prints no warning from
    setuptools about this project: neither the package-configuration warnings nor the notice of
    its lenient editable finder (a flat layout declared as such gets one .pth entry)."""
    if shutil.which("git") is None:
        pytest.skip("git is needed to list the tracked files")
    files = subprocess.run(["git", "ls-files", "-z", *SHIPPED], cwd=ROOT, capture_output=True, check=True).stdout
    src = tmp_path / "src"
    for rel in filter(None, files.decode().split("\0")):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    py = venv / "bin" / "python"
    purelib = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).stdout.strip())
    (purelib / "project-deps.pth").write_text(site.getsitepackages()[0] + "\n")
    out = _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-build-isolation",
                "--no-index", "-v", "-e", src], cwd=tmp_path, timeout=150)
    text = out.stdout + out.stderr
    noise = [ln.strip() for ln in text.splitlines()
             if any(w in ln for w in ("Warning:", "warning:", "Package would be ignored", "Please be careful"))
             and "pip" not in ln.lower()]
    assert "Successfully installed fsrec-serve" in text, text[-2000:]
    assert not noise, "pip install -e prints setuptools warnings about this project:\n" + "\n".join(noise)
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = _run([py, "-c", "import fsrec_serve; print(fsrec_serve.__file__)"], work).stdout.strip()
    assert where == str(src / "fsrec_serve" / "__init__.py")
