"""Readers for interaction and item files: Parquet, CSV/TSV and the "one user per line" text form.

Every reader returns an Arrow table with canonical column names (``user``, ``item`` and, when present,
``timestamp``, ``event``, ``value``), in the file's row order, or raises a :class:`DataError` that names
the file, the line and the column.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from genrec.data.schema import InteractionSchema, ItemSchema
from genrec.errors import DataError

_SUFFIX_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "tsv", ".txt": "sequences"}


def detect_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    try:
        return _SUFFIX_FORMATS[path.suffix.lower()]
    except KeyError:
        raise DataError(
            f"cannot tell the format from the suffix '{path.suffix}'; name it (parquet, csv, tsv, sequences)",
            path=path,
        ) from None


def read_table(path: str | Path, fmt: str = "auto", delimiter: str | None = None, header: bool = True) -> pa.Table:
    """Read a Parquet or CSV/TSV file into Arrow, with parse errors that name the line."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path=path)
    fmt = detect_format(path, fmt)
    if fmt == "parquet":
        try:
            return pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"not a readable Parquet file ({e})", path=path) from None
    if fmt not in ("csv", "tsv"):
        raise DataError(f"format '{fmt}' is not a table format", path=path)
    delim = delimiter or ("\t" if fmt == "tsv" else ",")
    bad: list[pacsv.InvalidRow] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        bad.append(row)
        return "skip"

    def parse(use_threads: bool) -> pa.Table:
        try:
            return pacsv.read_csv(
                path,
                read_options=pacsv.ReadOptions(autogenerate_column_names=not header, use_threads=use_threads),
                parse_options=pacsv.ParseOptions(delimiter=delim, invalid_row_handler=on_invalid),
            )
        except pa.ArrowInvalid as e:
            raise DataError(f"cannot parse ({str(e).splitlines()[0]})", path=path) from None

    table = parse(use_threads=True)
    if bad and bad[0].number is None:  # parallel parsing does not know line numbers; find it serially
        bad.clear()
        parse(use_threads=False)
    if bad:
        row = bad[0]
        raise DataError(
            f"expected {row.expected_columns} fields separated by {delim!r}, "
            f"got {row.actual_columns}: {row.text[:80]!r}",
            path=path, line=row.number,
        )
    if not header:
        table = table.rename_columns([str(i) for i in range(table.num_columns)])
    return table


def read_sequences(path: str | Path, comment: str = "#") -> pa.Table:
    """The text form: ``user item item ...`` per line (whitespace or tab separated), items in order."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path=path)
    users: list[str] = []
    items: list[str] = []
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            for lineno, line in enumerate(f, start=1):
                if not line.strip() or line.startswith(comment):
                    continue
                tokens = line.split()
                if len(tokens) < 2:
                    raise DataError(f"expected 'user item [item ...]', got {line.strip()[:80]!r}", path=path,
                                    line=lineno)
                users.extend([tokens[0]] * (len(tokens) - 1))
                items.extend(tokens[1:])
        except UnicodeDecodeError as e:
            raise DataError(f"not UTF-8 text ({e.reason} at byte {e.start})", path=path) from None
    table = pa.table({"user": _maybe_int(users), "item": _maybe_int(items)})
    return table


def _maybe_int(tokens: list[str]) -> pa.Array:
    """Ids stay strings unless every one of them is an integer."""
    arr = pa.array(tokens, type=pa.string())
    try:
        return pc.cast(arr, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return arr


def read_interactions(path: str | Path, schema: InteractionSchema | None = None) -> pa.Table:
    """Read an interaction log into the canonical columns, validating each role's column."""
    schema = schema or InteractionSchema()
    path = Path(path)
    fmt = detect_format(path, schema.format)
    if fmt == "sequences":
        table = read_sequences(path)
    else:
        raw = read_table(path, fmt, schema.delimiter, schema.header)
        table = _select_roles(raw, path, {"user": schema.user, "item": schema.item, "timestamp": schema.timestamp,
                                          "event": schema.event, "value": schema.value})
    return validate_interactions(table, path, header=schema.header and fmt in ("csv", "tsv"))


