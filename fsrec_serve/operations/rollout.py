"""Roll out a new model version on a running Triton without dropping requests; roll back on failure.

``rollout(export_dir, repository, control)`` (``fsrec rollout``) takes an export directory
(``exporters.export_onnx`` output: model.onnx, fsrec_meta.json, item_map.json) and:

1. **checks offline**: the export's I/O matches the served model (max_seq_len, max_top_k), and,
   when validation examples are given, the exporters' accuracy guard
   (``exporters.check_guard``) compares it with the version being served: NDCG@10 may not drop by
   more than ``max_ndcg_drop`` and its top-K must not depend on batch-mates;
2. **builds** version N = newest + 1 with ``exporters.build_model_repository`` in a staging
   folder (the live repository is not touched yet), for the target the live config shows
   (:func:`.targets.target_of`: cpu, gpu, or gpu-python, whose version gets ``model.pt``);
3. **loads a candidate**: the version's files under the model name ``<model>__candidate``
   through the model-control API's ``files`` field (admin key needed). A corrupted ONNX file or a
   bad config fails *here*, with Triton's message, while the serving version keeps answering;
4. **smoke-checks the candidate** with the requests a client of that target sends
   (:func:`.targets.smoke_requests`: zeros ``user_params`` where required, bucket widths where
   the server takes buckets only): well-formed answers (ids in range, never the user's own
   history, scores sorted and finite) that match ONNX Runtime's on the same graph;
5. **swaps**: moves the version into the live repository and reloads the model with
   ``version_policy: specific [N]``; Triton keeps the old version answering until N is READY and
   then retires it (the unversioned requests switch to N). The version policy is written to
   config.pbtxt so a restarted server serves N too;
6. **verifies**: a request without a version is answered by N with the candidate's results.

Any failure after step 5 started reloads the previous versions (``version_policy: specific
[old]``) and removes N: a :class:`~fsrec_serve.errors.RolloutError` says which step failed and
why; ``err.report`` holds the :class:`RolloutReport`. ``pin_versions`` serves given versions
(manual rollback: ``fsrec models load --version K``).

The ``repository`` is the folder tritonserver reads (``--model-repository``: the container's
``/models`` volume, or a repository served in place). For a server started in-process with
``fsrec_serve.serving.serve`` (which reads a runtime copy), pass ``repository=server.repository``
and ``publish=server.refresh_repository``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..contract import (
    CONFIG_FILE,
    INPUT_ITEM_IDS,
    ONNX_FILE,
    OUTPUT_TOP_ITEMS,
)
from ..errors import ConfigError, FsRecError, RolloutError
from .answers import compare_answers
from .smoke import client_view, smoke_candidate
from .targets import ask, target_of
from .control import ModelControl, write_config_pbtxt

log = logging.getLogger(__name__)

CANDIDATE_SUFFIX = "__candidate"  # the candidate is loaded as <model>__candidate
LOCK_FILE = ".rollout.lock"


@dataclass
class RolloutConfig:
    """Knobs of :func:`rollout`. Every field has a safe default."""

    model_name: str | None = None  # Triton model; None = the control's model (Settings.model_name)
    version: int | None = None  # version number to write; None = newest on disk/server + 1
    max_ndcg_drop: float = 0.02  # guard: largest relative NDCG@10 drop vs the serving version
    batch_invariance: bool = True  # guard: the new graph's top-K must not depend on batch-mates
    guard_users: int = 256  # guard: validation examples used (the first ones)
    smoke_users: int = 16  # smoke: histories sent to the candidate and after the swap
    smoke_score_tol: float | None = None  # smoke: |served - ONNX Runtime| score tolerance;
    #   None = 1e-4 for fp32 graphs, 5e-2 otherwise (fp16 / int8 on another execution provider)
    config_overrides: dict | None = None  # top-level config fields to change with this version
    #   (Triton JSON form, e.g. {"dynamic_batching": {"max_queue_delay_microseconds": 200}})
    keep_previous: bool = False  # True: keep serving the previous version(s) beside N (by version)
    seed: int = 0  # smoke histories when no validation examples are given


@dataclass
class RolloutReport:
    """What a rollout did (``status``: "rolled-out", "refused" or "rolled-back")."""

    model: str  # Triton model name
    target: str = ""  # the served target (cpu, gpu, gpu-python), read from the live config
    version: int | None = None  # the new version (None when refused before one was chosen)
    previous_versions: list[int] = field(default_factory=list)  # READY before the rollout
    serving_versions: list[int] = field(default_factory=list)  # READY after it
    status: str = "started"  # "rolled-out", "refused" (nothing changed), "rolled-back"
    failed_step: str = ""  # step that failed ("" on success)
    message: str = ""  # why it failed ("" on success)
    guard: dict | None = None  # exporters.GuardReport as a dict (None = no validation examples)
    smoke: dict = field(default_factory=dict)  # candidate / post-swap smoke results
    steps: list[dict] = field(default_factory=list)  # [{"step", "seconds"}] in order
    seconds: float = 0.0  # wall time of the whole rollout

    def to_dict(self) -> dict:
        return asdict(self)


# -- helpers ----------------------------------------------------------------------------------
def _disk_versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def _io_dims(config: Mapping[str, Any], key: str, name: str) -> list[int] | None:
    for e in config.get(key, []) or []:
        if e.get("name") == name:
            return [int(d) for d in e.get("dims", [])]
    return None


@contextlib.contextmanager
def _lock(model_dir: Path):
    model_dir.mkdir(parents=True, exist_ok=True)
    fh = open(model_dir / LOCK_FILE, "w")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RolloutError(
                f"another rollout of {model_dir.name!r} is running (lock {model_dir / LOCK_FILE}); wait for it"
            ) from None
        yield
    finally:
        fh.close()


class _Steps:
    def __init__(self, report: RolloutReport):
        self.report, self.current = report, ""

    @contextlib.contextmanager
    def __call__(self, name: str):
        self.current = name
        t = time.perf_counter()
        log.info("rollout %s: %s", self.report.model, name)
        yield
        self.report.steps.append({"step": name, "seconds": round(time.perf_counter() - t, 3)})


# -- the rollout ------------------------------------------------------------------------------
def rollout(
    export_dir: str | Path,  # exporters.export_onnx output (model.onnx, fsrec_meta.json, ...)
    repository: str | Path,  # the model repository tritonserver reads
    control: ModelControl,  # model control of that server (admin key set)
    config: RolloutConfig | None = None,
    *,
    valid_examples: Sequence | None = None,  # Examples for the accuracy guard (None = skip it)
    publish: Callable[[], Any] | None = None,  # makes repository changes visible to the server
) -> RolloutReport:
    """Roll ``export_dir`` out as a new version (see the module docstring). Returns the report;
    raises RolloutError (with ``.report``) when refused or rolled back."""
    cfg = config or RolloutConfig()
    model = cfg.model_name or control.model_name
    run = _Rollout(cfg=cfg, control=control, model=model,
                   model_dir=Path(repository).expanduser().resolve() / model,
                   report=RolloutReport(model=model), publish=publish)
    run.step = _Steps(run.report)
    try:
        with _lock(run.model_dir):
            try:  # steps 1-4: nothing changes on the server or in the live repository
                _inspect(run, export_dir)
                if valid_examples:
                    _guard(run, valid_examples)
                _build(run)
                _try_candidate(run, valid_examples)
            except Exception as e:  # noqa: BLE001 - any failure before the swap: nothing changed
                _cleanup_candidate(control, run.candidate)
                raise run.fail("refused", e) from e
            try:  # steps 5-6
                _swap_and_verify(run)
            except Exception as e:  # noqa: BLE001 - any failure from the swap on: restore
                _rollback(control, model, run.base_config, run.report, run.model_dir, run.version, publish,
                          run.swapped)
                raise run.fail("rolled-back", e) from e
    except RolloutError as e:
        if not hasattr(e, "report"):  # the lock
            e.report = run.report  # type: ignore[attr-defined]
        raise
    finally:
        shutil.rmtree(run.staging, ignore_errors=True)
    report = run.report
    report.status = "rolled-out"
    report.seconds = time.perf_counter() - run.t0
    log.info("rolled out %s version %s in %.1f s (serving %s)", model, report.version, report.seconds,
             report.serving_versions)
    return report


@dataclass
class _Rollout:
    """What the steps of one rollout share."""

    cfg: RolloutConfig
    control: ModelControl
    model: str  # the served model's name
    model_dir: Path  # <repository>/<model>
    report: RolloutReport
    publish: Callable[[], Any] | None
    t0: float = field(default_factory=time.perf_counter)
    staging: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="fsrec-rollout-")))
    step: Any = None  # _Steps of the report
    export: Path | None = None  # the export directory (resolved)
    meta: Any = None  # its ExportMeta
    base_config: dict = field(default_factory=dict)  # the live config before the rollout
    target: str = ""  # cpu, gpu or gpu-python (from the live config)
    version: int = 0  # the new version
    prev_dir: Path | None = None  # the serving version's folder (the guard's reference)
    vdir: Path | None = None  # the built version folder (staging)
    live_cfg: dict = field(default_factory=dict)  # the config the new version is served with
    smoke: Any = None  # SmokeAnswers: the candidate's answers
    swapped: bool = False  # the version was moved into the live repository

    @property
    def candidate(self) -> str:
        return f"{self.model}{CANDIDATE_SUFFIX}"

    def fail(self, status: str, err: BaseException | str) -> RolloutError:
        report = self.report
        report.status, report.failed_step = status, self.step.current
        report.message = str(err).strip()
        err = report.message
        report.seconds = time.perf_counter() - self.t0
        what = "refused, nothing changed" if status == "refused" else "rolled back"
        keep = report.serving_versions or report.previous_versions
        which = f"version {report.version}" if report.version is not None else "a new version"
        e = RolloutError(
            f"rollout of {self.model!r} {which} {what} at step '{self.step.current}': {err.rstrip('.')}. "
            f"Serving version(s): {keep or 'none'}"
        )
        e.report = report  # type: ignore[attr-defined]
        return e


def _inspect(run: _Rollout, export_dir: str | Path) -> None:
    """1. What is served, and does the export fit it; the new version's number."""
    from exporters.runtime import ExportMeta

    model, report = run.model, run.report
    with run.step("inspect"):
        run.export = Path(export_dir).expanduser().resolve()
        meta = run.meta = ExportMeta.load(run.export)
        report.previous_versions = run.control.ready_versions(model)
        if not report.previous_versions:
            raise RolloutError(
                f"no version of {model!r} is READY on the server: start it with the model "
                "loaded (`fsrec serve`), then roll out"
            )
        base = run.base_config = run.control.config(model)
        seq = _io_dims(base, "input", INPUT_ITEM_IDS)
        if seq == [-1]:  # real-length item_ids: the longest history is the max_seq_len parameter
            seq = [int((base.get("parameters", {}).get("max_seq_len") or {}).get("string_value", -1))]
        top = _io_dims(base, "output", OUTPUT_TOP_ITEMS)
        if seq != [meta.max_seq_len] or top != [meta.max_top_k]:
            raise RolloutError(
                f"the export reads histories of {meta.max_seq_len} and returns {meta.max_top_k} items, "
                f"but {model!r} serves item_ids {seq} -> top_items {top}: export with the served "
                "max_seq_len / max_top_k, or serve it as another model"
            )
        run.target = report.target = target_of(base)
        on_disk = _disk_versions(run.model_dir)
        version = run.cfg.version or max(on_disk + report.previous_versions) + 1
        if version in on_disk or version in report.previous_versions:
            raise RolloutError(f"version {version} already exists in {run.model_dir}; pick a new one")
        run.version = report.version = version
        run.prev_dir = run.model_dir / str(report.previous_versions[-1])


