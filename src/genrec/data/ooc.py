"""``genrec data prepare``: any input to the prepared layout, in memory or out of core.

Inputs are a built-in dataset name, or one or more files, folders or globs of Parquet / CSV shards (files in
sorted path order). Small inputs take the in-memory path (:func:`genrec.data.dataset.prepare`); large ones
are streamed into staged Parquet (:mod:`genrec.data.ingest`) and prepared by the same SQL on DuckDB or Spark
(:mod:`genrec.data.sql`) with bounded memory. Every engine writes the same folder
(:mod:`genrec.data.prepared`), built in a temporary sibling and renamed into place at the end, so a failure
never leaves a partial dataset behind.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from genrec.data.builtin import REGISTRY, get_builtin
from genrec.data.dataset import SequenceDataset, prepare, reprepare
from genrec.data.ingest import concat_unified, estimate_rows, ingest, resolve_inputs
from genrec.data.prepared import MANIFEST, PreparedDataset, write_sequence_dataset
from genrec.data.readers import detect_format, read_interactions, read_items
from genrec.data.schema import InteractionSchema, ItemSchema, format_validation_error
from genrec.errors import ConfigError
from genrec.io import write_json, write_parquet
from genrec.progress import progress_bar

AUTO_MEMORY_ROWS = 5_000_000  # 'auto' prepares inputs below this many rows in memory
MIN_MEMORY_LIMIT = 64 << 20
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


class PrepareConfig(BaseModel):
    """How ``genrec data prepare`` runs (what it computes is the same on every engine)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: Literal["auto", "memory", "duckdb", "spark"] = Field(
        "auto", description="'memory' for inputs that fit, 'duckdb' out of core on one machine, 'spark' on a "
        f"cluster; 'auto' picks memory below {AUTO_MEMORY_ROWS:,} rows, duckdb above.")
    dedup: bool = Field(False, description="Keep only each (user, item)'s first interaction.")
    kcore: int | None = Field(None, ge=1, description="Repeatedly drop users and items with fewer interactions.")
    shards: int | None = Field(None, ge=1, description="Event shards (users hashed); default about 2-4 million "
                               "events each.")
    memory_limit: str = Field("4GB", description="Memory the engine may use (e.g. 4GB, 512MB, 8GiB); it spills "
                              "to disk beyond.")
    threads: int | None = Field(None, ge=1, description="Engine threads (default: every core).")
    temp_dir: Path | None = Field(None, description="Folder for staged input and spill files (default: next to "
                                  "the output).")
    spark_master: str | None = Field(None, description="Spark master URL (default local[threads]).")

    @classmethod
    def from_options(cls, **options: object) -> PrepareConfig:
        """Build from CLI options; errors name the flag (``--memory-limit: ...``)."""
        try:
            config = cls(**options)  # type: ignore[arg-type]
        except ValidationError as e:
            raise ConfigError(_flag_names(format_validation_error(e))) from None
        parse_size(config.memory_limit)
        return config


def _flag_names(message: str) -> str:
    return re.sub(r"(^|; )([a-z_]+):", lambda m: f"{m.group(1)}--{m.group(2).replace('_', '-')}:", message)


def parse_size(text: str, flag: str = "--memory-limit") -> int:
    """Bytes of a size such as ``4GB`` (10^9), ``512MiB`` (2^20) or ``2g``."""
    m = _SIZE.match(str(text))
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS:
        raise ConfigError(f"{flag}: expected a size such as 4GB, 512MB or 8GiB, got {text!r}")
    size = int(float(m.group(1)) * _UNITS[unit])
    if size < MIN_MEMORY_LIMIT:
        raise ConfigError(f"{flag}: {text!r} is too small (at least 64MB)")
    return size


def input_name(spec: str | Path) -> str:
    """A dataset name from its input: a file's stem, a folder's name, a glob's folder."""
    parts = Path(spec).absolute().parts
    fixed = [p for p in parts[: next((i for i, p in enumerate(parts) if any(c in p for c in "*?[")), len(parts))]]
    path = Path(*fixed) if fixed else Path(".")
    return path.stem if path.is_file() else path.name or "data"


