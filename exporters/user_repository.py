"""The models in front of the ranker: ``fsrec_user`` (serving by user id) and ``fsrec_events``
(event intake), written beside the ranker in the same Triton repository.

Layout::

    <repo>/fsrec_user/config.pbtxt
    <repo>/fsrec_user/1/model.py          exporters/triton_python/user_model.py (role recommend)
    <repo>/fsrec_user/1/popularity.json   fallback ranking for users with nothing known
    <repo>/fsrec_events/config.pbtxt
    <repo>/fsrec_events/1/model.py        the same file (role record)

Both read the ranker's newest version (its ``fsrec_meta.json`` fingerprint and ``item_map.json``)
at request time, so a rollout of the ranker needs no rebuild of these models. The store they use
is machine-specific: ``$FSREC_STORE`` of the server (``fsrec serve --store``) or the ``store``
parameter (``store=`` here, e.g. ``redis://redis:6379/0`` in a container).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from fsrec_serve.contract import (
    CONFIG_FILE,
    DEFAULT_MODEL_NAME,
    EVENTS_MODEL_NAME,
    INPUT_EVENT_ID,
    INPUT_ITEM_ID,
    INPUT_RECENT_ITEMS,
    INPUT_TIMESTAMP,
    INPUT_USER_ID,
    MAX_RECENT_ITEMS,
    MAX_USER_ID_BYTES,
    OUTPUT_ACCEPTED,
    OUTPUT_RANKER_VERSION,
    OUTPUT_SOURCE,
    OUTPUT_TOP_ITEMS,
    OUTPUT_TOP_SCORES,
    POPULARITY_FILE,
    PYTHON_MODEL_FILE,
    TRITON_ACCEPTED_DTYPE,
    TRITON_ID_DTYPE,
    TRITON_ITEM_IDS_DTYPE,
    TRITON_SCORE_DTYPE,
    TRITON_TIMESTAMP_DTYPE,
    USER_MODEL_NAME,
)
from fsrec_serve.errors import ConfigError

from .triton_config import HEADER, DEFAULT_SPEC, RepositorySpec, config_data_type

USER_MODEL_SOURCE = Path(__file__).resolve().parent / "triton_python" / "user_model.py"
USER_VERSION = 1  # the front models have one version: they read the ranker's newest at request time


@dataclass
class UserModelsSpec:
    """What goes into the two front models' config.pbtxt."""

    ranker: str = DEFAULT_MODEL_NAME  # the ranker they call (BLS) / whose item map they use
    max_top_k: int = DEFAULT_SPEC.max_top_k  # width of top_items / top_scores (the ranker's)
    length_buckets: Sequence[int] = tuple(DEFAULT_SPEC.buckets())  # ranker calls grouped by bucket
    max_batch_size: int = 64  # largest dynamic batch
    max_queue_delay_us: int = 500  # how long Triton waits to grow a batch
    instance_count: int = 2  # model instances (each holds one store connection)
    store: str = ""  # store URL baked into the config ("" = the server's $FSREC_STORE / default)
    # how fsrec_user ranks: "onnxruntime" = the ranker version's model.onnx in-process (cpu: no
    # second stub round trip, measured in bench/live.py); "bls" = a BLS call of the ranker model
    # (the gpu targets, where the ranker runs on the GPU)
    ranking: str = "onnxruntime"
    intra_op_threads: int = 1  # ONNX Runtime threads per instance with ranking="onnxruntime"


def _model(name: str, spec: UserModelsSpec, role: str) -> mc.ModelConfig:
    """The config of one front model; its tensors in the order the role reads and answers them
    (``ROLE_INPUTS`` / ``ROLE_OUTPUTS`` of exporters/triton_python/user_model.py)."""
    text, ids = config_data_type(TRITON_ID_DTYPE), config_data_type(TRITON_ITEM_IDS_DTYPE)
    cfg = mc.ModelConfig(name=name, backend="python", max_batch_size=spec.max_batch_size)
    cfg.input.append(mc.ModelInput(name=INPUT_USER_ID, data_type=text, dims=[1]))
    if role == "recommend":
        cfg.input.append(mc.ModelInput(name=INPUT_RECENT_ITEMS, data_type=ids, dims=[-1],
                                       optional=True, allow_ragged_batch=True))
        for out, dtype, dims in ((OUTPUT_TOP_ITEMS, ids, spec.max_top_k),
                                 (OUTPUT_TOP_SCORES, config_data_type(TRITON_SCORE_DTYPE), spec.max_top_k),
                                 (OUTPUT_SOURCE, text, 1), (OUTPUT_RANKER_VERSION, text, 1)):
            cfg.output.append(mc.ModelOutput(name=out, data_type=dtype, dims=[dims]))
    else:
        cfg.input.append(mc.ModelInput(name=INPUT_ITEM_ID, data_type=text, dims=[1]))
        cfg.input.append(mc.ModelInput(name=INPUT_TIMESTAMP, data_type=config_data_type(TRITON_TIMESTAMP_DTYPE),
                                       dims=[1], optional=True))
        cfg.input.append(mc.ModelInput(name=INPUT_EVENT_ID, data_type=text, dims=[1], optional=True))
        cfg.output.append(mc.ModelOutput(name=OUTPUT_ACCEPTED, data_type=config_data_type(TRITON_ACCEPTED_DTYPE),
                                         dims=[1]))
    cfg.instance_group.append(mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=spec.instance_count))
    cfg.dynamic_batching.max_queue_delay_microseconds = spec.max_queue_delay_us
    params = {"role": role, "ranker": spec.ranker, "max_user_id_bytes": MAX_USER_ID_BYTES,
              "max_recent_items": MAX_RECENT_ITEMS,
              "length_buckets": ",".join(str(int(b)) for b in spec.length_buckets),
              "ranking": spec.ranking, "intra_op_num_threads": spec.intra_op_threads}
    if spec.store:
        params["store"] = spec.store
    for key, value in sorted(params.items()):
        cfg.parameters[key].string_value = str(value)
    return cfg


