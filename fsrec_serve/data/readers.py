"""Readers for the real data sets: MovieLens-100K and one-user-a-line sequence files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataFormatError, DataNotFoundError, EmptyUserError, UnknownDatasetError
from ..settings import get_settings

ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
]


@dataclass
class Interactions:
    """An interaction log in raw ids. Arrays are aligned; order within a user is time order."""

    name: str  # data set name ("ml-100k", "beauty", ...)
    users: np.ndarray  # [N] raw user ids (str)
    items: np.ndarray  # [N] raw item ids (str)
    ratings: np.ndarray  # [N] float32 explicit ratings (1.0 where the log has none)
    timestamps: np.ndarray  # [N] int64 unix time, or the position in the user's line
    has_timestamps: bool = True  # False when timestamps are only positions (Beauty)
    item_features: dict[str, np.ndarray] = field(default_factory=dict)  # raw item -> multi-hot
    feature_names: list[str] = field(default_factory=list)  # names of the feature columns
    user_features: dict[str, dict] = field(default_factory=dict)  # raw user -> demographics
    item_names: dict[str, str] = field(default_factory=dict)  # raw item -> title, where known

    def __len__(self) -> int:
        return len(self.users)

    @property
    def n_users(self) -> int:
        return len(np.unique(self.users))

    @property
    def n_items(self) -> int:
        return len(np.unique(self.items))

    def sequences(self) -> dict[str, list[tuple[str, float, int]]]:
        """raw user -> [(raw item, rating, timestamp)] in time order (ties keep file order)."""
        order = np.lexsort((np.arange(len(self)), self.timestamps, self.users))
        out: dict[str, list[tuple[str, float, int]]] = {}
        for i in order:
            out.setdefault(self.users[i], []).append(
                (self.items[i], float(self.ratings[i]), int(self.timestamps[i]))
            )
        return out


def _require(path: Path, setting_hint: str) -> Path:
    if not path.exists():
        raise DataNotFoundError(
            f"{path} does not exist. Point {setting_hint} at the folder that holds the data sets "
            "(FSREC_DATA_DIR or --data-dir), or download it with `fsrec data download ml-100k`."
        )
    return path


def read_movielens_100k(folder: str | Path) -> Interactions:
    """Read MovieLens-100K's original files (u.data, u.item genres, u.user demographics)."""
    folder = _require(Path(folder), "the data dir")
    udata = _require(folder / "u.data", "the data dir")
    users, items, ratings, ts = [], [], [], []
    with open(udata, encoding="latin-1") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 4:
                raise DataFormatError(
                    f"{udata}:{n}: expected 4 tab-separated fields (user, item, rating, time), "
                    f"got {len(parts)}: {line.strip()[:80]!r}"
                )
            try:
                r, t = float(parts[2]), int(parts[3])
            except ValueError:
                raise DataFormatError(
                    f"{udata}:{n}: rating and time must be numbers, got {parts[2]!r}, {parts[3]!r}"
                ) from None
            users.append(parts[0])
            items.append(parts[1])
            ratings.append(r)
            ts.append(t)
    item_features: dict[str, np.ndarray] = {}
    item_names: dict[str, str] = {}
    uitem = folder / "u.item"
    if uitem.exists():
        with open(uitem, encoding="latin-1") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                parts = line.rstrip("\n").split("|")
                if len(parts) != 5 + len(ML100K_GENRES):
                    raise DataFormatError(
                        f"{uitem}:{n}: expected {5 + len(ML100K_GENRES)} '|'-separated fields, "
                        f"got {len(parts)}"
                    )
                item_features[parts[0]] = np.array([float(x) for x in parts[5:]], dtype=np.float32)
                item_names[parts[0]] = parts[1]
    user_features: dict[str, dict] = {}
    uuser = folder / "u.user"
    if uuser.exists():
        with open(uuser, encoding="latin-1") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                parts = line.rstrip("\n").split("|")
                if len(parts) != 5:
                    raise DataFormatError(f"{uuser}:{n}: expected 5 '|'-separated fields, got {len(parts)}")
                user_features[parts[0]] = {
                    "age": int(parts[1]), "gender": parts[2], "occupation": parts[3], "zip": parts[4]
                }
    return Interactions(
        name="ml-100k",
        users=np.array(users, dtype=object),
        items=np.array(items, dtype=object),
        ratings=np.array(ratings, dtype=np.float32),
        timestamps=np.array(ts, dtype=np.int64),
        has_timestamps=True,
        item_features=item_features,
        feature_names=list(ML100K_GENRES) if item_features else [],
        user_features=user_features,
        item_names=item_names,
    )


def read_sequences(path: str | Path, name: str | None = None) -> Interactions:
    """Read a one-user-a-line file: ``user_id item_id item_id ...`` (items in time order)."""
    path = _require(Path(path), "the data dir")
    users, items, ts = [], [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise EmptyUserError(
                    f"{path}:{n}: user {parts[0]!r} has no items; each line must be "
                    "'user_id item_id [item_id ...]'. Remove the line or add its items."
                )
            u = parts[0]
            for pos, it in enumerate(parts[1:]):
                users.append(u)
                items.append(it)
                ts.append(pos)
    if not users:
        raise DataFormatError(f"{path}: no interactions found (empty file?)")
    return Interactions(
        name=name or path.parent.name,
        users=np.array(users, dtype=object),
        items=np.array(items, dtype=object),
        ratings=np.ones(len(users), dtype=np.float32),
        timestamps=np.array(ts, dtype=np.int64),
        has_timestamps=False,
    )


DATASETS = {
    # name -> (folder under the data dir, reader)
    "ml-100k": ("ml-100k", lambda p: read_movielens_100k(p)),
    "beauty": ("amazon-beauty", lambda p: read_sequences(p / "Beauty.txt", name="beauty")),
}


def load_dataset(name: str, data_dir: str | Path | None = None) -> Interactions:
    """Load a data set by name from the data dir (``FSREC_DATA_DIR`` / ``--data-dir``)."""
    if name not in DATASETS:
        raise UnknownDatasetError(
            f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}. "
            "For another one-user-a-line file use read_sequences(path)."
        )
    folder, reader = DATASETS[name]
    base = Path(data_dir) if data_dir is not None else get_settings().data_dir
    if not base.exists():
        raise DataNotFoundError(
            f"data dir {base} does not exist: set FSREC_DATA_DIR or pass --data-dir "
            "(e.g. --data-dir ../shared/data), or run `fsrec data download ml-100k`."
        )
    return reader(_require(base / folder, "FSREC_DATA_DIR / --data-dir"))
