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
import copy
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
from .answers import check_answers, compare_answers, smoke_histories
from .targets import ask, served_spec, smoke_requests, smoke_tolerance, target_of
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
def _client_for(control: ModelControl, model_name: str, spec=None, version: str = ""):
    """A view of the control's client on another model / version (same connection, no retries:
    a rollout must see failures, not paper over them) that knows the served model's ``spec``
    (so its requests are checked and carry what the target requires)."""
    c = copy.copy(control.client)
    c.model_name, c.model_version = model_name, str(version or "")
    c.spec = spec
    c._explicit_spec = spec  # noqa: SLF001 - a view, not a new client
    c.retry = type(c.retry)(0, c.retry.backoff_s, c.retry.backoff_max_s)
    return c


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
    t0 = time.perf_counter()
    model = cfg.model_name or control.model_name
    repo = Path(repository).expanduser().resolve()
    model_dir = repo / model
    report = RolloutReport(model=model)
    step = _Steps(report)
    candidate = f"{model}{CANDIDATE_SUFFIX}"
    staging = Path(tempfile.mkdtemp(prefix="fsrec-rollout-"))
    swapped = False
    base_config: dict = {}

    def fail(status: str, err: BaseException | str) -> RolloutError:
        report.status, report.failed_step = status, step.current
        report.message = str(err).strip()
        err = report.message
        report.seconds = time.perf_counter() - t0
        what = "refused, nothing changed" if status == "refused" else "rolled back"
        keep = report.serving_versions or report.previous_versions
        which = f"version {report.version}" if report.version is not None else "a new version"
        e = RolloutError(
            f"rollout of {model!r} {which} {what} at step '{step.current}': {err.rstrip('.')}. "
            f"Serving version(s): {keep or 'none'}"
        )
        e.report = report  # type: ignore[attr-defined]
        return e

    try:
        with _lock(model_dir):
            try:
                # -- 1. what is served, and does the export fit it -------------------------------
                with step("inspect"):
                    from exporters.runtime import ExportMeta

                    export = Path(export_dir).expanduser().resolve()
                    meta = ExportMeta.load(export)
                    report.previous_versions = control.ready_versions(model)
                    if not report.previous_versions:
                        raise RolloutError(
                            f"no version of {model!r} is READY on the server: start it with the model "
                            "loaded (`fsrec serve`), then roll out"
                        )
                    base_config = control.config(model)
                    seq = _io_dims(base_config, "input", INPUT_ITEM_IDS)
                    if seq == [-1]:  # real-length item_ids: the longest history is the max_seq_len parameter
                        seq = [int((base_config.get("parameters", {}).get("max_seq_len") or {}).get("string_value", -1))]
                    top = _io_dims(base_config, "output", OUTPUT_TOP_ITEMS)
                    if seq != [meta.max_seq_len] or top != [meta.max_top_k]:
                        raise RolloutError(
                            f"the export reads histories of {meta.max_seq_len} and returns {meta.max_top_k} items, "
                            f"but {model!r} serves item_ids {seq} -> top_items {top}: export with the served "
                            "max_seq_len / max_top_k, or serve it as another model"
                        )
                    target = report.target = target_of(base_config)
                    on_disk = _disk_versions(model_dir)
                    version = cfg.version or max(on_disk + report.previous_versions) + 1
                    if version in on_disk or version in report.previous_versions:
                        raise RolloutError(f"version {version} already exists in {model_dir}; pick a new one")
                    report.version = version
                    prev_dir = model_dir / str(report.previous_versions[-1])

                # -- 2. the accuracy guard (offline, against the serving version) ----------------
                if valid_examples:
                    with step("guard"):
                        from exporters.guard import check_guard

                        if not (prev_dir / ONNX_FILE).exists():
                            raise RolloutError(f"{prev_dir}/model.onnx is missing: cannot guard against the serving version")
                        g = check_guard(
                            export, prev_dir, list(valid_examples)[: cfg.guard_users],
                            max_ndcg_drop=cfg.max_ndcg_drop, min_top10_overlap=0.0,
                            batch_invariance=cfg.batch_invariance, raise_on_fail=False,
                        )
                        report.guard = g.to_dict()
                        if not g.passed:
                            raise RolloutError("accuracy guard vs the serving version failed: " + "; ".join(g.reasons))

                # -- 3. build the version in a staging repository -----------------------------
                with step("build"):
                    from exporters.repository import build_model_repository

                    built = build_model_repository(
                        staging, export, target=target, model_name=model, version=version,
                        max_batch_size=int(base_config.get("max_batch_size", 64) or 64),
                    )
                    vdir = built.version_dir

                # -- 4. candidate load + smoke ------------------------------------------------
                live_cfg = dict(base_config)
                if cfg.config_overrides:
                    from .control import merge_config

                    live_cfg = merge_config(base_config, cfg.config_overrides)
                with step("load candidate"):
                    control.load_candidate(candidate, version, vdir, live_cfg)
                with step("smoke candidate"):
                    smoke = _smoke_candidate(control, candidate, vdir, live_cfg, meta, target, cfg, valid_examples,
                                             report)
                with step("unload candidate"):
                    control.unload(candidate)
            except Exception as e:  # noqa: BLE001 - any failure before the swap: nothing changed
                _cleanup_candidate(control, candidate)
                raise fail("refused", e) from e

            # -- 5. swap: move the version in, serve exactly it ---------------------------------
            try:
                with step("publish"):
                    incoming = model_dir / f".incoming-{version}"
                    shutil.rmtree(incoming, ignore_errors=True)
                    shutil.copytree(vdir, incoming)
                    os.rename(incoming, model_dir / str(version))
                    if publish is not None:
                        publish()
                swapped = True
                serve_versions = sorted(set(report.previous_versions) | {version}) if cfg.keep_previous else [version]
                with step("swap"):
                    report.serving_versions = control.load_versions(
                        serve_versions, model, base_config=base_config, overrides=cfg.config_overrides)
                # -- 6. verify: unversioned requests are answered by N, as the candidate did -----
                with step("verify"):
                    items2, scores2, versions = ask(smoke.requests, smoke.n,
                                                    _client_for(control, model, smoke.spec).infer_indices)
                    answered = ",".join(sorted(set(versions)))
                    ok2, stats2 = compare_answers(items2, scores2, smoke.items, smoke.scores, smoke.tol)
                    report.smoke["after_swap"] = {**stats2, "answered_by": answered}
                    if answered != str(version) or not ok2:
                        raise RolloutError(
                            f"after the swap, requests were answered by version {answered!r} (expected {version}) "
                            f"with {stats2}"
                        )
                with step("persist"):
                    write_config_pbtxt(model_dir, versions=report.serving_versions, overrides=cfg.config_overrides)
                    if publish is not None:
                        publish()
            except Exception as e:  # noqa: BLE001 - any failure from the swap on: restore
                _rollback(control, model, base_config, report, model_dir, version, publish, swapped)
                raise fail("rolled-back", e) from e
    except RolloutError as e:
        if not hasattr(e, "report"):  # the lock
            e.report = report  # type: ignore[attr-defined]
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report.status = "rolled-out"
    report.seconds = time.perf_counter() - t0
    log.info("rolled out %s version %s in %.1f s (serving %s)", model, report.version, report.seconds,
             report.serving_versions)
    return report


