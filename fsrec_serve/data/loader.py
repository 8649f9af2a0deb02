"""Load any interaction log described by a ``DataSpec`` into ``Interactions``.

Streamed: each batch's id columns are dictionary-encoded at once (int codes, the strings kept
once per distinct id), times and ratings become int64/float32 arrays; the raw text is dropped
batch by batch. Then the checks and the cleaning steps of ``cleaning.py`` run on the codes.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

from ..errors import DataFormatError, EmptyUserError
from . import tables
from .cleaning import clean
from .interactions import Interactions
from .spec import DataSpec
from .tables import Batch, MixedJsonTypes, check_file, detect_format, iter_batches


def _ids(arr: pa.ChunkedArray, col: str, b: Batch) -> pa.Array:
    """A batch's id column as a dictionary array over strings (ints become their decimal text)."""
    t = arr.type
    arr = arr.chunk(0) if arr.num_chunks == 1 else arr.combine_chunks()
    if arr.null_count:
        i = int(pc.index(pc.is_null(arr), True).as_py())
        raise DataFormatError(f"{b.where(i)}: column {col!r} is empty; every row needs a user and an "
                              "item id. Fix or drop the row")
    if pa.types.is_dictionary(t) and (pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)
                                      or pa.types.is_integer(t.value_type)):
        # already encoded (Parquet dictionary pages): only the distinct values are converted
        return pa.DictionaryArray.from_arrays(arr.indices.cast(pa.int32()), arr.dictionary.cast(pa.string()))
    if pa.types.is_integer(t):  # hash the ints, then write only the distinct ones as text
        enc = pc.dictionary_encode(arr)
        return pa.DictionaryArray.from_arrays(enc.indices, enc.dictionary.cast(pa.string()))
    if pa.types.is_floating(t):
        raise DataFormatError(
            f"{b.file}: id column {col!r} is stored as floating point ({t}); ids are never read as "
            "floats (1.0 vs 1, lost leading zeros). Fix: write the ids as integers or strings"
        )
    if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
        raise DataFormatError(f"{b.file}: id column {col!r} has type {t}; write ids as strings or integers")
    return pc.dictionary_encode(arr)


