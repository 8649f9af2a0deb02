"""What an interaction log looks like: one typed description (``DataSpec``) for every command.

A ``DataSpec`` comes from the command line (``--data PATH --user-col ... --item-col ...``), from a
data-spec file (YAML or TOML with the same field names), or from a preset (``ml-100k``,
``beauty``): the named data sets are nothing but specs filled in for their files.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, UnknownDatasetError

FORMATS = ("auto", "csv", "parquet", "jsonl", "sequences")
DUPLICATE_POLICIES = ("keep", "first", "last", "drop")
SPEC_SUFFIXES = (".yaml", ".yml", ".toml")


@dataclass
class ItemMetadataSpec:
    """An optional item file: one row per item with its title and categories."""

    path: str  # file with one row per item (CSV/TSV/Parquet/JSON Lines; .gz read transparently)
    id_col: str = "item_id"  # the item id, as written in the interaction log
    title_col: str | None = "title"  # display title (None = no titles)
    categories_col: str | None = "categories"  # a list column, or one string split on category_sep
    category_sep: str = "|"  # separator inside a categories string ("Action|Comedy")
    one_hot_cols: list[str] = field(default_factory=list)  # 0/1 columns, one per category (instead)
    format: str = "auto"  # csv, parquet, jsonl or auto (from the file name)
    sep: str | None = None  # CSV separator (None = from the extension: ',' or tab for .tsv)
    header: bool = True  # False: the file has no header row, names come from column_names
    column_names: list[str] | None = None  # names of a headerless file's columns, in order
    encoding: str = "utf-8"  # text encoding of CSV files (latin-1 for ML-100K)
    quoting: bool = True  # False: '"' is an ordinary character (ML-100K titles)


@dataclass
class DataSpec:
    """An interaction log: where it is, which columns hold what, and how it is cleaned."""

    path: str  # a file, or a folder of Parquet shards (Spark/Dask layout); .gz read transparently
    user_col: str = "user_id"  # column with the user id (read as a string, never as a number)
    item_col: str = "item_id"  # column with the item id (read as a string, never as a number)
    time_col: str | None = None  # unix time (int/float) or dates; None = file order per user
    rating_col: str | None = None  # explicit rating; None = implicit (every rating 1.0)
    sep: str | None = None  # CSV separator; None = ',' (tab for .tsv/.tab)
    format: str = "auto"  # csv, parquet, jsonl, sequences ('user item item ...'), auto = by name
    header: bool = True  # False: no header row, column names come from column_names
    column_names: list[str] | None = None  # names of a headerless file's columns, in order
    encoding: str = "utf-8"  # text encoding (a UTF-8 byte-order mark is skipped)
    quoting: bool = True  # False: '"' is an ordinary character in CSV fields
    time_format: str | None = None  # strptime format of string times; None = ISO 8601
    name: str | None = None  # data set name (recommended hyperparameters, reports); None = file stem
    # -- validation ------------------------------------------------------------------------
    rating_range: list[float] | None = None  # [low, high]: ratings outside are an error
    # -- cleaning, in this order; each step is counted in `fsrec data stats` ----------------
    implicit_threshold: float | None = None  # keep rating >= this, then set ratings to 1.0
    duplicates: str = "keep"  # repeated (user, item): keep all, keep "first"/"last" in time, "drop" all
    user_core: int = 0  # k-core: users need at least this many interactions (0 = off)
    item_core: int = 0  # k-core: items need at least this many interactions (0 = off)
    min_user_interactions: int = 2  # shorter users are dropped and counted (a sequence needs 2)
    item_metadata: ItemMetadataSpec | None = None  # titles and categories of the items

    def __post_init__(self) -> None:
        if isinstance(self.item_metadata, dict):
            self.item_metadata = ItemMetadataSpec(**_check_keys(self.item_metadata, ItemMetadataSpec,
                                                                "item_metadata"))
        if self.format not in FORMATS:
            raise ConfigError(f"format {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.duplicates not in DUPLICATE_POLICIES:
            raise ConfigError(
                f"duplicates {self.duplicates!r} is not one of {', '.join(DUPLICATE_POLICIES)}"
            )
        for k in ("user_core", "item_core", "min_user_interactions"):
            if int(getattr(self, k)) < 0:
                raise ConfigError(f"{k} must be >= 0, got {getattr(self, k)}")
        if self.rating_range is not None:
            rr = list(self.rating_range)
            if len(rr) != 2 or not float(rr[0]) <= float(rr[1]):
                raise ConfigError(f"rating_range must be [low, high] with low <= high, got {rr}")
            self.rating_range = [float(rr[0]), float(rr[1])]
        if self.implicit_threshold is not None and self.rating_col is None:
            raise ConfigError("implicit_threshold needs a rating column: pass --rating-col")

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        p = Path(self.path)
        stem = p.name.split(".")[0] if p.is_file() or "." in p.name else p.name
        return stem or "data"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def absolute(self) -> dict:
        """The spec as a JSON-ready dict with absolute paths (what a model folder records)."""
        d = self.to_dict()
        d["path"] = str(Path(d["path"]).resolve())
        if d.get("item_metadata"):
            d["item_metadata"]["path"] = str(Path(d["item_metadata"]["path"]).resolve())
        return d

    def save(self, path: str | Path) -> None:
        """Write the spec as JSON (absolute paths)."""
        Path(path).write_text(json.dumps(self.absolute(), indent=2) + "\n")


def _check_keys(d: dict, cls, where: str) -> dict:
    known = [f.name for f in dataclasses.fields(cls)]
    for k in d:
        if k not in known:
            near = difflib.get_close_matches(k, known, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; known: {', '.join(known)}"
            raise ConfigError(f"{where}: unknown field {k!r}{hint}")
    return d


def load_spec_file(path: str | Path) -> DataSpec:
    """Read a data-spec file (YAML, TOML or JSON). Relative paths are relative to the file."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            import tomllib

            d = tomllib.loads(text)
        elif path.suffix == ".json":
            d = json.loads(text)
        else:
            import yaml

            d = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 (any parser's syntax error)
        raise ConfigError(f"{path}: not a valid data-spec file ({e})") from None
    if not isinstance(d, dict) or "path" not in d:
        raise ConfigError(f"{path}: a data spec needs at least 'path' (and user_col, item_col, ...)")
    d = _check_keys(dict(d), DataSpec, str(path))
    base = path.parent
    if not Path(d["path"]).is_absolute():
        d["path"] = str(base / d["path"])
    meta = d.get("item_metadata")
    if isinstance(meta, dict) and "path" in meta and not Path(meta["path"]).is_absolute():
        d["item_metadata"] = {**meta, "path": str(base / meta["path"])}
    elif isinstance(meta, str):
        d["item_metadata"] = {"path": meta if Path(meta).is_absolute() else str(base / meta)}
    return DataSpec(**d)


# -- presets: the named data sets are specs of the same mechanism -------------------------------
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
]


