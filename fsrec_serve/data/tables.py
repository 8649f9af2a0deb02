"""Streamed reading of tabular files with pyarrow: CSV/TSV (any separator), Parquet (one file or
a folder of shards, read shard by shard), JSON Lines; gzip is decompressed transparently.

``iter_batches`` yields ``Batch``es that hold only the asked columns, never the whole file, and
turns pyarrow's errors into ``DataFormatError``s that name the file, the line, the column and
the fix. No hand-written parsing: pyarrow does it (pandas only for JSON Lines whose id fields mix
numbers and strings, which pyarrow's JSON reader refuses).
"""

from __future__ import annotations

import difflib
import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pv
import pyarrow.json as pj
import pyarrow.parquet as pq

from ..errors import ConfigError, DataFormatError, DataNotFoundError

BLOCK_BYTES = 16 << 20  # bytes of text parsed per streamed block (CSV, JSON Lines)
USE_THREADS = True  # parse with pyarrow's thread pool and convert batches on worker threads
PARQUET_BATCH_ROWS = 1 << 20  # rows per batch read from a Parquet shard
SEP_NAMES = {"\t": "tab", ",": "comma", ";": "semicolon", " ": "space"}


@dataclass
class Batch:
    """A slice of the file: the asked columns for rows ``first_row .. first_row + len - 1``."""

    table: pa.Table  # the asked columns only
    file: Path  # the file (or shard) the rows come from
    first_row: int  # 0-based data row of the first row in this file
    line_offset: int  # add to a 1-based data row to get the line number (1 with a header row)
    is_lines: bool  # True: rows are lines of a text file; False: Parquet rows

    def where(self, i: int) -> str:
        """Location of row ``i`` of this batch: ``file:line`` or ``file row N``."""
        n = self.first_row + i + 1
        return f"{self.file}:{n + self.line_offset}" if self.is_lines else f"{self.file} row {n}"


class MixedJsonTypes(Exception):
    """Internal: pyarrow's JSON reader refused a field that mixes numbers and strings."""


def detect_format(path: Path, fmt: str, sep: str | None) -> str:
    if fmt != "auto":
        return fmt
    if path.is_dir():
        return "parquet"
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith((".csv", ".tsv", ".tab", ".txt", ".dat")) or sep:
        return "csv"
    raise ConfigError(
        f"{path}: cannot tell the format from the name; pass --format csv|parquet|jsonl|sequences "
        "(or --sep for a delimited text file)"
    )


def default_sep(path: Path, sep: str | None) -> str:
    if sep:
        return {"\\t": "\t", "tab": "\t", "TAB": "\t"}.get(sep, sep)
    return "\t" if path.name.lower().removesuffix(".gz").endswith((".tsv", ".tab")) else ","


def shard_files(folder: Path) -> list[Path]:
    """Parquet shards of a Spark/Dask output folder (nested partition folders included), sorted;
    marker and checksum files (_SUCCESS, .crc, hidden files) are skipped."""
    files = sorted(
        p for p in folder.rglob("*") if p.is_file()
        and not any(part.startswith(("_", ".")) for part in p.relative_to(folder).parts)
        and not p.name.endswith(".crc")
    )
    if not files:
        raise DataFormatError(f"{folder}: the folder holds no Parquet shards; point --data at a file "
                              "or at the folder Spark/Dask wrote (part-*.parquet)")
    return files


def check_file(path: Path) -> None:
    if not path.exists():
        raise DataNotFoundError(f"{path} does not exist; check --data (or the spec's path)")
    if path.is_file() and path.stat().st_size == 0:
        raise DataFormatError(
            f"{path}: the file is empty (0 bytes); it holds no interactions. Point --data at the "
            "real log (an interrupted download or export leaves empty files)"
        )


def missing_column(file: Path, col: str, option: str, available: Sequence[str]) -> DataFormatError:
    near = difflib.get_close_matches(col, list(available), n=1, cutoff=0.5)
    hint = f"did you mean {near[0]!r}? " if near else ""
    return DataFormatError(
        f"{file}: no column {col!r} ({option}); the file has {', '.join(map(repr, available))}. "
        f"{hint}Fix: pass {option} with one of these names"
        + ("" if available else " (or header=false and column_names for a headerless file)")
    )


def _text_lines(path: Path, encoding: str) -> Iterator[str]:
    with pa.input_stream(str(path), compression="detect") as raw:
        yield from io.TextIOWrapper(raw, encoding=encoding, errors="replace", newline=None)


def _find_line(path: Path, encoding: str, text: str) -> int | None:
    """1-based number of the first line whose content is ``text`` (error path only)."""
    want = text.rstrip("\r\n")
    for n, line in enumerate(_text_lines(path, encoding), 1):
        if line.rstrip("\r\n") == want:
            return n
    return None


