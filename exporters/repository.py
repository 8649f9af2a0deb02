"""Triton model repository: export directories -> versioned model folders, golden check, runtime copy.

The configuration itself (:class:`RepositorySpec` -> ``config.pbtxt`` through Triton's
``ModelConfig`` protobuf, targets ``cpu`` / ``gpu`` / ``gpu-python``) lives in
:mod:`exporters.triton_config`; this module writes the folders Triton serves.

Layout (``docs/export.md``)::

    <repo>/<model>/config.pbtxt
    <repo>/<model>/<version>/model.onnx          git-ignored, written by the main job
    <repo>/<model>/<version>/item_map.json       raw id <-> index (clients map ids with it)
    <repo>/<model>/<version>/fsrec_meta.json     max_seq_len, max_top_k, num_items, ...
    <repo>/<model>/<version>/model.py            python targets (cpu, gpu-python)
    <repo>/<model>/<version>/model.pt            gpu-python only (TorchScript of the graph)

The committed ``model_repository/`` holds one repository root per target, side by side:
``model_repository/cpu/``, ``model_repository/gpu/`` and ``model_repository/gpu-python/``
(each with the ranker ``fsrec`` and the front models ``fsrec_user`` / ``fsrec_events``; the
model name stays ``fsrec``; ``target_repository(target)`` is a target's root). Machine-specific values (the python backend's
``EXECUTION_ENV_PATH``) are never committed: :func:`runtime_repository` adds them to a runtime
copy when a server starts. Adapter variants are new versions of the same model.
"""

from __future__ import annotations

import dataclasses
import filecmp
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from fsrec_serve.contract import CONFIG_FILE as CONFIG_PBTXT
from fsrec_serve.contract import (
    GUARD_FILE,
    ITEM_MAP_FILE,
    META_FILE,
    ONNX_FILE,
    PYTHON_MODEL_FILE,
    REPOSITORY_TOP,
)
from fsrec_serve.errors import ConfigError, RepositoryError

from .runtime import HF_CONFIG_FILE, TORCH_FILE, ExportMeta, onnx_path, versions
from .triton_config import (
    DEFAULT_SPEC,
    PYTHON_TARGETS,
    TARGETS,
    RepositorySpec,
    load_model_config,
    model_config,
    render_config,
    write_model_config,
)

logger = logging.getLogger(__name__)

PYTHON_MODEL_SOURCE = Path(__file__).resolve().parent / "triton_python" / "model.py"
# the committed repositories (golden): <project>/model_repository/<target>/, one root per target
COMMITTED_REPOSITORY = Path(__file__).resolve().parents[1] / REPOSITORY_TOP
TARGET_ROOTS = {t: t for t in TARGETS}  # target -> its root's folder under model_repository/
CPU_SUBDIR = TARGET_ROOTS["cpu"]  # <top>/cpu/<model>: the cpu target's repository root
GPU_SUBDIR = TARGET_ROOTS["gpu"]  # <top>/gpu/<model>: the gpu target's repository root
GPU_PYTHON_SUBDIR = TARGET_ROOTS["gpu-python"]  # <top>/gpu-python/<model>: the gpu-python target's root
EXECUTION_ENV_KEY = "EXECUTION_ENV_PATH"


def next_version(model_dir: str | Path) -> int:
    """1 + the newest version that holds a model (1 for a new model)."""
    v = versions(model_dir)
    return (v[-1] + 1) if v else 1


@dataclass
class RepositoryVersion:
    """What :func:`build_model_repository` wrote."""

    repo_dir: Path  # repository root (the --model-repository of tritonserver)
    model_dir: Path  # <repo>/<model>
    version: int  # the version written
    version_dir: Path  # <repo>/<model>/<version>
    config_path: Path  # <repo>/<model>/config.pbtxt
    target: str  # "cpu" or "gpu"
    meta: ExportMeta  # the version's fsrec_meta.json