def _np(arr: pa.Array) -> np.ndarray:
    """numpy view of a primitive arrow array (zero-copy; never goes through pandas)."""
    if arr.null_count == 0 and (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
        return arr.to_numpy(zero_copy_only=True)
    return np.asarray(arr.to_pylist(), dtype=np.float64)


def _looks_int(s: str | None) -> bool:
    return s is not None and s.strip().lstrip("-").isdigit()


def _times(arr: pa.ChunkedArray, spec: DataSpec, b: Batch) -> np.ndarray:
    """[n] int64: integers as they are, floats in microseconds, dates as unix seconds."""
    col, t = spec.time_col, arr.type
    if arr.null_count:
        i = int(pc.index(pc.is_null(arr), True).as_py())
        raise DataFormatError(f"{b.where(i)}: column {col!r} (--time-col) is empty. Fix or drop the row")
    arr = arr.combine_chunks()  # (ChunkedArray.to_numpy would import pandas)
    if pa.types.is_integer(t):
        return _np(arr.cast(pa.int64()))
    if pa.types.is_floating(t):
        v = _np(arr)
        if not np.isfinite(v).all():
            i = int(np.flatnonzero(~np.isfinite(v))[0])
            raise DataFormatError(f"{b.where(i)}: column {col!r} (--time-col) is {v[i]}. Fix the row")
        return np.round(v * 1e6).astype(np.int64)
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return _np(arr.cast(pa.timestamp("s")).cast(pa.int64()))
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        if spec.time_format:
            parsed = pc.strptime(arr, format=spec.time_format, unit="s", error_is_null=True)
        else:
            parsed = None
            for target in (pa.timestamp("s"), pa.timestamp("s", tz="UTC")):
                try:
                    parsed = arr.cast(target)
                    break
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    continue
        if parsed is None or parsed.null_count:
            vals = arr.to_pylist()
            kinds = [_looks_int(v) for v in vals]
            mixed = 0 < sum(kinds) < len(vals)
            # mixed: the first row of the other kind than the first row; else the first unparsable
            i = kinds.index(not kinds[0]) if mixed else _parse_each(vals, spec.time_format).index(False)
            fmt = f"--time-format {spec.time_format!r}" if spec.time_format else "ISO 8601 (2021-03-04 12:00:00)"
            raise DataFormatError(
                f"{b.where(i)}: column {col!r} (--time-col) holds {vals[i]!r}, "
                + ("and the column mixes unix times (ints) and dates. Fix: write one kind for every "
                   "row" if mixed else f"which is not a unix time nor a date in {fmt}. Fix the row, "
                   "or pass --time-format with the strptime format of your dates")
            )
        return _np(parsed.cast(pa.timestamp("s")).cast(pa.int64()))
    raise DataFormatError(f"{b.file}: column {col!r} (--time-col) has type {t}; use unix times or dates")


def _parse_each(vals: list, fmt: str | None) -> list[bool]:
    from datetime import datetime

    out = []
    for v in vals:
        try:
            if fmt:
                datetime.strptime(v, fmt)
            else:
                pa.array([v]).cast(pa.timestamp("s", tz="UTC") if str(v).endswith("Z") else pa.timestamp("s"))
            out.append(True)
        except Exception:  # noqa: BLE001 (any parse failure marks the row)
            out.append(False)
    return out


def _ratings(arr: pa.ChunkedArray, spec: DataSpec, b: Batch) -> np.ndarray:
    col = spec.rating_col
    if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or pa.types.is_null(arr.type)):
        v = arr.combine_chunks()
        i = next((k for k, x in enumerate(v.to_pylist()) if not _is_number(x)), 0)
        raise DataFormatError(
            f"{b.where(i)}: rating and time must be numbers: column {col!r} (--rating-col) holds "
            f"{v[i].as_py()!r}. Fix or drop the row"
        )
    v = arr.combine_chunks().cast(pa.float32())
    v = _np(v) if v.null_count == 0 else np.array([np.nan if x is None else x for x in v.to_pylist()], np.float32)
    # integers are always finite; floats and empty cells (null -> NaN) are checked
    bad = ~np.isfinite(v) if (arr.null_count or pa.types.is_floating(arr.type)) else None
    if bad is not None and bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataFormatError(
            f"{b.where(i)}: column {col!r} (--rating-col) is empty or NaN. Fix: fill or drop the row, "
            "or leave out --rating-col for implicit feedback"
        )
    if spec.rating_range is not None:
        lo, hi = spec.rating_range
        out = (v < lo) | (v > hi)
        if out.any():
            i = int(np.flatnonzero(out)[0])
            raise DataFormatError(
                f"{b.where(i)}: column {col!r} (--rating-col) is {v[i]:g}, outside rating_range "
                f"[{lo:g}, {hi:g}]. Fix the row, or widen rating_range in the data spec"
            )
    return v


def _is_number(x) -> bool:
    try:
        float(x)
        return True
    except (TypeError, ValueError):
        return False


CONVERT_THREADS = True  # convert batches on worker threads while the reader parses the next


def _convert(b: Batch, spec: DataSpec) -> tuple:
    """One batch -> (user dictionary array, item dictionary array, times [n], ratings [n], n)."""
    t = b.table
    return (_ids(t.column(spec.user_col), spec.user_col, b), _ids(t.column(spec.item_col), spec.item_col, b),
            _times(t.column(spec.time_col), spec, b) if spec.time_col else None,
            _ratings(t.column(spec.rating_col), spec, b) if spec.rating_col else None, t.num_rows)