def _guard(run: _Rollout, valid_examples: Sequence) -> None:
    """2. The accuracy guard, offline, against the serving version."""
    from exporters.guard import check_guard

    cfg = run.cfg
    with run.step("guard"):
        if not (run.prev_dir / ONNX_FILE).exists():
            raise RolloutError(f"{run.prev_dir}/model.onnx is missing: cannot guard against the serving version")
        g = check_guard(
            run.export, run.prev_dir, list(valid_examples)[: cfg.guard_users],
            max_ndcg_drop=cfg.max_ndcg_drop, min_top10_overlap=0.0,
            batch_invariance=cfg.batch_invariance, raise_on_fail=False,
        )
        run.report.guard = g.to_dict()
        if not g.passed:
            raise RolloutError("accuracy guard vs the serving version failed: " + "; ".join(g.reasons))


def _build(run: _Rollout) -> None:
    """3. Build the version in a staging repository (the live one is not touched yet)."""
    from exporters.repository import build_model_repository

    with run.step("build"):
        built = build_model_repository(
            run.staging, run.export, target=run.target, model_name=run.model, version=run.version,
            max_batch_size=int(run.base_config.get("max_batch_size", 64) or 64),
        )
        run.vdir = built.version_dir


def _try_candidate(run: _Rollout, valid_examples: Sequence | None) -> None:
    """4. Load the version as the candidate model, smoke-check it, unload it."""
    run.live_cfg = dict(run.base_config)
    if run.cfg.config_overrides:
        from .control import merge_config

        run.live_cfg = merge_config(run.base_config, run.cfg.config_overrides)
    with run.step("load candidate"):
        run.control.load_candidate(run.candidate, run.version, run.vdir, run.live_cfg)
    with run.step("smoke candidate"):
        run.smoke = smoke_candidate(run.control, run.candidate, run.vdir, run.live_cfg, run.meta, run.target,
                                    n_users=run.cfg.smoke_users, seed=run.cfg.seed,
                                    score_tol=run.cfg.smoke_score_tol, valid_examples=valid_examples,
                                    record=run.report.smoke)
    with run.step("unload candidate"):
        run.control.unload(run.candidate)