def _csv_options(src, path: Path, columns: dict[str, pa.DataType | None], handler=None,
                 all_strings: bool = False, check_utf8: bool = True):
    sep = default_sep(path, src.sep)
    names = list(src.column_names) if not src.header else None
    if not src.header and not names:
        raise ConfigError(f"{path}: header=false needs column_names (the names of the columns, in order)")
    ro = pv.ReadOptions(encoding=src.encoding, block_size=BLOCK_BYTES, column_names=names,
                        use_threads=USE_THREADS)
    po = pv.ParseOptions(delimiter=sep, quote_char='"' if src.quoting else False,
                         invalid_row_handler=handler)
    types = {c: (pa.string() if all_strings else t) for c, t in columns.items() if t is not None or all_strings}
    co = pv.ConvertOptions(include_columns=list(columns), column_types=types,
                           strings_can_be_null=not all_strings, check_utf8=check_utf8 or all_strings)
    return sep, ro, po, co


def _csv_header(src, path: Path) -> list[str]:
    if not src.header:
        return list(src.column_names or [])
    sep = default_sep(path, src.sep)
    ro = pv.ReadOptions(encoding=src.encoding, block_size=1 << 20)
    po = pv.ParseOptions(delimiter=sep, quote_char='"' if src.quoting else False,
                         invalid_row_handler=lambda r: "skip")
    try:
        return pv.open_csv(str(path), read_options=ro, parse_options=po).schema.names
    except pa.ArrowInvalid:
        return []


def _iter_csv(src, path: Path, columns: dict[str, pa.DataType | None], check_utf8: bool = True) -> Iterator[Batch]:
    header = _csv_header(src, path)
    for c in columns:
        if c not in header:
            if not header and src.header:
                raise DataFormatError(f"{path}: the file is empty (it decompresses to nothing, or holds "
                                      "only blank lines); point --data at the real log")
            raise missing_column(path, c, _option_of(src, c), header)
    bad: list = []

    def handler(row):
        bad.append(row)
        return "error"

    sep, ro, po, co = _csv_options(src, path, columns, handler, check_utf8=check_utf8)
    offset = 1 if src.header else 0
    first = 0
    try:
        for rb in pv.open_csv(str(path), read_options=ro, parse_options=po, convert_options=co):
            if rb.num_rows:
                yield Batch(pa.Table.from_batches([rb]), path, first, offset, True)
                first += rb.num_rows
    except pa.ArrowInvalid as e:
        msg = str(e)
        if bad:
            row = bad[0]
            line = _find_line(path, src.encoding, row.text)
            kind = SEP_NAMES.get(sep, repr(sep))
            raise DataFormatError(
                f"{path}:{line if line is not None else '?'}: expected {row.expected_columns} "
                f"{kind}-separated fields, got {row.actual_columns}: {row.text[:80]!r}. Fix the line "
                "(or pass the right --sep)"
            ) from None
        if "Empty CSV file" in msg:
            raise DataFormatError(f"{path}: the file is empty (it decompresses to nothing); "
                                  "point --data at the real log") from None
        m = re.search(r"CSV column #(\d+): CSV conversion error to (\w+): invalid value '(.*)'", msg)
        if m:
            col = header[int(m.group(1))] if int(m.group(1)) < len(header) else f"#{m.group(1)}"
            where = _locate_value(src, path, columns, col, m.group(3))
            raise DataFormatError(
                f"{where}: rating and time must be numbers (or, for the time, dates): column "
                f"{col!r} holds {m.group(3)!r} where earlier rows hold {m.group(2)} values. Fix or "
                "drop the row" + (" (a time column must not mix unix times and dates)"
                                  if col == getattr(src, "time_col", None) else "")
            ) from None
        raise DataFormatError(f"{path}: could not be read as CSV ({msg}); check --sep and --format") from None


def _locate_value(src, path: Path, columns, col: str, value: str) -> str:
    """``file:line`` of the first row whose ``col`` is ``value`` (re-read as text; error path)."""
    _, ro, po, co = _csv_options(src, path, columns, lambda r: "skip", all_strings=True)
    first = 0
    for rb in pv.open_csv(str(path), read_options=ro, parse_options=po, convert_options=co):
        vals = rb.column(rb.schema.get_field_index(col)).to_pylist()
        for i, v in enumerate(vals):
            if v == value:
                return f"{path}:{first + i + 1 + (1 if src.header else 0)}"
        first += rb.num_rows
    return str(path)


def _option_of(src, col: str) -> str:
    for attr, option in (("user_col", "--user-col"), ("item_col", "--item-col"),
                         ("time_col", "--time-col"), ("rating_col", "--rating-col"),
                         ("id_col", "id_col"), ("title_col", "title_col"),
                         ("categories_col", "categories_col")):
        if getattr(src, attr, None) == col:
            return option
    return "one_hot_cols" if col in getattr(src, "one_hot_cols", ()) else "the column list"


