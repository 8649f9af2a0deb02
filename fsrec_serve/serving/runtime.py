"""Runtime copies of a model repository: what tritonserver reads when the python-backend
model needs ``EXECUTION_ENV_PATH`` (written by ``exporters.runtime_repository``; files are
symlinked), published atomically through a symlink flip."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence


def materialize(repository: Path, execution_env_path: str, dest: Path, models: Sequence[str] | None) -> Path:
    """A runnable copy of ``repository`` at ``dest`` (the exporters own the repository format)."""
    from exporters import runtime_repository

    return Path(runtime_repository(repository, dest, execution_env_path=execution_env_path, models=models))


def flip_symlink(link: Path, target: Path) -> None:
    """Point ``link`` at ``target`` atomically (tritonserver follows it on the next load)."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)
