"""Data: one description of an interaction log (DataSpec) for every command, streamed readers,
cleaning, item metadata, id maps, splits and the run record that rebuilds them."""

from .args import add_data_arguments, data_source_from_args, require_data_source
from .download import download_ml100k, verify_ml100k
from ..contract import PAD_INDEX
from ..idmap import IdMap
from .interactions import Interactions
from .loader import load_interactions
from .metadata import ItemMetadata, read_item_metadata
from .readers import (
    DATASETS,
    load_dataset,
    preset_spec,
    read_movielens_100k,
    read_sequences,
)
from .run_record import RUN_FILE, RunRecord
from .spec import PRESETS, DataSpec, ItemMetadataSpec, load_spec_file
from .splits import Example, SplitConfig, Splits, UserSequence, make_splits

__all__ = [
    "DATASETS",
    "PAD_INDEX",
    "PRESETS",
    "RUN_FILE",
    "RunRecord",
    "DataSpec",
    "Example",
    "IdMap",
    "Interactions",
    "ItemMetadata",
    "ItemMetadataSpec",
    "SplitConfig",
    "Splits",
    "UserSequence",
    "add_data_arguments",
    "data_source_from_args",
    "download_ml100k",
    "load_dataset",
    "load_interactions",
    "load_spec_file",
    "make_splits",
    "preset_spec",
    "read_item_metadata",
    "read_movielens_100k",
    "read_sequences",
    "require_data_source",
    "verify_ml100k",
]