@dataclass
class _Smoke:
    """The candidate's smoke answers, asked again after the swap."""

    spec: Any  # the client's ModelSpec of the live config
    requests: list  # answers.SmokeRequest s, as a client of the target sends them
    n: int  # smoke histories
    items: Any  # np.ndarray [n, K] the candidate answered
    scores: Any  # np.ndarray [n, K]
    tol: float  # score tolerance


def _smoke_candidate(control: ModelControl, candidate: str, vdir: Path, live_cfg: dict, meta, target: str,
                     cfg: RolloutConfig, valid_examples, report: RolloutReport) -> _Smoke:
    """Ask the candidate what a client of the target would (bucket widths, required
    user_params: targets.smoke_requests); its answers must be well formed and ONNX Runtime's."""
    from exporters.runtime import make_session, run_topk

    x = smoke_histories(meta.num_items, meta.max_seq_len, cfg.smoke_users, cfg.seed, valid_examples)
    spec = served_spec(live_cfg, meta.num_items)
    requests = smoke_requests(spec, x)
    session = make_session(vdir)
    ref_items, ref_scores, _ = ask(requests, len(x), lambda ids, up: (*run_topk(session, ids, user_params=up), ""))
    items, scores, _ = ask(requests, len(x), _client_for(control, candidate, spec).infer_indices)
    problems = check_answers(x, items, scores, meta.num_items)
    tol = smoke_tolerance(meta.precision, target, cfg.smoke_score_tol)
    ok, stats = compare_answers(items, scores, ref_items, ref_scores, tol)
    report.smoke["requests"] = [list(r.item_ids.shape) + ([] if r.user_params is None else ["user_params"])
                                for r in requests]
    report.smoke["candidate"] = {**stats, "problems": problems, "n": int(len(x))}
    if problems or not ok:
        raise RolloutError("the candidate's answers are wrong: "
                           + "; ".join(problems or [f"served scores differ from ONNX Runtime's: {stats}"]))
    return _Smoke(spec, requests, len(x), items, scores, tol)


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


def guard_examples(dataset: str, data_dir: str | Path | None = None, n: int = 1000) -> list:
    """The accuracy guard's validation examples (``valid_examples`` of :func:`rollout`): the first
    ``n`` leave-one-out validation examples of ``dataset`` (``ml-100k``, ``beauty``) found under
    ``data_dir`` (default: ``Settings.data_dir``, env ``FSREC_DATA_DIR``)."""
    from ..data import SplitConfig, load_dataset, make_splits
    from ..settings import get_settings

    data = load_dataset(dataset, get_settings(data_dir=data_dir).data_dir)
    return make_splits(data, SplitConfig()).loo_valid()[:n]


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