def build_model_repository(
    repo_dir: str | Path,
    onnx_dir: str | Path,
    spec: RepositorySpec | None = None,
    *,
    target: str = "cpu",
    version: int | None = None,
    overwrite: bool = False,
    **overrides,
) -> RepositoryVersion:
    """Write ``<repo>/<model>/config.pbtxt`` and ``<repo>/<model>/<version>/`` (model.onnx,
    item_map.json, fsrec_meta.json, guard_decision.json when present, model.py for the python
    targets) from an export directory.

    ``spec`` describes the served model (:class:`RepositorySpec`; default ``DEFAULT_SPEC``);
    ``overrides`` replace single fields of it (``model_name="x", max_batch_size=32``; an unknown
    name is a ConfigError). ``max_seq_len`` / ``max_top_k`` always come from the export's
    ``fsrec_meta.json``. ``version=None`` = the next integer (an adapter variant becomes a new
    version of the same model; with ``num_versions=1`` Triton then serves the newest). All
    versions of a model share one config: a version whose ``max_seq_len`` / ``max_top_k`` differ
    from the model's existing versions is refused (export it as another model name).
    """
    if target not in TARGETS:
        raise ConfigError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    src = Path(onnx_dir)
    src = src.parent if src.suffix == ".onnx" else src
    onnx_file = onnx_path(src)
    meta = ExportMeta.load(src)
    if target == "gpu" and meta.precision != "fp16":
        logger.warning("gpu target with a %s graph: export an FP16 graph with `fsrec quantize --mode "
                       "fp16` for the intended GPU setup", meta.precision)
    unknown = set(overrides) - set(RepositorySpec.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown RepositorySpec field(s) {sorted(unknown)}; fields: "
                          f"{', '.join(RepositorySpec.__dataclass_fields__)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    spec = dataclasses.replace(spec or DEFAULT_SPEC, **overrides,
                               max_seq_len=meta.max_seq_len, max_top_k=meta.max_top_k,
                               user_params_dim=meta.user_params_dim)
    model_name = spec.model_name
    repo = Path(repo_dir)
    refuse_top_folder(repo, target)
    model_dir = repo / model_name
    existing = versions(model_dir)
    if existing and (model_dir / CONFIG_PBTXT).exists():
        old_io, new_io = served_io(load_model_config(model_dir)), served_io(model_config(spec, target))
        if old_io != new_io:
            raise RepositoryError(
                f"{model_dir} serves {old_io}, but {src} gives {new_io} (max_seq_len={meta.max_seq_len}, "
                f"max_top_k={meta.max_top_k}, user_params_dim={meta.user_params_dim}): versions of one "
                "model share its I/O; export with the same shapes or use another model_name"
            )
    v = next_version(model_dir) if version is None else int(version)
    if v < 1:
        raise ConfigError(f"version must be >= 1, got {v}")
    vdir = model_dir / str(v)
    if (vdir / ONNX_FILE).exists() and not overwrite:
        raise RepositoryError(
            f"{vdir} already holds a model: pass version=None for the next one, or overwrite=True"
        )
    vdir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_file, vdir / ONNX_FILE)
    for name in (ITEM_MAP_FILE, META_FILE, GUARD_FILE, HF_CONFIG_FILE):
        if (src / name).exists():
            shutil.copyfile(src / name, vdir / name)
    if target == "gpu-python":
        if not (src / TORCH_FILE).exists():
            raise RepositoryError(
                f"{src / TORCH_FILE} is missing: the gpu-python target runs a TorchScript trace of the "
                "graph; export with `fsrec export --torchscript` (export_onnx(..., torchscript=True))")
        shutil.copyfile(src / TORCH_FILE, vdir / TORCH_FILE)
    if target in PYTHON_TARGETS:
        shutil.copyfile(PYTHON_MODEL_SOURCE, vdir / PYTHON_MODEL_FILE)
    elif (vdir / PYTHON_MODEL_FILE).exists():
        (vdir / PYTHON_MODEL_FILE).unlink()
    config_path = write_model_config(model_dir, spec, target)
    logger.info("wrote %s version %d (%s, %s)", model_dir, v, target, meta.precision)
    return RepositoryVersion(repo_dir=repo, model_dir=model_dir, version=v, version_dir=vdir,
                             config_path=config_path, target=target, meta=meta)


def served_io(cfg) -> dict:
    """A config's I/O as {name: dims} plus the served max_seq_len (versions must agree on it)."""
    io = {t.name: list(t.dims) for t in list(cfg.input) + list(cfg.output)}
    seq = cfg.parameters["max_seq_len"].string_value if "max_seq_len" in cfg.parameters else None
    return {**io, "max_seq_len": seq}


def refuse_top_folder(repo: Path, target: str = "cpu") -> None:
    """A folder holding the target roots (model_repository/) is not a repository root itself."""
    if repo.is_dir() and all((repo / r).is_dir() for r in TARGET_ROOTS.values()):
        raise RepositoryError(
            f"{repo} holds one repository root per target ({', '.join(TARGET_ROOTS.values())}): pass "
            f"the target's root, e.g. {target_repository(target, repo)}"
        )


# -- the committed default repository (golden) ----------------------------------------------------
def target_repository(target: str = "cpu", top: str | Path = COMMITTED_REPOSITORY) -> Path:
    """The repository root of ``target`` under ``top`` (default: the project's model_repository/)."""
    if target not in TARGET_ROOTS:
        raise ConfigError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    return Path(top) / TARGET_ROOTS[target]


