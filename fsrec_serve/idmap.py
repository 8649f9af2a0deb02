"""Raw id <-> contiguous index maps (``item_map.json``, contract.ITEM_MAP_FILE). Index 0 = padding.

Torch- and pyarrow-free, in the base layer: the data package builds and saves maps, the model
keeps one, and the thin client reads the served model's map with the same class. The file format
is the contract: ``{"pad_index": 0, "raw_ids": [raw id of index 1, raw id of index 2, ...]}``.

:func:`pad_left` turns index histories into the rows the model reads (left-padded with index 0,
newest last); the model, the evaluation, the exporters, the client, the operations and the front
models all pad with it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .contract import ITEM_IDS_DTYPE, PAD_INDEX
from .errors import DataFormatError, UnknownItemError


def pad_left(histories: Iterable[Sequence[int]], width: int) -> np.ndarray:
    """Index histories (oldest first) -> int64 [B, width], each row left-padded with PAD_INDEX
    (newest item last); a history longer than ``width`` keeps its newest ``width`` items.

    A history may be any 1-D sequence of indices (list, tuple, numpy array, cpu tensor)."""
    rows = [np.asarray(h, dtype=ITEM_IDS_DTYPE).reshape(-1) for h in histories]
    out = np.full((len(rows), int(width)), PAD_INDEX, dtype=ITEM_IDS_DTYPE)
    for i, row in enumerate(rows):
        row = row[max(0, len(row) - int(width)):]
        if len(row):
            out[i, int(width) - len(row):] = row
    return out


class IdMap:
    """Maps raw ids (strings, as users and clients see them) to indices 1..n (0 = padding)."""

    def __init__(self, raw_ids: Iterable[str] = ()):
        self._to_index: dict[str, int] = {}
        self._to_raw: list[str | None] = [None]  # slot 0 = padding
        for r in raw_ids:
            self.add(r)

    def add(self, raw: str | int) -> int:
        raw = str(raw)
        idx = self._to_index.get(raw)
        if idx is None:
            idx = len(self._to_raw)
            self._to_index[raw] = idx
            self._to_raw.append(raw)
        return idx

    def __len__(self) -> int:
        """Number of real ids (padding excluded)."""
        return len(self._to_raw) - 1

    @property
    def vocab_size(self) -> int:
        """Number of indices including padding (len + 1)."""
        return len(self._to_raw)

    def __contains__(self, raw: object) -> bool:
        return str(raw) in self._to_index

    def index(self, raw: str | int) -> int:
        try:
            return self._to_index[str(raw)]
        except KeyError:
            raise UnknownItemError(
                f"unknown id {raw!r}: it is not in this model's id map ({len(self)} ids); "
                "drop it from the history or retrain/adapt with it"
            ) from None

    def indices(self, raws: Sequence[str | int]) -> list[int]:
        return [self.index(r) for r in raws]

    def raw(self, index: int) -> str:
        if not 1 <= int(index) < len(self._to_raw):
            raise UnknownItemError(f"index {index} is out of range 1..{len(self)}")
        return self._to_raw[int(index)]  # type: ignore[return-value]

    def raws(self, indices: Iterable[int]) -> list[str]:
        return [self.raw(i) for i in indices]

    @property
    def raw_ids(self) -> list[str]:
        return list(self._to_raw[1:])  # type: ignore[arg-type]

    # -- persistence ----------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"pad_index": PAD_INDEX, "raw_ids": self.raw_ids}

    @classmethod
    def from_dict(cls, d: dict) -> IdMap:
        if not isinstance(d, dict) or not isinstance(d.get("raw_ids"), list):
            raise DataFormatError("id map has no 'raw_ids' list; regenerate it with save() or re-export the model")
        if d.get("pad_index", PAD_INDEX) != PAD_INDEX:
            raise DataFormatError(f"id map: pad_index must be {PAD_INDEX}; regenerate it with save()")
        return cls(d["raw_ids"])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> IdMap:
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise DataFormatError(f"id map {path} is missing; it is written by save_pretrained and beside every export") from None
        except json.JSONDecodeError as e:
            raise DataFormatError(f"id map {path} is not valid JSON ({e}); regenerate it") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdMap) and self._to_raw == other._to_raw

    def __repr__(self) -> str:
        return f"IdMap({len(self)} ids)"