def ml100k_spec(folder: str | Path) -> DataSpec:
    """MovieLens-100K's u.data (tab-separated, no header) with u.item titles and genres."""
    folder = Path(folder)
    return DataSpec(
        path=str(folder / "u.data"), format="csv", sep="\t", header=False,
        column_names=["user_id", "item_id", "rating", "timestamp"], user_col="user_id",
        item_col="item_id", time_col="timestamp", rating_col="rating", encoding="latin-1",
        quoting=False, name="ml-100k", rating_range=[1.0, 5.0], min_user_interactions=1,
        item_metadata=ItemMetadataSpec(
            path=str(folder / "u.item"), format="csv", sep="|", header=False, encoding="latin-1",
            quoting=False, column_names=["item_id", "title", "release_date", "video_release_date",
                                         "imdb_url", *ML100K_GENRES],
            title_col="title", categories_col=None, one_hot_cols=list(ML100K_GENRES),
        ),
    )


def beauty_spec(folder: str | Path) -> DataSpec:
    """Amazon Beauty (SASRec's 5-core file): one user a line, items in time order."""
    return DataSpec(path=str(Path(folder) / "Beauty.txt"), format="sequences", name="beauty",
                    min_user_interactions=1)


PRESETS = {
    # name -> (folder under the data dir, spec builder)
    "ml-100k": ("ml-100k", ml100k_spec),
    "beauty": ("amazon-beauty", beauty_spec),
}


def preset_name(spec: DataSpec) -> str | None:
    """The preset ``spec`` is (``ml-100k``, ``beauty``: the preset's spec for its folder under a
    data dir, item metadata aside), or None for any other log."""
    entry = PRESETS.get(spec.name or "")
    folder = Path(spec.path).parent
    if entry is None or folder.name != entry[0]:
        return None
    preset = entry[1](folder)
    same = dataclasses.replace(preset, item_metadata=None) == dataclasses.replace(spec, item_metadata=None)
    return spec.name if same else None


def unknown_dataset(name: str) -> UnknownDatasetError:
    return UnknownDatasetError(
        f"unknown dataset {name!r}; known: {', '.join(sorted(PRESETS))}. For your own log pass "
        "--data PATH --user-col ... --item-col ... (or a data-spec .yaml/.toml file)."
    )


def as_spec_or_name(value: Any) -> Any:
    """A DataSpec, a preset name, or a path to a data-spec file -> DataSpec or preset name."""
    if isinstance(value, DataSpec):
        return value
    s = str(value)
    if s in PRESETS:
        return s
    if Path(s).suffix in SPEC_SUFFIXES + (".json",) and Path(s).is_file():
        return load_spec_file(s)
    raise unknown_dataset(s)