def write_default_repository(repo_dir: str | Path = COMMITTED_REPOSITORY,
                             spec: RepositorySpec = DEFAULT_SPEC) -> list[Path]:
    """Write what is committed under ``model_repository/``: one root per target, each with the
    ranker's config and the front models: ``cpu/fsrec/config.pbtxt`` with its python model
    (``cpu/fsrec/1/model.py``), ``gpu/fsrec/config.pbtxt`` and ``gpu-python/fsrec/config.pbtxt``
    (its model.py is added when a version is built). Weights are not part of it (git-ignored,
    built by the job)."""
    from .user_repository import UserModelsSpec, build_user_models  # the front models: configs committed

    top = Path(repo_dir)
    cpu = target_repository("cpu", top)
    written = [write_model_config(cpu / spec.model_name, spec, "cpu")]
    vdir = cpu / spec.model_name / "1"
    vdir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PYTHON_MODEL_SOURCE, vdir / PYTHON_MODEL_FILE)
    written.append(vdir / PYTHON_MODEL_FILE)
    front = dict(ranker=spec.model_name, max_top_k=spec.max_top_k, length_buckets=tuple(spec.buckets()))
    written += build_user_models(cpu, None, UserModelsSpec(**front))  # cpu: ranks in-process
    for target in ("gpu", "gpu-python"):  # gpu: BLS calls of the ranker on the GPU
        root = target_repository(target, top)
        written.append(write_model_config(root / spec.model_name, spec, target))
        written += build_user_models(root, None, UserModelsSpec(**front, ranking="bls"))
    return written


def check_repository(repo_dir: str | Path = COMMITTED_REPOSITORY,
                     spec: RepositorySpec = DEFAULT_SPEC) -> list[str]:
    """Golden check: regenerate the default repository in a temporary folder and list every file
    of it that is missing from ``repo_dir`` or differs, and any model folder left outside the
    target roots (empty list = up to date)."""
    repo = Path(repo_dir)
    problems = []
    if repo.is_dir():  # the older layout: the cpu root's models at the top
        for stray in sorted(p for p in repo.iterdir() if (p / CONFIG_PBTXT).exists()):
            problems.append(f"{stray} is a model folder outside the target roots "
                            f"({', '.join(TARGET_ROOTS.values())}); move it into {target_repository('cpu', repo)}")
    with tempfile.TemporaryDirectory() as tmp:
        for f in write_default_repository(tmp, spec):
            rel = f.relative_to(tmp)
            mine = repo / rel
            if not mine.exists():
                problems.append(f"{mine} is missing")
            elif not filecmp.cmp(f, mine, shallow=False):
                problems.append(f"{mine} differs from what the generator writes")
    return problems


# -- runtime copy with machine-specific values ---------------------------------------------------
def runtime_repository(
    repo_dir: str | Path,
    runtime_dir: str | Path,
    execution_env_path: str | Path | None = None,
    models: list[str] | None = None,
    trt_cache_path: str | Path | None = None,
    copy_files: bool = False,
) -> Path:
    """Materialize a runnable repository at ``runtime_dir`` from ``repo_dir``.

    Every model folder of ``repo_dir`` with a config.pbtxt (or only ``models``) is reproduced:
    version folders are recreated with their files symlinked (copied when ``copy_files``), and
    config.pbtxt is rewritten through ModelConfig with the machine-specific values added:
    ``EXECUTION_ENV_PATH`` = ``execution_env_path`` (default: this interpreter's environment,
    ``sys.prefix``) for python-backend models, and the TensorRT cache path for gpu models when
    ``trt_cache_path`` is given. Sub-folders without a config.pbtxt are skipped. ``runtime_dir`` is emptied first. Returns ``runtime_dir``.
    """
    repo, out = Path(repo_dir).resolve(), Path(runtime_dir)
    if out.resolve() == repo:
        raise ConfigError("runtime_dir must differ from repo_dir (the committed tree stays clean)")
    env = Path(execution_env_path or sys.prefix).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    names = models or sorted(p.name for p in repo.iterdir() if (p / CONFIG_PBTXT).exists())
    if not names:
        refuse_top_folder(repo)
        raise RepositoryError(f"{repo} holds no model folder with a {CONFIG_PBTXT}")
    for name in names:
        src = repo / name
        cfg = load_model_config(src)
        vs = versions(src)
        if not vs and "role" in cfg.parameters:  # fsrec_user / fsrec_events: no weights of their own
            vs = versions(src, with_model=False)
        if not vs:
            raise RepositoryError(
                f"{src} has no version with a {ONNX_FILE}: export the model and run "
                "`fsrec repository` (build_model_repository) first"
            )
        dst = out / name
        dst.mkdir()
        if cfg.backend == "python":
            cfg.parameters[EXECUTION_ENV_KEY].string_value = str(env)
        if trt_cache_path is not None:
            for acc in cfg.optimization.execution_accelerators.gpu_execution_accelerator:
                if acc.name == "tensorrt":
                    acc.parameters["trt_engine_cache_path"] = str(trt_cache_path)
        (dst / CONFIG_PBTXT).write_text(text_format.MessageToString(cfg))
        for v in vs:
            vsrc, vdst = src / str(v), dst / str(v)
            vdst.mkdir()
            for f in vsrc.iterdir():
                if f.is_file():
                    if copy_files:
                        shutil.copyfile(f, vdst / f.name)
                    else:
                        os.symlink(f.resolve(), vdst / f.name)
    return out


__all__ = [
    "TARGETS", "RepositorySpec", "DEFAULT_SPEC", "RepositoryVersion", "model_config",
    "render_config", "load_model_config", "write_model_config", "versions", "next_version",
    "build_model_repository", "write_default_repository", "check_repository", "runtime_repository",
    "COMMITTED_REPOSITORY", "TARGET_ROOTS", "target_repository",
]
