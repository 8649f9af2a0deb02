"""Serving: start a real tritonserver on a model repository (locally from the nvidia-pytriton
wheel, or the official container on GPU hosts), watch it and stop it cleanly."""

from .constants import CONTAINER_REPOSITORY, TRITON_CONTAINER_IMAGE, TRITON_CONTAINER_TAG, TRITON_VERSION
from .server import (
    ServerPorts,
    TritonServer,
    docker_command,
    error_lines,
    find_free_ports,
    list_models,
    port_is_free,
    restricted_args,
    serve,
)
from .triton_install import TritonInstallation, find_triton, prepare_backends

__all__ = [
    "CONTAINER_REPOSITORY", "TRITON_CONTAINER_IMAGE", "TRITON_CONTAINER_TAG", "TRITON_VERSION", "ServerPorts", "TritonServer",
    "docker_command", "error_lines", "find_free_ports", "list_models", "port_is_free", "restricted_args",
    "serve", "TritonInstallation", "find_triton", "prepare_backends",
]
