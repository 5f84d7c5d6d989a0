"""Atomic writes: a temporary file in the same folder, fsync, then rename, so a crash never leaves half a file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then move the finished file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, _write)


def write_json(path: str | os.PathLike, obj: Any, compact: bool = False) -> Path:
    """``obj`` as indented JSON, or on one line without spaces when ``compact`` (large per-user result arrays)."""
    text = json.dumps(obj, separators=(",", ":"), default=_json_default) if compact else \
        json.dumps(obj, indent=2, sort_keys=False, default=_json_default)
    return write_text(path, text + "\n")


def write_parquet(path: str | os.PathLike, table: pa.Table) -> Path:
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def write_vocab(path: str | os.PathLike, raw_ids: list[Any]) -> Path:
    """A vocabulary as Parquet: (idx 1..n, raw_id as text), atomically."""
    return write_parquet(path, pa.table({"idx": pa.array(range(1, len(raw_ids) + 1), pa.int64()),
                                         "raw_id": [str(r) for r in raw_ids]}))


def read_vocab(path: str | os.PathLike) -> list[str]:
    """Raw ids (text) in dense order of a vocabulary written by :func:`write_vocab`."""
    return [str(x) for x in pq.read_table(path).sort_by("idx").column("raw_id").to_pylist()]


def read_yaml_mapping(path: str | os.PathLike, what: str = "config") -> dict:
    """A YAML file whose top level is a mapping, or a ConfigError naming the file."""
    import yaml

    from genrec.errors import ConfigError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


def sha256_file(path: str | os.PathLike) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_prepared_info(folder: Path, name: str, version: int, what: str) -> dict:
    """``folder/name``, the JSON header of a prepared folder, checked for its format version (DataError)."""
    from genrec.errors import DataError

    path = folder / name
    if not path.is_file():
        raise DataError(f"not a prepared {what} (no {name})", path=folder)
    info = read_json(path)
    if info.get("format_version") != version:
        raise DataError(f"unsupported {what} format version {info.get('format_version')}", path=path)
    return info


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
