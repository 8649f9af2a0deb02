"""fsrec-serve: few-shot adaptive sequential recommendation, from training to Triton."""

__version__ = "0.1.0"

from .errors import FsRecError  # noqa: E402

__all__ = ["FsRecError", "__version__"]
