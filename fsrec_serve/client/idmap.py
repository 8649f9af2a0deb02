"""The client's reader of ``item_map.json`` (contract.ITEM_MAP_FILE): raw id <-> index 1..n.

The thin client imports only the contract and the errors, so it reads the file itself instead
of importing the data package (whose readers pull in pyarrow). The file format is the contract:
``{"pad_index": 0, "raw_ids": [raw id of index 1, raw id of index 2, ...]}``.

An id map with the same methods and lookup tables (``_to_index`` raw -> index, ``_to_raw`` index
-> raw, slot 0 = padding), such as ``fsrec_serve.data.IdMap``, is accepted wherever an id map is
expected: ``isinstance(data_idmap, IdMap)`` is true.
"""

from __future__ import annotations

import abc
import json
from pathlib import Path
from typing import Iterable

from ..contract import PAD_INDEX
from ..errors import DataFormatError, UnknownItemError


class IdMap(abc.ABC):
    """Read side of an id map: raw ids (strings) <-> indices 1..n (0 = padding)."""

    def __init__(self, raw_ids: Iterable[str | int] = ()):
        self._to_raw: list[str | None] = [None]  # slot PAD_INDEX = padding
        self._to_index: dict[str, int] = {}
        for raw in map(str, raw_ids):
            if raw not in self._to_index:
                self._to_index[raw] = len(self._to_raw)
                self._to_raw.append(raw)

    @classmethod
    def __subclasshook__(cls, other: type) -> bool:
        # structural: any id map with both lookup tables (fsrec_serve.data.IdMap has them)
        if cls is IdMap and all(hasattr(other, name) for name in ("index", "raw", "raws")):
            return True
        return NotImplemented

    @classmethod
    def load(cls, path: str | Path) -> "IdMap":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataFormatError(f"id map {path} is missing; it is written beside every export") from None
        except json.JSONDecodeError as e:
            raise DataFormatError(f"id map {path} is not valid JSON ({e}); re-export the model") from None
        if not isinstance(data, dict) or not isinstance(data.get("raw_ids"), list):
            raise DataFormatError(f"id map {path} has no 'raw_ids' list; re-export the model")
        if data.get("pad_index", PAD_INDEX) != PAD_INDEX:
            raise DataFormatError(f"id map {path}: pad_index must be {PAD_INDEX}")
        return cls(data["raw_ids"])

    def __len__(self) -> int:
        return len(self._to_raw) - 1  # padding excluded

    def __contains__(self, raw: object) -> bool:
        return str(raw) in self._to_index

    def index(self, raw: str | int) -> int:
        try:
            return self._to_index[str(raw)]
        except KeyError:
            raise UnknownItemError(f"unknown id {raw!r}: not in the model's id map ({len(self)} ids)") from None

    def raw(self, index: int) -> str:
        if not 1 <= int(index) <= len(self):
            raise UnknownItemError(f"index {index} is out of range 1..{len(self)}")
        return self._to_raw[int(index)]  # type: ignore[return-value]

    def raws(self, indices: Iterable[int]) -> list[str]:
        return [self.raw(i) for i in indices]

    def __repr__(self) -> str:
        return f"IdMap({len(self)} ids, read-only client copy)"