def _swap_and_verify(run: _Rollout) -> None:
    """5. Move the version in and serve exactly it; 6. unversioned requests are answered by it,
    as the candidate answered; the version policy is persisted."""
    cfg, report, version, smoke = run.cfg, run.report, run.version, run.smoke
    with run.step("publish"):
        incoming = run.model_dir / f".incoming-{version}"
        shutil.rmtree(incoming, ignore_errors=True)
        shutil.copytree(run.vdir, incoming)
        os.rename(incoming, run.model_dir / str(version))
        if run.publish is not None:
            run.publish()
    run.swapped = True
    serve_versions = sorted(set(report.previous_versions) | {version}) if cfg.keep_previous else [version]
    with run.step("swap"):
        report.serving_versions = run.control.load_versions(
            serve_versions, run.model, base_config=run.base_config, overrides=cfg.config_overrides)
    with run.step("verify"):
        items2, scores2, versions = ask(smoke.requests, smoke.n,
                                        client_view(run.control, run.model, smoke.spec).infer_indices)
        answered = ",".join(sorted(set(versions)))
        ok2, stats2 = compare_answers(items2, scores2, smoke.items, smoke.scores, smoke.tol)
        report.smoke["after_swap"] = {**stats2, "answered_by": answered}
        if answered != str(version) or not ok2:
            raise RolloutError(
                f"after the swap, requests were answered by version {answered!r} (expected {version}) "
                f"with {stats2}"
            )
    with run.step("persist"):
        write_config_pbtxt(run.model_dir, versions=report.serving_versions, overrides=cfg.config_overrides)
        if run.publish is not None:
            run.publish()


