"""Streaming ingest: input files read batch by batch, validated like an in-memory read, staged as Parquet.

The staged files carry a global ``row_id`` (int64, the input row order: files in sorted path order, rows in
file order), the one tie-break every engine shares (Spark has no per-file row number). Memory stays bounded
by one batch. Column names in the staged files are ``row_id, u_raw, i_raw[, ts][, val][, event]``.
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from genrec.data.readers import detect_format, validate_interactions
from genrec.data.schema import InteractionSchema
from genrec.errors import DataError

TABLE_SUFFIXES = (".parquet", ".pq", ".csv", ".tsv")
BATCH_ROWS = 1 << 20
STAGED_FILE_ROWS = 1 << 24  # a new staged file every this many rows, so engines read in parallel
CSV_BYTES_PER_ROW = 24  # a rough guess for picking an engine from a CSV file's size
STAGED_NAMES = {"user": "u_raw", "item": "i_raw", "timestamp": "ts", "value": "val", "event": "event"}


def resolve_inputs(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    """The data files of one or more files, folders (every table file below, hidden ones skipped) or globs,
    in sorted path order without repeats."""
    specs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not specs:
        raise DataError("no input given")
    files: set[Path] = set()
    for spec in specs:
        text = str(spec)
        if any(ch in text for ch in "*?["):
            matched = [Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file()]
            if not matched:
                raise DataError("no file matches this pattern", path=text)
            files.update(matched)
        elif Path(text).is_dir():
            found = [p for p in Path(text).rglob("*") if p.is_file() and p.suffix.lower() in TABLE_SUFFIXES
                     and not any(part.startswith((".", "_")) for part in p.relative_to(text).parts)]
            if not found:
                raise DataError(f"no data files ({', '.join(TABLE_SUFFIXES)}) in this folder", path=text)
            files.update(found)
        elif Path(text).is_file():
            files.add(Path(text))
        else:
            raise DataError("file not found", path=text)
    return sorted(files, key=str)


def estimate_rows(files: Sequence[Path], schema: InteractionSchema | None = None) -> int:
    """Rows of the input: exact for Parquet (from the footers), guessed from the size for CSV."""
    schema = schema or InteractionSchema()
    total = 0
    for f in files:
        if detect_format(f, schema.format) == "parquet":
            total += _parquet_file(f).metadata.num_rows
        else:
            total += f.stat().st_size // CSV_BYTES_PER_ROW
    return total


def _parquet_file(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"not a readable Parquet file ({e})", path=path) from None


def _roles(schema: InteractionSchema) -> dict[str, str]:
    roles = {"user": schema.user, "item": schema.item, "timestamp": schema.timestamp, "event": schema.event,
             "value": schema.value}
    return {role: col for role, col in roles.items() if col is not None}


def _check_columns(names: list[str], roles: dict[str, str], path: Path) -> None:
    for role, column in roles.items():
        if column not in names:
            raise DataError(f"missing {role} column; the file has {', '.join(names[:12])}", path=path, column=column)


def iter_validated(path: Path, schema: InteractionSchema | None = None,
                   batch_rows: int = BATCH_ROWS) -> Iterator[pa.Table]:
    """One file's rows as validated canonical tables (``user``, ``item``, ...), batch by batch, in file order.

    Each batch passes :func:`validate_interactions`, so errors name the file and its true line.
    """
    schema = schema or InteractionSchema()
    fmt = detect_format(path, schema.format)
    roles = _roles(schema)
    if fmt == "parquet":
        batches, header = _parquet_batches(path, roles, batch_rows), False
    elif fmt in ("csv", "tsv"):
        batches, header = _csv_batches(path, fmt, schema, roles), schema.header
    else:
        raise DataError(f"format '{fmt}' is read in memory only (use --engine memory)", path=path)
    seen = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        table = pa.table([_decoded(batch.column(col)) for col in roles.values()], names=list(roles))
        yield validate_interactions(table, path, header=header, line_offset=seen)
        seen += batch.num_rows


def _decoded(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """Dictionary-encoded columns (pandas categoricals) as their plain values."""
    return col.cast(col.type.value_type) if pa.types.is_dictionary(col.type) else col


def _parquet_batches(path: Path, roles: dict[str, str], batch_rows: int) -> Iterator[pa.RecordBatch]:
    pf = _parquet_file(path)
    _check_columns(pf.schema_arrow.names, roles, path)
    try:
        yield from pf.iter_batches(batch_size=batch_rows, columns=list(dict.fromkeys(roles.values())))
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"not a readable Parquet file ({e})", path=path) from None


def _csv_batches(path: Path, fmt: str, schema: InteractionSchema, roles: dict[str, str]) -> Iterator[pa.RecordBatch]:
    """CSV in blocks with the same type inference as :func:`genrec.data.readers.read_table` (its first block)."""
    delim = schema.delimiter or ("\t" if fmt == "tsv" else ",")
    bad: list[pacsv.InvalidRow] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        bad.append(row)
        return "skip"

    def open_reader(use_threads: bool) -> pacsv.CSVStreamingReader:
        try:
            return pacsv.open_csv(
                path, read_options=pacsv.ReadOptions(autogenerate_column_names=not schema.header,
                                                     use_threads=use_threads),
                parse_options=pacsv.ParseOptions(delimiter=delim, invalid_row_handler=on_invalid))
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"cannot parse ({str(e).splitlines()[0]})", path=path) from None

    reader = open_reader(use_threads=True)
    names = reader.schema.names if schema.header else [str(i) for i in range(len(reader.schema.names))]
    _check_columns(names, roles, path)
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except pa.ArrowInvalid as e:
            raise DataError(f"cannot parse ({str(e).splitlines()[0]})", path=path) from None
        if bad:
            _raise_invalid_row(path, delim, bad, open_reader)
        yield pa.RecordBatch.from_arrays(batch.columns, names=names)


def _raise_invalid_row(path: Path, delim: str, bad: list[pacsv.InvalidRow],
                       open_reader: Callable[[bool], pacsv.CSVStreamingReader]) -> None:
    if bad[0].number is None:  # parallel parsing does not know line numbers; find it serially
        bad.clear()
        for _ in open_reader(False):
            if bad:
                break
    row = bad[0]
    raise DataError(f"expected {row.expected_columns} fields separated by {delim!r}, got {row.actual_columns}: "
                    f"{row.text[:80]!r}", path=path, line=row.number)


@dataclass
class Staged:
    """What the ingest wrote: staged Parquet files and the unified type of every column."""

    folder: Path
    files: list[Path] = field(default_factory=list)
    rows: int = 0
    inputs: int = 0
    types: dict[str, pa.DataType] = field(default_factory=dict)  # staged column name -> type

    def has(self, column: str) -> bool:
        return column in self.types


def unify_types(types: list[pa.DataType], role: str) -> pa.DataType:
    """Ids: int64 when every file's are integers, else strings; numbers: int64 only when all are."""
    if role in ("user", "item"):
        return pa.int64() if all(t == pa.int64() for t in types) else pa.string()
    if role == "timestamp":
        return pa.int64() if all(t == pa.int64() for t in types) else pa.float64()
    return types[0]


