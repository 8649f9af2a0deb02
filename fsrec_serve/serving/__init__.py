"""Serving: the launcher. Start a real tritonserver on a model repository (locally from the
nvidia-pytriton wheel, or the official container on GPU hosts), watch it and stop it cleanly.

``serve(ServerConfig(...))`` (or ``serve(repository, **fields)``) returns a ``TritonServer``.
Clients live in :mod:`fsrec_serve.client`; model control, rollouts and load tests in
:mod:`fsrec_serve.operations`.
"""

from .config import ServerConfig
from .constants import (
    CONTAINER_REPOSITORY,
    TRITON_CONTAINER_IMAGE,
    TRITON_CONTAINER_TAG,
    TRITON_VERSION,
)
from .docker import docker_command, docker_command_line
from .flags import list_models, restricted_args
from .launcher import serve
from .ports import ServerPorts, find_free_ports, port_is_free
from .process import TritonServer, error_lines
from .triton_install import TritonInstallation, find_triton, prepare_backends

__all__ = [
    "CONTAINER_REPOSITORY", "TRITON_CONTAINER_IMAGE", "TRITON_CONTAINER_TAG", "TRITON_VERSION", "ServerConfig",
    "ServerPorts", "TritonServer", "docker_command", "docker_command_line", "error_lines", "find_free_ports",
    "list_models", "port_is_free", "restricted_args", "serve", "TritonInstallation", "find_triton", "prepare_backends",
]
