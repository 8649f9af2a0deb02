"""The serving contract: everything that crosses a process or file boundary, in one place.

Imported by the model, the exporters, the repository generator, the client, rollout, the load
tests and the benchmarks. Torch-free and import-free on purpose: the thin client imports it.
``exporters/triton_python/model.py`` runs inside Triton's python stub and keeps its own copy of
the values it needs; a unit test checks that copy against this module.

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
BATCH_AXIS = "batch_size"  # name of the dynamic batch axis in the ONNX graph
SEQUENCE_AXIS = "sequence_length"  # name of the dynamic history axis in the ONNX graph

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
