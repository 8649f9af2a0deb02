"""Named data sets and the classic readers, all through the one mechanism (``DataSpec`` ->
``load_interactions``): ML-100K and Beauty are presets (``spec.PRESETS``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from ..errors import DataNotFoundError
from ..settings import get_settings
from .interactions import Interactions
from .loader import load_interactions
from .spec import (
    ML100K_GENRES,
    PRESETS,
    DataSpec,
    as_spec_or_name,
    beauty_spec,
    ml100k_spec,
)
from .tables import iter_batches

__all__ = [
    "DATASETS",
    "ML100K_GENRES",
    "Interactions",
    "beauty_spec",
    "load_dataset",
    "ml100k_spec",
    "preset_spec",
    "read_movielens_100k",
    "read_sequences",
    "resolve_data",
]


def _require(path: Path, setting_hint: str) -> Path:
    if not path.exists():
        raise DataNotFoundError(
            f"{path} does not exist. Point {setting_hint} at the folder that holds the data sets "
            "(FSREC_DATA_DIR or --data-dir), or download it with `fsrec data download ml-100k`."
        )
    return path


def _ml100k_users(folder: Path) -> dict[str, dict]:
    """u.user demographics (user | age | gender | occupation | zip), where the file exists."""
    uuser = folder / "u.user"
    if not uuser.exists():
        return {}
    spec = DataSpec(path=str(uuser), format="csv", sep="|", header=False, encoding="latin-1",
                    quoting=False, column_names=["user_id", "age", "gender", "occupation", "zip"])
    cols = {c: pa.string() for c in spec.column_names}
    out: dict[str, dict] = {}
    for b in iter_batches(spec, cols):
        rows = b.table.to_pydict()
        for u, a, g, o, z in zip(rows["user_id"], rows["age"], rows["gender"], rows["occupation"], rows["zip"]):
            out[u] = {"age": int(a), "gender": g, "occupation": o, "zip": z}
    return out


def read_movielens_100k(folder: str | Path) -> Interactions:
    """Read MovieLens-100K's original files (u.data, u.item titles and genres, u.user demographics)."""
    folder = _require(Path(folder), "the data dir")
    _require(folder / "u.data", "the data dir")
    spec = ml100k_spec(folder)
    if not Path(spec.item_metadata.path).exists():
        spec.item_metadata = None
    data = load_interactions(spec)
    data.user_features = _ml100k_users(folder)
    return data


def read_sequences(path: str | Path, name: str | None = None) -> Interactions:
    """Read a one-user-a-line file: ``user_id item_id item_id ...`` (items in time order)."""
    path = _require(Path(path), "the data dir")
    return load_interactions(DataSpec(path=str(path), format="sequences", name=name or path.parent.name,
                                      min_user_interactions=1))


DATASETS = {
    # name -> (folder under the data dir, reader)
    "ml-100k": ("ml-100k", lambda p: read_movielens_100k(p)),
    "beauty": ("amazon-beauty", lambda p: read_sequences(p / "Beauty.txt", name="beauty")),
}


def _base_dir(data_dir: str | Path | None) -> Path:
    base = Path(data_dir) if data_dir is not None else get_settings().data_dir
    if not base.exists():
        raise DataNotFoundError(
            f"data dir {base} does not exist: set FSREC_DATA_DIR or pass --data-dir "
            "(e.g. --data-dir ../shared/data), or run `fsrec data download ml-100k`."
        )
    return base


def preset_spec(name: str, data_dir: str | Path | None = None) -> DataSpec:
    """The DataSpec of a named data set, with its files under the data dir."""
    resolved = as_spec_or_name(name)
    if isinstance(resolved, DataSpec):
        return resolved
    folder, build = PRESETS[resolved]
    return build(_require(_base_dir(data_dir) / folder, "FSREC_DATA_DIR / --data-dir"))


def load_dataset(name: Any, data_dir: str | Path | None = None) -> Interactions:
    """Load a data set: a preset name (``ml-100k``, ``beauty``, from the data dir =
    ``FSREC_DATA_DIR`` / ``--data-dir``), a ``DataSpec``, or the path of a data-spec file."""
    resolved = as_spec_or_name(name)
    if isinstance(resolved, DataSpec):
        return load_interactions(resolved)
    folder, reader = DATASETS[resolved]
    return reader(_require(_base_dir(data_dir) / folder, "FSREC_DATA_DIR / --data-dir"))


def resolve_data(dataset: Any = None, data_dir: str | Path | None = None) -> DataSpec:
    """DataSpec for a preset name / DataSpec / spec-file path (default ml-100k)."""
    return preset_spec(dataset or "ml-100k", data_dir)