class _Growing:
    """A column filled batch by batch with no final concatenation: sized from an estimate of
    the row count (np.empty touches no memory until written), doubled if the estimate is short."""

    def __init__(self, dtype) -> None:
        self.dtype, self.buf, self.n = dtype, None, 0

    def add(self, a: np.ndarray, estimate: int) -> None:
        if self.buf is None:
            self.buf = np.empty(max(estimate, len(a)), self.dtype)
        if self.n + len(a) > len(self.buf):
            grown = np.empty(max(2 * len(self.buf), self.n + len(a)), self.dtype)
            grown[: self.n] = self.buf[: self.n]
            self.buf = grown
        self.buf[self.n : self.n + len(a)] = a
        self.n += len(a)

    def array(self) -> np.ndarray | None:
        return None if self.buf is None else self.buf[: self.n]


def _estimate_rows(spec: DataSpec, b: Batch) -> int:
    """Rows of the whole log, from the first batch (text) or the shards' footers (Parquet)."""
    path = Path(spec.path)
    if b.is_lines is False:
        import pyarrow.parquet as pq

        files = tables.shard_files(path) if path.is_dir() else [path]
        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    if path.name.endswith(".gz"):
        return 8 * b.table.num_rows  # unknown ratio: grow by doubling
    size = path.stat().st_size  # a text batch is one block of the file (the last one: the rest)
    return int(size * b.table.num_rows / max(1, min(tables.BLOCK_BYTES, size)) * 1.2) + b.table.num_rows


def _read_table_log(spec: DataSpec, json_engine: str):
    """Stream the log; each batch is converted on a worker thread (the arrow kernels release
    the GIL) while the reader parses the next one. Results are taken in file order, so the
    first bad row of the file is the one reported."""
    columns: dict[str, pa.DataType | None] = {spec.user_col: pa.string(), spec.item_col: pa.string()}
    if spec.time_col:
        columns[spec.time_col] = None
    if spec.rating_col:
        columns[spec.rating_col] = None
    users, items = [], []
    times, ratings = _Growing(np.int64), _Growing(np.float32)
    n, estimate = 0, 0

    def collect(res) -> None:
        nonlocal n
        u, i, t, r, rows = res
        users.append(u)
        items.append(i)
        if t is not None:
            times.add(t, estimate)
        if r is not None:
            ratings.add(r, estimate)
        n += rows

    if not (tables.USE_THREADS and CONVERT_THREADS):
        for b in iter_batches(spec, columns, json_engine=json_engine, check_utf8=False):
            estimate = estimate or _estimate_rows(spec, b)
            collect(_convert(b, spec))
        return users, items, times.array(), ratings.array(), n
    with ThreadPoolExecutor(max_workers=2) as pool:
        pending: deque = deque()
        try:
            for b in iter_batches(spec, columns, json_engine=json_engine, check_utf8=False):
                estimate = estimate or _estimate_rows(spec, b)
                pending.append(pool.submit(_convert, b, spec))
                while len(pending) > 2:  # bounded: at most 3 batches in memory at once
                    collect(pending.popleft().result())
            while pending:
                collect(pending.popleft().result())
        finally:
            for f in pending:
                f.cancel()
    return users, items, times.array(), ratings.array(), n