def _cleanup_candidate(control: ModelControl, candidate: str) -> None:
    try:
        if any(s.name == candidate and s.state in ("READY", "LOADING") for s in control.index()):
            control.unload(candidate)
    except Exception as e:  # noqa: BLE001 - best effort; the original error matters more
        log.warning("could not unload the candidate %s: %s", candidate, e)


def _rollback(control: ModelControl, model: str, base_config: dict, report: RolloutReport, model_dir: Path,
              version: int, publish, swapped: bool) -> None:
    """Serve the previous versions again (their live config), then remove the new version."""
    try:
        report.serving_versions = control.load_versions(report.previous_versions, model, base_config=base_config)
    except Exception as e:  # noqa: BLE001
        log.error("rollback of %s to %s failed: %s", model, report.previous_versions, e)
        report.serving_versions = control.ready_versions(model) if _safe(control) else []
    if swapped:
        shutil.rmtree(model_dir / str(version), ignore_errors=True)
        if publish is not None:
            with contextlib.suppress(Exception):
                publish()


def _safe(control: ModelControl) -> bool:
    try:
        control.index()
        return True
    except Exception:  # noqa: BLE001
        return False


def guard_examples(export_dir: str | Path, n: int = 1000, *, dataset: Any = None,
                   data_dir: str | Path | None = None) -> list:
    """The accuracy guard's validation examples (``valid_examples`` of :func:`rollout`): the first
    ``n`` leave-one-out validation examples of the split the export records (``fsrec export``
    keeps the model's run record in fsrec_meta.json), its data replaced by ``dataset`` (a preset
    name, DataSpec or data-spec file) when given. Presets are found under ``data_dir``
    (default: ``Settings.data_dir``, env ``FSREC_DATA_DIR``)."""
    from exporters.runtime import ExportMeta

    from ..data import RunRecord
    from ..settings import get_settings

    extra = ExportMeta.load(export_dir).extra
    record = RunRecord.from_dict(extra) if RunRecord.has_source(extra) else None
    if dataset is not None:
        record = record.with_source(dataset) if record is not None else RunRecord.for_source(dataset)
    if record is None:
        raise ConfigError(
            f"{export_dir} does not record the data of its model, and the accuracy guard needs validation "
            "data: pass --guard-dataset ml-100k (or beauty, or a data-spec file), or --no-guard to skip it"
        )
    return record.splits(get_settings(data_dir=data_dir).data_dir).loo_valid()[:n]


