"""Triton release and container constants of the launcher and docker/ (the serving contract
itself, header names included, is :mod:`fsrec_serve.contract`)."""

from __future__ import annotations

# Triton release inside the nvidia-pytriton 0.7 wheel; the official container with the same
# server release is 24.10 (Triton 2.51). docker/ and `fsrec serve --print-docker` use this tag.
TRITON_VERSION = "2.51.0"
TRITON_CONTAINER_TAG = "24.10-py3"
TRITON_CONTAINER_IMAGE = f"nvcr.io/nvidia/tritonserver:{TRITON_CONTAINER_TAG}"

# Where the model repository is mounted inside the container.
CONTAINER_REPOSITORY = "/models"