def prepare_to_folder(
    inputs: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    schema: InteractionSchema | None = None,
    items_path: str | Path | None = None,
    item_schema: ItemSchema | None = None,
    config: PrepareConfig | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> PreparedDataset:
    """Prepare ``inputs`` into the prepared layout at ``out`` (replacing a prepared dataset already there)."""
    config = config or PrepareConfig()
    memory_limit = parse_size(config.memory_limit)
    specs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    source = ", ".join(str(s) for s in specs)
    if config.spark_master and config.engine != "spark":
        raise ConfigError("--spark-master needs --engine spark")
    if len(specs) == 1 and str(specs[0]) in REGISTRY and not Path(specs[0]).exists():
        if config.engine in ("duckdb", "spark"):
            raise ConfigError(f"built-in datasets are prepared in memory; '{specs[0]}' needs --engine memory or auto")
        with _output_folder(Path(out)) as tmp:
            ds = _reprepared(get_builtin(str(specs[0])).load(), config)
            meta = {k: v for k, v in ds.meta.items() if k not in ("source", "dedup", "kcore")}
            _write_memory(ds, tmp, config, source, meta, progress)
        return PreparedDataset.open(out)
    files = resolve_inputs(specs)
    rows = estimate_rows(files, schema)
    engine = config.engine
    if engine == "auto":
        text_form = any(detect_format(f, (schema or InteractionSchema()).format) == "sequences" for f in files)
        engine = "memory" if rows < AUTO_MEMORY_ROWS or text_form else "duckdb"
    progress(f"input: {len(files):,} file{'s' if len(files) != 1 else ''}, about {rows:,} rows; engine {engine}")
    name = input_name(specs[0])
    with _output_folder(Path(out)) as tmp:
        if engine == "memory":
            start = time.perf_counter()
            table = concat_unified([read_interactions(f, schema) for f in files])
            items = read_items(items_path, item_schema) if items_path is not None else None
            ds = prepare(table, name=name, items=items, dedup=config.dedup, kcore=config.kcore,
                         meta={"source": source})
            progress(f"prepare: {ds.n_users:,} users, {ds.n_items:,} items, {ds.n_interactions:,} interactions "
                     f"({time.perf_counter() - start:.1f} s)")
            _write_memory(ds, tmp, config, source, {"input_files": len(files), "input_rows": table.num_rows},
                          progress)
        else:
            _prepare_out_of_core(files, tmp, engine, name=name, source=source, schema=schema,
                                 items_path=items_path, item_schema=item_schema, config=config,
                                 memory_limit=memory_limit, rows=rows, progress=progress)
    return PreparedDataset.open(out)


def _reprepared(ds: SequenceDataset, config: PrepareConfig) -> SequenceDataset:
    return reprepare(ds, config.dedup, config.kcore) if config.dedup or config.kcore else ds


def _write_memory(ds: SequenceDataset, folder: Path, config: PrepareConfig, source: str, meta: dict,
                  progress: Callable[[str], None]) -> None:
    start = time.perf_counter()
    manifest = write_sequence_dataset(ds, folder, shards=config.shards, source=source, meta=meta)
    progress(f"write: {manifest['shards']} shards ({time.perf_counter() - start:.1f} s)")


def _prepare_out_of_core(files: list[Path], out: Path, engine_name: str, *, name: str, source: str,
                         schema: InteractionSchema | None, items_path: str | Path | None,
                         item_schema: ItemSchema | None, config: PrepareConfig, memory_limit: int, rows: int,
                         progress: Callable[[str], None]) -> None:
    from genrec.data.sql import DuckDBEngine, Pipeline, SparkEngine

    with _work_folder(out, config.temp_dir) as work:
        engine = (DuckDBEngine(work, memory_limit, config.threads, work / "spill") if engine_name == "duckdb"
                  else SparkEngine(work, config.spark_master, memory_limit, config.threads, work / "spill"))
        try:
            start = time.perf_counter()
            with progress_bar(rows, "ingest") as advance:
                staged = ingest(files, work / "staged", schema, advance)
            progress(f"ingest: {staged.rows:,} rows from {len(files):,} files ({time.perf_counter() - start:.1f} s)")
            catalog = None
            if items_path is not None:
                catalog = work / "catalog"
                items = read_items(items_path, item_schema)
                write_parquet(catalog / "part-0.parquet",
                              items.append_column("crow", pa.array(np.arange(items.num_rows, dtype=np.int64))))
            manifest = Pipeline(engine, staged, progress).run(
                out, name=name, dedup=config.dedup, kcore=config.kcore, shards=config.shards, source=source,
                catalog=catalog, meta={"input_files": len(files), "input_rows": staged.rows},
                memory_limit=memory_limit)
        finally:
            engine.close()
    write_json(out / MANIFEST, manifest)


@contextmanager
def _work_folder(out: Path, temp_dir: Path | None) -> Iterator[Path]:
    """Scratch space for staged input, engine tables and spill files, removed at the end."""
    if temp_dir is not None:
        Path(temp_dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="genrec-prepare-", dir=temp_dir if temp_dir is not None else out))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _is_replaceable(path: Path) -> bool:
    if not path.exists():
        return True
    if not path.is_dir():
        return False
    return (path / MANIFEST).is_file() or (path / "dataset.json").is_file() or not any(path.iterdir())


@contextmanager
def _output_folder(out: Path) -> Iterator[Path]:
    """A temporary sibling of ``out`` that replaces it when the block succeeds and is removed when it fails."""
    out = out.absolute()
    if not _is_replaceable(out):
        raise ConfigError(f"--out {out}: exists and is not a prepared dataset; choose another folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / "previous")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