def _read_sequences(spec: DataSpec):
    """One user a line: ``user item item ...`` (whitespace-separated, items in time order)."""
    path = Path(spec.path)
    ro = pv.ReadOptions(encoding=spec.encoding, column_names=["line"], block_size=16 << 20)
    po = pv.ParseOptions(delimiter="\x1f", quote_char=False, ignore_empty_lines=False,
                         invalid_row_handler=lambda r: "skip")
    co = pv.ConvertOptions(column_types={"line": pa.string()}, strings_can_be_null=False)
    users, items, times = [], [], []
    first = 0
    try:
        reader = pv.open_csv(str(path), read_options=ro, parse_options=po, convert_options=co)
    except pa.ArrowInvalid as e:
        if "Empty" in str(e):
            raise DataFormatError(f"{path}: no interactions found (empty file?)") from None
        raise
    for rb in reader:
        lines = pc.utf8_trim_whitespace(rb.column(0))
        parts = pc.utf8_split_whitespace(lines)  # [rows] list<string>
        lens = pc.list_value_length(parts).to_numpy(zero_copy_only=False).copy()
        lens[pc.equal(lines, "").to_numpy(zero_copy_only=False)] = 0  # blank lines
        bad = np.flatnonzero(lens == 1)
        if len(bad):
            i = int(bad[0])
            raise EmptyUserError(
                f"{path}:{first + i + 1}: user {parts[i][0].as_py()!r} has no items; each line must be "
                "'user_id item_id [item_id ...]'. Remove the line or add its items."
            )
        keep = np.flatnonzero(lens >= 2)
        if len(keep):
            parts = parts.take(pa.array(keep))
            lens = lens[keep]
            heads = pc.list_element(parts, 0)
            rest = pc.list_slice(parts, 1)
            users.append(pc.dictionary_encode(heads.take(pa.array(np.repeat(np.arange(len(keep)), lens - 1)))))
            items.append(pc.dictionary_encode(pc.list_flatten(rest)))
            m = (lens - 1).astype(np.int64)  # items per kept line
            times.append(np.arange(int(m.sum()), dtype=np.int64) - np.repeat(np.cumsum(m) - m, m))
        first += rb.num_rows
    n = sum(len(u) for u in users)
    if n == 0:
        raise DataFormatError(f"{path}: no interactions found (empty file?)")
    return users, items, times, [], n


def _codes(chunks: list, path: Path, col: str, encoding: str) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the batches' dictionary arrays (arrow unifies their dictionaries) -> (vocab [V]
    object, in order of first appearance; codes [N] int32). The distinct ids are checked to be
    UTF-8 here, once, instead of every row while parsing."""
    combined = pa.concat_arrays(chunks)
    try:
        combined.dictionary.validate(full=True)
    except pa.ArrowInvalid:
        raise DataFormatError(
            f"{path}: column {col!r} holds text that is not valid {encoding}; set the file's encoding "
            "in a data spec (encoding: latin-1, cp1252, ...)"
        ) from None
    vocab = combined.dictionary.to_numpy(zero_copy_only=False).astype(object)
    return vocab, _np(combined.indices).astype(np.int32, copy=False)


def _column(values, n: int, default, dtype) -> np.ndarray:
    """A reader's column: one array, a list of per-batch arrays, or None (-> default(n))."""
    if values is None or (isinstance(values, list) and not values):
        return default(n, dtype=dtype)
    return np.concatenate(values) if isinstance(values, list) else values


def load_interactions(spec: DataSpec, with_metadata: bool = True) -> Interactions:
    """Read, check and clean the log of ``spec``; ``stats`` records every step's counts."""
    path = Path(spec.path)
    check_file(path)
    fmt = detect_format(path, spec.format, spec.sep)
    if fmt == "sequences":
        users, items, times, ratings, n = _read_sequences(spec)
        has_time = False
    else:
        try:
            users, items, times, ratings, n = _read_table_log(spec, "arrow")
        except MixedJsonTypes:  # ids mixing numbers and strings: read them as text, through pandas
            users, items, times, ratings, n = _read_table_log(spec, "pandas")
        has_time = spec.time_col is not None
    if n == 0:
        raise DataFormatError(
            f"{path}: the file has a header but no rows; it holds no interactions. Point --data at "
            "the full log"
        )
    user_vocab, user_codes = _codes(users, path, spec.user_col, spec.encoding)
    del users
    item_vocab, item_codes = _codes(items, path, spec.item_col, spec.encoding)
    del items
    ts = _column(times, n, np.arange, np.int64)
    rt = _column(ratings, n, np.ones, np.float32)
    data = Interactions(
        name=spec.display_name, ratings=rt, timestamps=ts, has_timestamps=has_time,
        user_codes=user_codes, user_vocab=user_vocab, item_codes=item_codes, item_vocab=item_vocab,
        stats={"file": str(path), "format": fmt, "rows_read": int(n)},
    )
    data = clean(data, spec)
    data.spec = spec
    if with_metadata and spec.item_metadata is not None:
        from .metadata import attach_item_metadata

        attach_item_metadata(data, spec.item_metadata)
    return data