def ingest(files: Sequence[Path], folder: Path, schema: InteractionSchema | None = None,
           advance: Callable[[int], None] = lambda n: None, batch_rows: int = BATCH_ROWS) -> Staged:
    """Stream ``files`` into staged Parquet under ``folder`` with a global ``row_id``."""
    folder.mkdir(parents=True, exist_ok=True)
    staged = Staged(folder=folder, inputs=len(files))
    file_types: list[dict[str, pa.DataType]] = []
    writer: pq.ParquetWriter | None = None
    in_file = 0
    try:
        for path in files:
            for table in iter_validated(path, schema, batch_rows):
                out = _staged_table(table, staged.rows)
                if writer is not None and (writer.schema != out.schema or in_file >= STAGED_FILE_ROWS):
                    writer.close()
                    writer = None
                if writer is None:
                    staged.files.append(folder / f"part-{len(staged.files):05d}.parquet")
                    file_types.append({name: out.schema.field(name).type for name in out.column_names})
                    writer = pq.ParquetWriter(staged.files[-1], out.schema)
                    in_file = 0
                writer.write_table(out)
                staged.rows += out.num_rows
                in_file += out.num_rows
                advance(out.num_rows)
    finally:
        if writer is not None:
            writer.close()
    if staged.rows == 0:
        where = files[0] if len(files) == 1 else f"{len(files)} input files"
        raise DataError("the interaction table is empty", path=where)
    role_of = {v: k for k, v in STAGED_NAMES.items()}
    for name in file_types[0]:
        staged.types[name] = (pa.int64() if name == "row_id"
                              else unify_types([t[name] for t in file_types], role_of[name]))
    for path, types in zip(staged.files, file_types, strict=True):
        if any(types[n] != staged.types[n] for n in types):
            _rewrite(path, staged.types)
    return staged


def _staged_table(table: pa.Table, first_row: int) -> pa.Table:
    row_id = pa.array(np.arange(first_row, first_row + table.num_rows, dtype=np.int64))
    cols = {"row_id": row_id}
    for role, name in STAGED_NAMES.items():
        if role in table.column_names:
            cols[name] = table.column(role)
    return pa.table(cols)


def _rewrite(path: Path, types: dict[str, pa.DataType]) -> None:
    """Cast one staged file to the unified types (inputs that mix integer and string ids, say)."""
    target = pa.schema([(name, t) for name, t in types.items()])
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, target) as writer:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS):
            writer.write_table(pa.Table.from_batches([batch]).cast(target))
    tmp.replace(path)


def concat_unified(tables: Sequence[pa.Table]) -> pa.Table:
    """Canonical tables of several files as one, with the types :func:`unify_types` gives (the memory engine)."""
    cols = {}
    for role in tables[0].column_names:
        if any(role not in t.column_names for t in tables):
            raise DataError(f"the {role} column is in some input files only")
        target = unify_types([t.column(role).type for t in tables], role)
        cols[role] = pa.chunked_array([c for t in tables for c in t.column(role).cast(target).chunks], target)
    return pa.table(cols)
