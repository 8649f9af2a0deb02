"""The serving contract: everything that crosses a process or file boundary, in one place.

Imported by the model, the exporters, the repository generator, the client, rollout, the load
tests and the benchmarks. Torch-free and import-free on purpose: the thin client imports it.
The Triton python models (``exporters/triton_python/``) read their tensor names and data types
from the model configuration Triton hands them (``config.pbtxt``, generated from this module);
the ranker's ``model.py`` runs inside Triton's python stub without this package and keeps a copy
of the file names and the padding index only, which a unit test checks against this module.

Shapes: B = batch, L = history length (1..MAX_SEQ_LEN of the model), K = max_top_k,
P = per-user parameter width (the model's hidden size).
"""

from __future__ import annotations

# -- tensors of the served graph --------------------------------------------------------------
INPUT_ITEM_IDS = "item_ids"  # [B, L] int64: left-padded item indices, newest last, 0 = padding
# [B, P] float32, optional: a per-user offset added to the user state before scoring. Absent or
# all zeros -> exactly the zero-shot answer of the base model (one served model for every user).
INPUT_USER_PARAMS = "user_params"
OUTPUT_TOP_ITEMS = "top_items"  # [B, K] int64: item indices, best first
OUTPUT_TOP_SCORES = "top_scores"  # [B, K] float32: their scores
OUTPUT_NAMES = (OUTPUT_TOP_ITEMS, OUTPUT_TOP_SCORES)
ITEM_IDS_DTYPE = "int64"  # numpy dtype name of item_ids and top_items
SCORE_DTYPE = "float32"  # numpy dtype name of top_scores and user_params
TRITON_ITEM_IDS_DTYPE = "INT64"  # the same, as Triton datatype strings
TRITON_SCORE_DTYPE = "FP32"
TRITON_ID_DTYPE = "BYTES"  # raw ids and text: user_id, item_id, event_id, source, ranker_version
TRITON_TIMESTAMP_DTYPE = "FP64"  # timestamp
TRITON_ACCEPTED_DTYPE = "INT32"  # accepted
BATCH_AXIS = "batch_size"  # name of the dynamic batch axis in the ONNX graph
SEQUENCE_AXIS = "sequence_length"  # name of the dynamic history axis in the ONNX graph

# -- the user-facing models in front of the ranker (lookup-then-rank, event intake) ------------
USER_MODEL_NAME = "fsrec_user"  # Triton model: user id -> store lookup -> ranker (BLS) -> top-k
EVENTS_MODEL_NAME = "fsrec_events"  # Triton model: events -> the store's event log
INPUT_USER_ID = "user_id"  # [B, 1] BYTES: raw user id (UTF-8, 1..256 bytes); hashed on arrival
# [B, R] int64, optional: item indices the user interacted with that the store has not seen yet
# (newest last, 0 = padding); appended to the stored history for this answer only
INPUT_RECENT_ITEMS = "recent_items"
OUTPUT_SOURCE = "source"  # [B, 1] BYTES: how the answer was made (one of SOURCES)
OUTPUT_RANKER_VERSION = "ranker_version"  # [B, 1] BYTES: the ranker version that answered ("" = none)
# personal = history + the user's parameters fitted on the answering model; history = the
# model on the history (+ recent_items) without parameters; popularity = nothing known at all
SOURCES = ("personal", "history", "popularity")
INPUT_ITEM_ID = "item_id"  # [B, 1] BYTES: raw item id of an event (unknown ids are kept, counted)
INPUT_TIMESTAMP = "timestamp"  # [B, 1] FP64, optional: event time, epoch seconds (absent = now)
INPUT_EVENT_ID = "event_id"  # [B, 1] BYTES: unique event id (the client makes one when absent)
OUTPUT_ACCEPTED = "accepted"  # [B, 1] INT32: 1 = stored, 0 = a duplicate event id (stored before)
MAX_USER_ID_BYTES = 256  # longest user id accepted
MAX_RECENT_ITEMS = 1024  # most recent_items per request (older events belong in the store)
POPULARITY_FILE = "popularity.json"  # fallback ranking beside the user model: {"items", "scores"}

