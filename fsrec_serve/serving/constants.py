"""Constants shared by the launcher, the client, docker/ and the ops tooling.

Light on purpose (no imports): the client imports it without pulling in the launcher.
"""

from __future__ import annotations

# Triton release inside the nvidia-pytriton 0.7 wheel; the official container with the same
# server release is 24.10 (Triton 2.51). docker/ and `fsrec serve --print-docker` use this tag.
TRITON_VERSION = "2.51.0"
TRITON_CONTAINER_TAG = "24.10-py3"
TRITON_CONTAINER_IMAGE = f"nvcr.io/nvidia/tritonserver:{TRITON_CONTAINER_TAG}"

# Header that carries the admin key for Triton's restricted endpoints (model control /
# repository). gRPC metadata keys must be lower case, so the name is lower case everywhere.
RESTRICTED_KEY_HEADER = "fsrec-admin-key"
# Endpoint groups closed behind the key when serve(restricted_api_key=...) is used. Inference,
# health, metadata, model config and statistics stay open (clients and probes need them).
DEFAULT_RESTRICTED_APIS = ("model-repository", "trace", "logging", "shared-memory")

# Where the model repository is mounted inside the container.
CONTAINER_REPOSITORY = "/models"
# Triton expects the gRPC form of a restricted-protocol header with this prefix
# ("This protocol is restricted, expecting header 'triton-grpc-protocol-<key>'").
GRPC_RESTRICTED_KEY_HEADER = f"triton-grpc-protocol-{RESTRICTED_KEY_HEADER}"
