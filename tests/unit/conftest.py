"""Fixtures of the unit tests of the Triton python models (``exporters/triton_python/``).

- ``triton_utils``: loads ``triton_python_backend_utils`` as the models import it inside Triton's stub.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

STUB_UTILS = "triton_python_backend_utils"


@pytest.fixture(scope="session")
def triton_utils():
    """A function that loads a fresh copy of Triton's own ``triton_python_backend_utils.py`` from the
    installed Triton wheel (pure python: the model-config helpers and the data-type table). Inside a
    server the stub's C++ side adds the tensor, request, response and error classes; a test sets
    its stand-ins for those on the copy it gets and registers it in ``sys.modules``."""
    spec = importlib.util.find_spec("pytriton")
    path = (Path(spec.origin).parent / "tritonserver" / "backends" / "python" / f"{STUB_UTILS}.py"
            if spec is not None and spec.origin else None)
    if path is None or not path.is_file():
        pytest.skip("the Triton wheel (nvidia-pytriton, the [triton] extra) is not installed")

    def load():
        loader = importlib.util.spec_from_file_location(STUB_UTILS, path)
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
        return module

    return load