# -- values ------------------------------------------------------------------------------------
PAD_INDEX = 0  # item index of padding (left side of a history); never recommended
MASK_VALUE = -1.0e4  # score of items that must never be recommended (fp16-safe)
DEFAULT_MAX_TOP_K = 100  # K of the exported graph unless the export says otherwise

# -- files -------------------------------------------------------------------------------------
ITEM_MAP_FILE = "item_map.json"  # raw id (str) <-> index 1..n, saved beside every model/export
META_FILE = "fsrec_meta.json"  # export metadata: max_seq_len, max_top_k, num_items, objective, ...
GUARD_FILE = "guard_decision.json"  # the accuracy guard's decision beside a served version
ONNX_FILE = "model.onnx"  # the served graph inside a version folder
PYTHON_MODEL_FILE = "model.py"  # the python-backend model inside a version folder (cpu target)
CONFIG_FILE = "config.pbtxt"  # Triton model configuration
DEFAULT_MODEL_NAME = "fsrec"  # Triton model name
REPOSITORY_TOP = "model_repository"  # the folder of the repository roots, one per target
# the cpu target's repository root (relative to the project): what `fsrec serve`, the main job,
# `fsrec events` and `fsrec loadtest` use by default; the others are model_repository/gpu, /gpu-python
DEFAULT_REPOSITORY = f"{REPOSITORY_TOP}/cpu"

# -- network -----------------------------------------------------------------------------------
DEFAULT_HOST = "127.0.0.1"  # loopback unless the operator says otherwise
DEFAULT_HTTP_PORT = 8000  # Triton's default HTTP port
DEFAULT_GRPC_PORT = 8001  # Triton's default gRPC port
DEFAULT_METRICS_PORT = 8002  # Triton's default Prometheus port
# Header that carries the admin key for Triton's restricted endpoints (model control /
# repository). gRPC metadata keys must be lower case, so the name is lower case everywhere.
RESTRICTED_KEY_HEADER = "fsrec-admin-key"
# Triton expects the gRPC form of a restricted-protocol header with this prefix.
GRPC_RESTRICTED_KEY_HEADER = f"triton-grpc-protocol-{RESTRICTED_KEY_HEADER}"
# Endpoint groups closed behind the key. Inference, health, metadata, model config and
# statistics stay open (clients and probes need them).
DEFAULT_RESTRICTED_APIS = ("model-repository", "trace", "logging", "shared-memory")


# -- rules -------------------------------------------------------------------------------------
def user_id_text(user_id) -> tuple[str | None, str | None]:
    """The one rule for a raw user id (str, UTF-8 bytes or int): ``(text, None)``, or ``(None,
    problem)`` where ``problem`` names what is wrong and the fix. A message never holds the id
    (only its length): user ids are personal data. The client (InvalidRequestError) and the store
    (InvalidEventError) raise it; the user model's stub keeps a copy (``decode_id``), checked
    against this function by a unit test."""
    if isinstance(user_id, (bytes, bytearray, memoryview)):
        raw = bytes(user_id)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None, f"user id is not UTF-8 ({len(raw)} bytes): send user ids as UTF-8 text"
    elif isinstance(user_id, (str, int)) and not isinstance(user_id, bool):
        text = str(user_id)
        try:
            raw = text.encode("utf-8")
        except UnicodeEncodeError:
            return None, (f"user id is not UTF-8 (a {len(text)}-character string with a lone surrogate): "
                          "send user ids as UTF-8 text")
    else:
        return None, (f"user id must be text (str or UTF-8 bytes) or an int, got {type(user_id).__name__}; "
                      "convert it with str()")
    if not text.strip():
        return None, f"user id is empty or only whitespace ({len(raw)} bytes): send the user's stable id"
    if len(raw) > MAX_USER_ID_BYTES:
        return None, (f"user id is {len(raw)} bytes, at most {MAX_USER_ID_BYTES} are accepted: "
                      "send a shorter stable id (e.g. a hash of it)")
    return text, None