def build_user_models(repo_dir: str | Path, popularity: tuple[Sequence[int], Sequence[float]] | None,
                      spec: UserModelsSpec | RepositorySpec | None = None) -> list[Path]:
    """Write ``fsrec_user`` and ``fsrec_events`` into ``repo_dir`` (beside the ranker).

    ``popularity``: (item indices best first, their scores) — the answer for a user with nothing
    known; indices of the ranker's item map (None: no popularity.json, such users get no items). A :class:`RepositorySpec` is taken as the ranker's
    spec (its model name, top-k width and buckets)."""
    if isinstance(spec, RepositorySpec):
        spec = UserModelsSpec(ranker=spec.model_name, max_top_k=spec.max_top_k, length_buckets=tuple(spec.buckets()))
    if spec is not None and spec.ranking not in ("onnxruntime", "bls"):
        raise ConfigError(f"ranking must be 'onnxruntime' (in-process, cpu) or 'bls' (call the ranker model), "
                          f"got {spec.ranking!r}")
    spec = spec or _spec_of_ranker(Path(repo_dir), UserModelsSpec())
    items, scores = ([int(i) for i in popularity[0]], [float(s) for s in popularity[1]]) if popularity else ([], [])
    if len(items) != len(scores) or any(i < 1 for i in items):
        raise ConfigError("popularity must be (item indices >= 1, scores) of equal length, best first")
    repo, written = Path(repo_dir), []
    for name, role in ((USER_MODEL_NAME, "recommend"), (EVENTS_MODEL_NAME, "record")):
        vdir = repo / name / str(USER_VERSION)
        vdir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(USER_MODEL_SOURCE, vdir / PYTHON_MODEL_FILE)
        text = HEADER + text_format.MessageToString(_model(name, spec, role))
        (repo / name / CONFIG_FILE).write_text(text)
        written += [repo / name / CONFIG_FILE, vdir / PYTHON_MODEL_FILE]
        if role == "recommend" and popularity is not None:
            k = spec.max_top_k
            (vdir / POPULARITY_FILE).write_text(json.dumps({"items": items[:k], "scores": scores[:k]}) + "\n")
            written.append(vdir / POPULARITY_FILE)
    return written


def popularity_of(histories: Sequence[Sequence[int]], top_k: int) -> tuple[list[int], list[float]]:
    """The ``top_k`` most frequent item indices of ``histories`` and their shares, best first."""
    counts: dict[int, int] = {}
    for h in histories:
        for i in h:
            if int(i) > 0:
                counts[int(i)] = counts.get(int(i), 0) + 1
    total = max(1, sum(counts.values()))
    best = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
    return [i for i, _ in best], [c / total for _, c in best]



def _spec_of_ranker(repo: Path, spec: UserModelsSpec) -> UserModelsSpec:
    """``spec`` with the top-k width and length buckets of the ranker already in ``repo``."""
    import dataclasses

    from .runtime import ExportMeta, versions
    from .triton_config import load_model_config

    model_dir = repo / spec.ranker
    have = versions(model_dir)
    if not have or not (model_dir / CONFIG_FILE).exists():
        return spec
    cfg = load_model_config(model_dir)
    buckets = cfg.parameters["length_buckets"].string_value if "length_buckets" in cfg.parameters else ""
    return dataclasses.replace(spec, max_top_k=ExportMeta.load(model_dir / str(have[-1])).max_top_k,
                               length_buckets=tuple(int(b) for b in buckets.split(",") if b) or spec.length_buckets)