def _select_roles(raw: pa.Table, path: Path, roles: dict[str, str | None]) -> pa.Table:
    cols, names = [], []
    for role, column in roles.items():
        if column is None:
            continue
        if column not in raw.column_names:
            raise DataError(
                f"missing {role} column; the file has {', '.join(raw.column_names[:12])}", path=path, column=column
            )
        cols.append(raw.column(column))
        names.append(role)
    return pa.table(cols, names=names)


def validate_interactions(table: pa.Table, path: object = "<table>", header: bool = False,
                          line_offset: int = 0) -> pa.Table:
    """Check types and nulls of the canonical columns; coerce ids to int64 or string.

    ``line_offset`` counts the file's rows before this table, so a batch of a streamed file names true lines.
    """
    if table.num_rows == 0:
        raise DataError("the interaction table is empty", path=path)
    first_line = (2 if header else 1) + line_offset
    out = {}
    for role in ("user", "item"):
        col = table.column(role).combine_chunks()
        _no_nulls(col, path, role, first_line)
        if pa.types.is_integer(col.type):
            col = pc.cast(col, pa.int64())
        elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            col = pc.cast(col, pa.string())
        else:
            raise DataError(f"ids must be integers or strings, got {col.type}", path=path, column=role)
        out[role] = col
    if "timestamp" in table.column_names:
        out["timestamp"] = _numeric(table.column("timestamp"), path, "timestamp", first_line, timestamp=True)
    if "event" in table.column_names:
        out["event"] = pc.cast(table.column("event").combine_chunks(), pa.string())
    if "value" in table.column_names:
        out["value"] = _numeric(table.column("value"), path, "value", first_line)
    return pa.table(out)


def _no_nulls(col: pa.Array, path: object, role: str, first_line: int) -> None:
    missing = col.is_null()
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):  # CSV reads an empty field as ''
        missing = pc.or_kleene(missing, pc.equal(col, ""))
    missing = missing.to_numpy(zero_copy_only=False)
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        what = f"empty {role} id" if role in ("user", "item") else f"empty {role}"
        raise DataError(what, path=path, line=row + first_line, column=role)


def _numeric(col: pa.ChunkedArray, path: object, role: str, first_line: int, timestamp: bool = False) -> pa.Array:
    col = col.combine_chunks()
    if timestamp and (pa.types.is_timestamp(col.type) or pa.types.is_date(col.type)):
        col = pc.cast(pc.cast(col, pa.timestamp("s"), safe=False), pa.int64())  # whole seconds (truncated)
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        bad = _first_non_numeric(col)
        where = f"; first bad value {bad[1]!r}" if bad else ""
        raise DataError(f"expected numbers, got {col.type}{where}", path=path,
                        line=None if bad is None else bad[0] + first_line, column=role)
    _no_nulls(col, path, role, first_line)
    return pc.cast(col, pa.int64() if timestamp and pa.types.is_integer(col.type) else pa.float64())


def _first_non_numeric(col: pa.Array) -> tuple[int, str] | None:
    for i, v in enumerate(col.to_pylist()):
        try:
            float(v)
        except (TypeError, ValueError):
            return i, v
    return None


def read_items(path: str | Path, schema: ItemSchema | None = None) -> pa.Table:
    """Read an item catalog; keeps the id as ``item`` and every text/tag/image column under its own name."""
    schema = schema or ItemSchema()
    path = Path(path)
    fmt = detect_format(path, schema.format)
    raw = read_table(path, fmt, schema.delimiter, schema.header)
    wanted = [schema.item, *schema.text] + [c for c in (schema.tags, schema.image) if c]
    for column in wanted:
        if column not in raw.column_names:
            raise DataError(f"missing column; the file has {', '.join(raw.column_names[:12])}", path=path,
                            column=column)
    if raw.num_rows == 0:
        raise DataError("the item table is empty", path=path)
    table = raw.select(wanted).rename_columns(["item", *wanted[1:]])
    item = table.column("item").combine_chunks()
    _no_nulls(item, path, "item", 2 if schema.header else 1)
    return table.set_column(0, "item", pc.cast(item, pa.int64() if pa.types.is_integer(item.type) else pa.string()))
