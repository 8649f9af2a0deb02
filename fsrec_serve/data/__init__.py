"""Data: readers, downloader, id maps and splits."""

from .download import download_ml100k, verify_ml100k
from .idmap import PAD_INDEX, IdMap
from .readers import DATASETS, Interactions, load_dataset, read_movielens_100k, read_sequences
from .splits import Example, SplitConfig, Splits, UserSequence, make_splits

__all__ = [
    "PAD_INDEX", "IdMap", "DATASETS", "Interactions", "load_dataset", "read_movielens_100k",
    "read_sequences", "download_ml100k", "verify_ml100k", "Example", "SplitConfig", "Splits",
    "UserSequence", "make_splits",
]