def _iter_parquet(src, path: Path, columns: dict[str, pa.DataType | None]) -> Iterator[Batch]:
    files = shard_files(path) if path.is_dir() else [path]
    seen: dict[str, tuple[pa.DataType, Path]] = {}
    for f in files:  # all schemas first: a conflict is reported before anything is read
        if f.stat().st_size == 0:
            check_file(f)
        try:
            schema = pq.read_schema(f)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataFormatError(f"{f}: not a Parquet file ({e}); remove it from the folder or "
                                  "pass --format for another format") from None
        for c in columns:
            if c not in schema.names:
                raise missing_column(f, c, _option_of(src, c), schema.names)
            t = schema.field(c).type
            if c in seen and seen[c][0] != t:
                raise DataFormatError(
                    f"{path}: the shards disagree on column {c!r}: {seen[c][1].name} has {seen[c][0]}, "
                    f"{f.name} has {t}. Fix: rewrite the shards with one schema (cast {c!r} to one "
                    "type in Spark/Dask before writing), or remove the odd shard"
                )
            seen.setdefault(c, (t, f))
    ids = [c for c, t in columns.items() if t is not None and pa.types.is_string(t)]
    for f in files:  # shard by shard; string ids come as Parquet's own dictionaries (no per-row text)
        first = 0
        pf = pq.ParquetFile(f, read_dictionary=[c for c in ids if pa.types.is_string(seen[c][0])])
        for rb in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=list(columns)):
            if rb.num_rows:
                yield Batch(pa.Table.from_batches([rb]), f, first, 0, False)
                first += rb.num_rows


def _iter_jsonl(src, path: Path, columns: dict[str, pa.DataType | None], engine: str) -> Iterator[Batch]:
    if engine == "pandas":
        yield from _iter_jsonl_pandas(src, path, columns)
        return
    first = 0
    try:
        reader = pj.open_json(str(path), read_options=pj.ReadOptions(block_size=BLOCK_BYTES))
        for rb in reader:
            for c in columns:
                if c not in rb.schema.names:
                    raise missing_column(path, c, _option_of(src, c), rb.schema.names)
            if rb.num_rows:
                t = pa.Table.from_batches([rb]).select(list(columns))
                yield Batch(t, path, first, 0, True)
                first += rb.num_rows
    except pa.ArrowInvalid as e:
        msg = str(e)
        if "changed from" in msg:
            raise MixedJsonTypes(msg) from None
        if "Empty" in msg or "empty" in msg:
            raise DataFormatError(f"{path}: the file is empty (it decompresses to nothing); "
                                  "point --data at the real log") from None
        raise DataFormatError(f"{path}: not valid JSON Lines ({msg}); one JSON object a line") from None


def _iter_jsonl_pandas(src, path: Path, columns) -> Iterator[Batch]:
    import pandas as pd

    first = 0
    try:
        chunks = pd.read_json(path, lines=True, dtype=False, chunksize=500_000, compression="infer")
        for df in chunks:
            for c in columns:
                if c not in df.columns:
                    raise missing_column(path, c, _option_of(src, c), list(df.columns))
            data = {}
            for c, t in columns.items():
                s = df[c]
                if t is not None and pa.types.is_string(t):
                    bad = s.map(lambda v: isinstance(v, float))
                    if bad.any():
                        i = int(bad.to_numpy().nonzero()[0][0])
                        raise DataFormatError(
                            f"{path}:{first + i + 1}: id column {c!r} holds the number {s.iloc[i]!r}; "
                            "ids must be strings or integers (floats would change '007' or '1e3'). "
                            "Fix: write the ids as strings"
                        )
                    data[c] = pa.array([None if v is None else str(v) for v in s], pa.string())
                else:
                    data[c] = pa.array(s.tolist())
            if len(df):
                yield Batch(pa.table(data), path, first, 0, True)
                first += len(df)
    except ValueError as e:
        if isinstance(e, DataFormatError):
            raise
        raise DataFormatError(f"{path}: not valid JSON Lines ({e}); one JSON object a line") from None


def iter_batches(src, columns: dict[str, pa.DataType | None], json_engine: str = "arrow",
                 check_utf8: bool = True) -> Iterator[Batch]:
    """Stream the ``columns`` of ``src`` (a DataSpec or ItemMetadataSpec). ``columns`` maps a
    column name to the type to read it as (``pa.string()`` for ids), or None to infer.
    ``check_utf8=False``: CSV text is not validated per row (the caller validates the distinct
    values it keeps: much cheaper for id columns)."""
    path = Path(src.path)
    check_file(path)
    fmt = detect_format(path, src.format, src.sep)
    if fmt == "csv":
        yield from _iter_csv(src, path, columns, check_utf8=check_utf8)
    elif fmt == "parquet":
        yield from _iter_parquet(src, path, columns)
    elif fmt == "jsonl":
        yield from _iter_jsonl(src, path, columns, json_engine)
    else:
        raise ConfigError(f"format {fmt!r} is not a table format (csv, parquet, jsonl)")
