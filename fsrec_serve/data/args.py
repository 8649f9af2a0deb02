"""The one way every command takes its data: ``add_data_arguments(parser)`` adds the options,
``data_source_from_args(args)`` turns them into a ``DataSpec``.

    fsrec train --data events.csv.gz --user-col uid --item-col sku --time-col ts
    fsrec train --data my_log.yaml              # a data-spec file with the same fields
    fsrec train --dataset ml-100k               # a preset (where the command has --dataset)
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..errors import ConfigError
from .spec import (
    DUPLICATE_POLICIES,
    FORMATS,
    SPEC_SUFFIXES,
    DataSpec,
    ItemMetadataSpec,
    load_spec_file,
)

# argparse dest -> DataSpec field
_FIELDS = {
    "user_col": "user_col", "item_col": "item_col", "time_col": "time_col", "rating_col": "rating_col",
    "sep": "sep", "data_format": "format", "data_name": "name", "time_format": "time_format",
    "duplicates": "duplicates", "user_core": "user_core", "item_core": "item_core",
    "implicit_threshold": "implicit_threshold", "min_user_interactions": "min_user_interactions",
}


def add_data_arguments(parser: argparse.ArgumentParser, presets: bool = False) -> None:
    """Add ``--data`` and its column/cleaning options (and ``--dataset``/``--data-dir`` with
    ``presets=True``, for commands that do not declare them already)."""
    g = parser.add_argument_group(
        "data source", "your own interaction log (CSV/TSV, Parquet file or shard folder, JSON Lines, "
        "one-user-a-line; .gz read transparently), or a data-spec file (.yaml/.toml) with the same fields",
    )
    if presets:
        g.add_argument("--dataset", default=None, help="a named data set: ml-100k or beauty")
        g.add_argument("--data-dir", default=None, help="folder holding the named data sets (env FSREC_DATA_DIR)")
    g.add_argument("--data", default=None, metavar="PATH",
                   help="interaction log (file or Parquet folder) or data-spec file (.yaml/.yml/.toml)")
    g.add_argument("--user-col", default=None, help="user id column (default user_id)")
    g.add_argument("--item-col", default=None, help="item id column (default item_id)")
    g.add_argument("--time-col", default=None, help="time column: unix time or dates (default: file order)")
    g.add_argument("--rating-col", default=None, help="rating column (default: implicit feedback)")
    g.add_argument("--sep", default=None, help="CSV separator (default ',' or tab for .tsv; '\\t' = tab)")
    g.add_argument("--format", dest="data_format", default=None, choices=FORMATS,
                   help="file format (default auto, from the file name)")
    g.add_argument("--time-format", default=None, help="strptime format of string dates (default ISO 8601)")
    g.add_argument("--name", dest="data_name", default=None,
                   help="data set name for reports and recommended hyperparameters (default: file stem)")
    g.add_argument("--item-metadata", default=None, metavar="PATH",
                   help="item file with item_id, title, categories (titles shown, categories = side features)")
    g.add_argument("--duplicates", default=None, choices=DUPLICATE_POLICIES,
                   help="repeated (user, item): keep all (default), keep first/last in time, drop all")
    g.add_argument("--user-core", type=int, default=None, help="k-core: min interactions per user")
    g.add_argument("--item-core", type=int, default=None, help="k-core: min interactions per item")
    g.add_argument("--implicit-threshold", type=float, default=None,
                   help="keep ratings >= this as positive implicit feedback (e.g. 4)")
    g.add_argument("--min-user-interactions", type=int, default=None,
                   help="drop (and count) users with fewer interactions (default 2)")


def _overrides(args) -> dict:
    return {f: getattr(args, dest) for dest, f in _FIELDS.items() if getattr(args, dest, None) is not None}


def data_source_from_args(args, dataset: str | None = None) -> DataSpec | None:
    """The DataSpec the options describe: ``--data`` (file or spec file, column options applied
    on top), else the preset ``dataset`` (or ``args.dataset``) under ``args.data_dir``; None when
    neither is given."""
    over = _overrides(args)
    meta = getattr(args, "item_metadata", None)
    data = getattr(args, "data", None)
    if data:
        p = Path(data)
        if p.suffix in SPEC_SUFFIXES and p.is_file():
            spec = load_spec_file(p)
            spec = dataclasses.replace(spec, **over) if over else spec
        else:
            spec = DataSpec(path=str(p), **over)
    else:
        name = dataset or getattr(args, "dataset", None)
        if not name:
            if over or meta:
                raise ConfigError("column and cleaning options need --data PATH (your log)")
            return None
        from .readers import preset_spec

        spec = preset_spec(name, getattr(args, "data_dir", None))
        spec = dataclasses.replace(spec, **over) if over else spec
    if meta:
        spec = dataclasses.replace(spec, item_metadata=ItemMetadataSpec(path=str(meta)))
    return spec


def require_data_source(args, command: str, dataset: str | None = None) -> DataSpec:
    """``data_source_from_args`` that refuses to return None: the error names the command."""
    spec = data_source_from_args(args, dataset=dataset)
    if spec is None:
        raise ConfigError(f"{command} needs a data set: --dataset ml-100k|beauty, or --data PATH (your log "
                          "or a data-spec file)")
    return spec


def split_config_from_args(args, default_seed: int = 0):
    """The SplitConfig of ``--split-seed`` / ``--full-loo`` (leave-one-out over every user)."""
    from .splits import SplitConfig

    seed = args.split_seed if getattr(args, "split_seed", None) is not None else default_seed
    if getattr(args, "full_loo", False):
        return SplitConfig(seed=seed, cold_user_frac=0.0, cold_item_frac=0.0)
    return SplitConfig(seed=seed)


def spec_label(spec: DataSpec) -> str:
    """What reports call the data: the preset name or the spec's name."""
    return spec.display_name
