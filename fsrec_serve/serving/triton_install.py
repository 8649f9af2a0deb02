"""Find the ``tritonserver`` binary and build the backends folder it needs.

Locally the binary comes from the ``nvidia-pytriton`` wheel (``pip install 'fsrec-serve[triton]'``),
which ships ``pytriton/tritonserver/bin/tritonserver`` (Triton 2.51), the python backend
(``backends/python/``) and one python-backend stub per Python minor version
(``python_backend_stubs/3.X/triton_python_backend_stub``). The stub must sit inside the backend
folder, so we assemble a backends folder in a cache directory (once per wheel version and Python).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ServingError, TritonNotFoundError

INSTALL_HINT = "pip install 'fsrec-serve[triton]'  (installs nvidia-pytriton, which ships tritonserver 2.51)"
STUB_NAME = "triton_python_backend_stub"
ENV_BINARY = "FSREC_TRITONSERVER"  # env: path of a tritonserver binary to use instead of the wheel's
ENV_CACHE = "FSREC_CACHE_DIR"  # env: cache folder (default ~/.cache/fsrec)


@dataclass(frozen=True)
class TritonInstallation:
    binary: Path  # the tritonserver executable
    backends_dir: Path  # folder with one sub-folder per backend (python/ at least)
    stubs_dir: Path | None  # python_backend_stubs/ of the wheel (one folder per Python 3.X); None = native install
    libs_dir: Path | None  # nvidia_pytriton.libs: shared libraries the binary and the stub link against
    version: str  # version of the installation (cache key of the prepared backends folder)


def cache_dir() -> Path:
    """The fsrec cache folder (env ``FSREC_CACHE_DIR``, default ``~/.cache/fsrec``)."""
    value = os.environ.get(ENV_CACHE)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "fsrec"


def find_triton(binary: str | Path | None = None) -> TritonInstallation:
    """Locate tritonserver: ``binary`` (or env ``FSREC_TRITONSERVER``) for a native install
    (``<prefix>/bin/tritonserver`` with ``<prefix>/backends``), else the nvidia-pytriton wheel."""
    binary = binary or os.environ.get(ENV_BINARY)
    if binary:
        b = Path(binary).expanduser()
        if not (b.is_file() and os.access(b, os.X_OK)):
            raise TritonNotFoundError(
                f"tritonserver binary {b} does not exist or is not executable; fix {ENV_BINARY} / "
                f"--tritonserver, or unset it to use the wheel ({INSTALL_HINT})"
            )
        backends = b.resolve().parent.parent / "backends"
        return TritonInstallation(b, backends, None, None, f"native-{b.stat().st_mtime_ns}")

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotFoundError(f"tritonserver is not installed: the 'nvidia-pytriton' wheel is missing. Run: {INSTALL_HINT}")
    pkg = Path(list(spec.submodule_search_locations)[0])
    root = pkg / "tritonserver"
    b = root / "bin" / "tritonserver"
    if not b.is_file():
        raise TritonNotFoundError(
            f"the nvidia-pytriton install at {pkg} has no tritonserver binary ({b}); reinstall it: {INSTALL_HINT}"
        )
    try:
        from importlib.metadata import version as _v

        version = _v("nvidia-pytriton")
    except Exception:  # pragma: no cover - metadata missing in odd installs
        version = f"unknown-{b.stat().st_mtime_ns}"
    libs = pkg.parent / "nvidia_pytriton.libs"
    return TritonInstallation(b, root / "backends", root / "python_backend_stubs", libs if libs.is_dir() else None, version)


def python_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def prepare_backends(install: TritonInstallation, cache: Path | None = None) -> Path:
    """A backends folder with the python backend and the stub for the running Python.

    Native installs already have it (returned as is). For the wheel, ``<cache>/triton/backends-
    <wheel version>-py3.X/`` is built once (atomically, safe with concurrent starts) and reused.
    """
    if install.stubs_dir is None:
        if not (install.backends_dir / "python").is_dir():
            raise ServingError(
                f"{install.backends_dir}/python is missing: this tritonserver has no python backend; "
                "install one or use the 'gpu' repository target (onnxruntime backend)"
            )
        return install.backends_dir
    stub = install.stubs_dir / python_tag() / STUB_NAME
    if not stub.is_file():
        have = sorted(p.name for p in install.stubs_dir.iterdir()) if install.stubs_dir.is_dir() else []
        raise ServingError(
            f"nvidia-pytriton {install.version} has no python backend stub for Python {python_tag()} "
            f"(it has: {', '.join(have) or 'none'}); run fsrec with one of those Python versions"
        )
    src = install.backends_dir / "python"
    if not (src / "libtriton_python.so").is_file():
        raise ServingError(f"{src}/libtriton_python.so is missing; reinstall nvidia-pytriton ({INSTALL_HINT})")
    base = (cache or cache_dir()) / "triton"
    final = base / f"backends-{install.version}-py{python_tag()}"
    if (final / "python" / STUB_NAME).is_file():
        return final
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".backends-", dir=base))
    try:
        shutil.copytree(src, tmp / "python", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(stub, tmp / "python" / STUB_NAME)
        os.chmod(tmp / "python" / STUB_NAME, 0o755)
        try:
            os.rename(tmp, final)  # atomic; fails if another process finished first
        except OSError:
            if not (final / "python" / STUB_NAME).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def library_path(install: TritonInstallation) -> str:
    """LD_LIBRARY_PATH for tritonserver and the stub: the wheel's libraries (the copied stub lost
    its rpath), then the running Python's shared libpython (when it has one), then the caller's."""
    parts: list[str] = []
    if install.libs_dir is not None:
        parts.append(str(install.libs_dir))
    libdir = sysconfig.get_config_var("LIBDIR")
    ldlib = sysconfig.get_config_var("LDLIBRARY")
    if libdir and ldlib and sysconfig.get_config_var("Py_ENABLE_SHARED") and (Path(libdir) / ldlib).exists():
        parts.append(libdir)
    if os.environ.get("LD_LIBRARY_PATH"):
        parts.append(os.environ["LD_LIBRARY_PATH"])
    return os.pathsep.join(parts)
