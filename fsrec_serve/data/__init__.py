"""Data: one description of an interaction log (DataSpec) for every command, streamed readers,
cleaning, item metadata, id maps and splits."""

from .args import add_data_arguments, data_source_from_args
from .download import download_ml100k, verify_ml100k
from .idmap import PAD_INDEX, IdMap
from .interactions import Interactions
from .loader import load_interactions
from .metadata import ItemMetadata, read_item_metadata
from .readers import DATASETS, load_dataset, preset_spec, read_movielens_100k, read_sequences
from .spec import PRESETS, DataSpec, ItemMetadataSpec, load_spec_file
from .splits import Example, SplitConfig, Splits, UserSequence, make_splits

__all__ = [
    "PAD_INDEX", "IdMap", "DATASETS", "PRESETS", "Interactions", "load_dataset", "read_movielens_100k",
    "read_sequences", "download_ml100k", "verify_ml100k", "Example", "SplitConfig", "Splits",
    "UserSequence", "make_splits", "DataSpec", "ItemMetadataSpec", "load_spec_file", "load_interactions",
    "preset_spec", "ItemMetadata", "read_item_metadata", "add_data_arguments", "data_source_from_args",
]