def pin_versions(repository: str | Path, control: ModelControl, versions: Sequence[int],
                 model_name: str | None = None, *, publish: Callable[[], Any] | None = None) -> list[int]:
    """Serve exactly ``versions`` of the model (e.g. roll back to an earlier version) and write
    the policy to config.pbtxt. The versions must exist in the repository."""
    model = model_name or control.model_name
    model_dir = Path(repository).expanduser().resolve() / model
    missing = [v for v in versions if not (model_dir / str(v)).is_dir()]
    if missing:
        raise ConfigError(f"version(s) {missing} are not in {model_dir} (it has {_disk_versions(model_dir)})")
    with _lock(model_dir):
        base = None
        with contextlib.suppress(FsRecError):
            base = control.config(model)
        if base is None:  # not loaded: the config on disk (as Triton would read it)
            from google.protobuf import json_format, text_format
            from tritonclient.grpc import model_config_pb2 as mc

            msg = text_format.Parse((model_dir / CONFIG_FILE).read_text(), mc.ModelConfig())
            base = json_format.MessageToDict(msg, preserving_proto_field_name=True)
        ready = control.load_versions(list(versions), model, base_config=base)
        write_config_pbtxt(model_dir, versions=list(versions))
        if publish is not None:
            publish()
        return ready


def report_json(report: RolloutReport) -> str:
    return json.dumps(report.to_dict(), indent=2, default=str)
