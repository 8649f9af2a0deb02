"""Item metadata (id, title, categories): titles for display, categories as side features.

Categories become a multi-hot vector per item (columns sorted by name, or the order of
``one_hot_cols``); ``make_splits`` turns them into ``Splits.item_features`` and the model reads
them through ``num_item_features`` / ``set_item_features``: a new item gets its first vector
from its categories.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import DataFormatError
from .spec import ItemMetadataSpec
from .tables import iter_batches


@dataclass
class ItemMetadata:
    titles: dict[str, str] = field(default_factory=dict)  # raw item id -> title
    features: dict[str, np.ndarray] = field(default_factory=dict)  # raw item id -> [F] float32 multi-hot
    feature_names: list[str] = field(default_factory=list)  # the F category names, column order


def read_item_metadata(spec: ItemMetadataSpec | str | Path) -> ItemMetadata:
    """Read an item file. A bare path uses the default column names (item_id, title, categories)."""
    if not isinstance(spec, ItemMetadataSpec):
        spec = ItemMetadataSpec(path=str(spec))
    columns: dict[str, pa.DataType | None] = {spec.id_col: pa.string()}
    if spec.title_col:
        columns[spec.title_col] = pa.string()
    use_cats = bool(spec.categories_col) and not spec.one_hot_cols
    if use_cats:
        columns[spec.categories_col] = None
    for c in spec.one_hot_cols:
        columns[c] = pa.float32()
    ids: list[str] = []
    titles: dict[str, str] = {}
    cats: list[list[str]] = []
    onehot: list[np.ndarray] = []
    for b in iter_batches(spec, columns):
        t = b.table
        idcol = t.column(spec.id_col)
        if pa.types.is_integer(idcol.type):
            idcol = idcol.cast(pa.string())
        if idcol.null_count:
            i = int(pc.index(pc.is_null(idcol), True).as_py())
            raise DataFormatError(f"{b.where(i)}: column {spec.id_col!r} (item id) is empty; fix the row")
        batch_ids = idcol.to_pylist()
        ids.extend(batch_ids)
        if spec.title_col:
            for i, title in zip(batch_ids, t.column(spec.title_col).to_pylist()):
                if title is not None:
                    titles[i] = title
        if use_cats:
            col = t.column(spec.categories_col)
            if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
                cats.extend([[str(x) for x in (v or [])] for v in col.to_pylist()])
            elif pa.types.is_string(col.type) or pa.types.is_null(col.type):
                cats.extend([[c.strip() for c in v.split(spec.category_sep) if c.strip()] if v else []
                             for v in col.to_pylist()])
            else:
                raise DataFormatError(
                    f"{b.file}: column {spec.categories_col!r} has type {col.type}; write categories "
                    f"as a list or as one string joined by {spec.category_sep!r}"
                )
        if spec.one_hot_cols:
            onehot.append(np.stack([t.column(c).to_numpy(zero_copy_only=False) for c in spec.one_hot_cols],
                                   axis=1).astype(np.float32))
    out = ItemMetadata(titles=titles)
    if spec.one_hot_cols:
        mat = np.concatenate(onehot) if onehot else np.zeros((0, len(spec.one_hot_cols)), np.float32)
        out.feature_names = list(spec.one_hot_cols)
        out.features = {i: mat[k] for k, i in enumerate(ids)}
    elif use_cats:
        names = sorted({c for cs in cats for c in cs})
        col_of = {c: k for k, c in enumerate(names)}
        out.feature_names = names
        for i, cs in zip(ids, cats):
            v = np.zeros(len(names), np.float32)
            v[[col_of[c] for c in cs]] = 1.0
            out.features[i] = v
    return out


def attach_item_metadata(data, spec: ItemMetadataSpec) -> None:
    """Set ``data.item_names``, ``item_features`` and ``feature_names`` from the item file."""
    meta = read_item_metadata(spec)
    data.item_names = meta.titles
    if meta.feature_names:
        data.item_features = meta.features
        data.feature_names = meta.feature_names
    known = set(meta.titles) | set(meta.features)
    vocab = data.item_vocab
    data.stats["items_with_metadata"] = int(sum(1 for i in vocab if i in known))
    data.stats["item_categories"] = len(meta.feature_names)
