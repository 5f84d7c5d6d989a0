"""The preparation as SQL, written once and run by DuckDB (one machine) or Spark (a cluster).

The statements read the staged Parquet of :mod:`genrec.data.ingest` (a view ``staged`` with ``row_id, u_raw,
i_raw[, ts][, val][, event]``) and produce exactly what the in-memory :func:`genrec.data.dataset.prepare` does:

- dedup keeps each (user, item)'s first occurrence in (timestamp, row_id) order;
- k-core drops users and items with fewer than k interactions until nothing drops (the loop is Python's);
- dense ids 1.. follow first appearance (smallest row_id) among the kept rows;
- ``pos`` is the 0-based chronological position in the user's sequence, ties in input row order.

Both engines accept the same text; the one dialect difference is how output columns named like keywords are
quoted (:meth:`Engine.quote`). Engine libraries are imported only when an engine is built.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genrec.data.ingest import BATCH_ROWS, Staged
from genrec.data.order_stats import length_stats, linear_quantile
from genrec.data.prepared import (
    EVENTS,
    HASH_MULTIPLIER,
    build_manifest,
    default_cut_quantiles,
    default_shards,
)
from genrec.errors import ConfigError, DataError, GenrecError

INSTALL_HINT = "pip install 'genrec[scale]'"
BUCKETS = 4096  # histogram buckets per pass when looking for an order statistic
FETCH_ROWS = 200_000  # a bucket this small is finished in Python
DUCKDB_SHARE = 0.8  # of --memory-limit for DuckDB's buffers; the rest for the process around it
EVENT_BYTES = 64  # working memory per row when positions are numbered (join, window sort); sizes the passes


class Engine(ABC):
    """What the statements need from an SQL engine: views, materialised tables, results and Parquet writes."""

    name: str

    @abstractmethod
    def quote(self, column: str) -> str: ...

    @abstractmethod
    def source(self, view: str, folder: Path) -> None:
        """A view over every Parquet file in ``folder``."""

    @abstractmethod
    def view(self, name: str, sql: str) -> None: ...

    @abstractmethod
    def create(self, name: str, sql: str) -> None:
        """Materialise ``sql`` as table ``name`` (spilling to disk as needed)."""

    @abstractmethod
    def drop(self, name: str) -> None: ...

    @abstractmethod
    def rows(self, sql: str) -> list[tuple]: ...

    @abstractmethod
    def copy(self, sql: str, path: Path, schema: pa.Schema) -> None:
        """Write the result to one Parquet file, in the query's order, with exactly ``schema`` (names, types
        and nullability the same on every engine)."""

    @abstractmethod
    def copy_partitioned(self, sql: str, folder: Path, column: str) -> None:
        """Write the result as hive partitions ``folder/<column>=<value>/*.parquet`` (without ``column``)."""

    def close(self) -> None:
        return None


def _sql_path(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


class DuckDBEngine(Engine):
    """DuckDB with a memory limit, spilling to ``temp_dir``; tables live in a database file under ``work``."""

    name = "duckdb"

    def __init__(self, work: Path, memory_limit: int, threads: int | None = None, temp_dir: Path | None = None):
        try:
            import duckdb
        except ImportError:
            raise ConfigError(f"the duckdb engine needs DuckDB: {INSTALL_HINT} (or --engine memory for a log that "
                              "fits in memory)") from None
        self._duckdb = duckdb
        self.con = duckdb.connect(str(work / "work.duckdb"))
        spill = temp_dir or work / "spill"
        # DuckDB's limit covers its buffers, not this process's Python and Arrow memory: leave those a share.
        self.con.execute(f"SET memory_limit = '{int(memory_limit * DUCKDB_SHARE)}B'")
        self.con.execute(f"SET temp_directory = {_sql_path(spill)}")
        self.con.execute(f"SET threads = {int(threads or os.cpu_count() or 1)}")
        self.con.execute("SET preserve_insertion_order = false")  # order comes from ORDER BY or not at all

    def quote(self, column: str) -> str:
        return f'"{column}"'

    def _run(self, sql: str, relation: bool = False) -> Any:
        try:
            return self.con.sql(sql) if relation else self.con.execute(sql)
        except self._duckdb.OutOfMemoryException as e:
            raise GenrecError(f"DuckDB ran out of memory ({str(e).splitlines()[0]}); raise --memory-limit or "
                              "give --temp-dir on a disk with more room") from None
        except self._duckdb.IOException as e:
            raise GenrecError(f"DuckDB could not read or write a file ({str(e).splitlines()[0]})") from None

    def source(self, view: str, folder: Path) -> None:
        self._run(f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM read_parquet({_sql_path(folder / '*.parquet')})")

    def view(self, name: str, sql: str) -> None:
        self._run(f"CREATE OR REPLACE VIEW {name} AS {sql}")

    def create(self, name: str, sql: str) -> None:
        self._run(f"CREATE OR REPLACE TABLE {name} AS {sql}")

    def drop(self, name: str) -> None:
        self._run(f"DROP TABLE IF EXISTS {name}")

    def rows(self, sql: str) -> list[tuple]:
        return self._run(sql).fetchall()

    def copy(self, sql: str, path: Path, schema: pa.Schema) -> None:
        rel = self._run(sql, relation=True)
        batches = getattr(rel, "to_arrow_reader", None) or rel.fetch_arrow_reader  # newer / older DuckDB
        try:
            with pq.ParquetWriter(path, schema) as writer:
                for batch in batches(BATCH_ROWS):
                    writer.write_table(pa.Table.from_batches([batch]).cast(schema))
        except self._duckdb.OutOfMemoryException as e:
            raise GenrecError(f"DuckDB ran out of memory ({str(e).splitlines()[0]}); raise --memory-limit") from None

    def copy_partitioned(self, sql: str, folder: Path, column: str) -> None:
        self._run(f"COPY ({sql}) TO {_sql_path(folder)} (FORMAT PARQUET, PARTITION_BY ({column}))")

    def close(self) -> None:
        self.con.close()


class SparkEngine(Engine):
    """Spark SQL; uses the active SparkSession when there is one, else starts ``master`` (``local[N]``)."""

    name = "spark"

    def __init__(self, work: Path, master: str | None = None, memory_limit: int | None = None,
                 threads: int | None = None, temp_dir: Path | None = None):
        try:
            from pyspark.sql import SparkSession
        except ImportError:
            raise ConfigError(f"the spark engine needs pyspark: {INSTALL_HINT}") from None
        self.work = work
        self.spark = SparkSession.getActiveSession()
        self.owned = self.spark is None
        if self.spark is None:
            if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
                raise ConfigError("the spark engine needs a Java runtime (no 'java' on PATH and no JAVA_HOME)")
            n = int(threads or os.cpu_count() or 1)
            builder = (SparkSession.builder.master(master or f"local[{n}]").appName("genrec-prepare")
                       .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
                       .config("spark.sql.shuffle.partitions", str(max(4, 4 * n)))
                       .config("spark.local.dir", str(temp_dir or work / "spill")))
            if memory_limit:
                builder = builder.config("spark.driver.memory", f"{max(1, memory_limit >> 20)}m")
            self.spark = builder.getOrCreate()
            self.spark.sparkContext.setLogLevel("ERROR")

    def quote(self, column: str) -> str:
        return f"`{column}`"

    def source(self, view: str, folder: Path) -> None:
        self.spark.read.parquet(str(folder)).createOrReplaceTempView(view)

    def view(self, name: str, sql: str) -> None:
        self.spark.sql(sql).createOrReplaceTempView(name)

    def create(self, name: str, sql: str) -> None:
        path = self.work / "tables" / name
        self.spark.sql(sql).write.mode("overwrite").parquet(str(path))
        self.spark.read.parquet(str(path)).createOrReplaceTempView(name)

    def drop(self, name: str) -> None:
        self.spark.catalog.dropTempView(name)
        shutil.rmtree(self.work / "tables" / name, ignore_errors=True)

    def rows(self, sql: str) -> list[tuple]:
        return [tuple(r) for r in self.spark.sql(sql).collect()]

    def copy(self, sql: str, path: Path, schema: pa.Schema) -> None:
        """Spark writes a folder of parts; they are joined, in part order (the query's order), into one file."""
        parts_dir = self.work / "copy" / path.name
        self.spark.sql(sql).write.mode("overwrite").parquet(str(parts_dir))
        with pq.ParquetWriter(path, schema) as writer:
            for part in sorted(parts_dir.glob("part-*.parquet")):
                for batch in pq.ParquetFile(part).iter_batches(batch_size=BATCH_ROWS):
                    writer.write_table(pa.Table.from_batches([batch]).cast(schema))
        shutil.rmtree(parts_dir, ignore_errors=True)

    def copy_partitioned(self, sql: str, folder: Path, column: str) -> None:
        self.spark.sql(sql).write.mode("overwrite").partitionBy(column).parquet(str(folder))
        for extra in [*folder.rglob(".*.crc"), *folder.rglob("_SUCCESS")]:  # Hadoop's bookkeeping files
            extra.unlink()

    def close(self) -> None:
        if self.owned:
            self.spark.stop()


# --- the statements ----------------------------------------------------------------------------------------

class Pipeline:
    """The preparation's statements over one engine and one staged input."""

    def __init__(self, engine: Engine, staged: Staged, progress: Callable[[str], None] = lambda m: None):
        self.e, self.staged, self.progress = engine, staged, progress
        self.has_ts = staged.has("ts")
        self.order = "ts, row_id" if self.has_ts else "row_id"
        self.extra = "".join(f", {c}" for c in ("ts", "val", "event") if staged.has(c))
        self.int_ids = {role: staged.types[col] == pa.int64() for role, col in (("u", "u_raw"), ("i", "i_raw"))}
        self._results: dict[str, list[tuple]] = {}

    @contextmanager
    def _stage(self, what: str) -> Iterator[Callable[[str], None]]:
        """Times a stage and reports ``what: <detail> (<seconds> s)`` when it ends."""
        start, detail = time.perf_counter(), [""]
        yield lambda text: detail.__setitem__(0, text)
        self.progress(f"{what}: {detail[0]} ({time.perf_counter() - start:.1f} s)")

    def count(self, table: str) -> int:
        return int(self.e.rows(f"SELECT count(*) FROM {table}")[0][0])

    def base(self) -> str:
        """Rows with integer ids: integer raw ids as they are, strings coded by their first row_id."""
        self.e.source("staged", self.staged.folder)
        if all(self.int_ids.values()):
            self.e.view("base", f"SELECT row_id, u_raw AS u, i_raw AS i{self.extra} FROM staged")
            return "base"
        joins, cols = [], []
        for role, raw in (("u", "u_raw"), ("i", "i_raw")):
            if self.int_ids[role]:
                cols.append(f"s.{raw} AS {role}")
            else:
                self.e.create(f"{role}_codes", f"SELECT {raw} AS raw, min(row_id) AS code FROM staged GROUP BY {raw}")
                joins.append(f"JOIN {role}_codes {role}c ON s.{raw} = {role}c.raw")
                cols.append(f"{role}c.code AS {role}")
        extra = "".join(f", s.{c}" for c in ("ts", "val", "event") if self.staged.has(c))
        self.e.create("base", f"SELECT s.row_id, {', '.join(cols)}{extra} FROM staged s {' '.join(joins)}")
        return "base"

    def dedup(self, table: str) -> str:
        self.e.create("dedup", f"SELECT row_id, u, i{self.extra} FROM (SELECT *, row_number() OVER "
                               f"(PARTITION BY u, i ORDER BY {self.order}) AS rn FROM {table}) AS d WHERE rn = 1")
        return "dedup"

    def kcore(self, table: str, k: int, n: int) -> tuple[str, int]:
        """Drop users and items with fewer than ``k`` rows, counted together, until no row drops.

        The rows are never rewritten: each pass counts users and items among the rows that survive so far
        (two small tables) and the next pass filters by them; the surviving rows are written once at the end.
        """
        where, rows = "", n
        for step in itertools.count(1):
            self.e.create(f"kcore_u{step}", f"SELECT u, count(*) AS n FROM {table}{where} GROUP BY u")
            self.e.create(f"kcore_i{step}", f"SELECT i, count(*) AS n FROM {table}{where} GROUP BY i")
            if step > 1:
                kept = int(self.e.rows(f"SELECT sum(n) FROM kcore_u{step}")[0][0] or 0)
                self.progress(f"  kcore pass {step - 1}: {kept:,} rows")
                for t in (f"kcore_u{step - 2}", f"kcore_i{step - 2}"):
                    self.e.drop(t)
                if kept in (rows, 0):
                    break
                rows = kept
            where = (f" WHERE u IN (SELECT u FROM kcore_u{step} WHERE n >= {k}) AND i IN (SELECT i FROM "
                     f"kcore_i{step} WHERE n >= {k})")
        self.e.create("kcore", f"SELECT * FROM {table}{where}")
        for t in (f"kcore_u{step - 1}", f"kcore_i{step - 1}", f"kcore_u{step}", f"kcore_i{step}"):
            self.e.drop(t)
        return "kcore", kept

    def vocabularies(self, table: str) -> None:
        self.e.create("users", "SELECT u, CAST(row_number() OVER (ORDER BY first_row) AS BIGINT) AS user_idx FROM "
                               f"(SELECT u, min(row_id) AS first_row FROM {table} GROUP BY u) AS f")
        self.e.create("items", "SELECT i, CAST(row_number() OVER (ORDER BY first_row) AS BIGINT) AS item_idx, n FROM "
                               f"(SELECT i, min(row_id) AS first_row, count(*) AS n FROM {table} GROUP BY i) AS f")

    def _raw(self, role: str, alias: str) -> tuple[str, str]:
        """The raw-id expression of vocabulary ``alias`` and the join it needs."""
        if self.int_ids[role]:
            return f"{alias}.{role}", ""
        return f"{role}c.raw", f"JOIN {role}_codes {role}c ON {alias}.{role} = {role}c.code"

    def write_vocabularies(self, out: Path) -> None:
        raw, join = self._raw("u", "uv")
        self.e.copy(f"SELECT uv.user_idx, {raw} AS raw_id FROM users uv {join} ORDER BY uv.user_idx",
                    out / "users.parquet",
                    pa.schema([("user_idx", pa.int64()), ("raw_id", self.staged.types["u_raw"])]))
        raw, join = self._raw("i", "iv")
        self.e.copy(f"SELECT iv.item_idx, {raw} AS raw_id, iv.n AS {self.e.quote('count')} FROM items iv {join} "
                    "ORDER BY iv.item_idx", out / "items.parquet",
                    pa.schema([("item_idx", pa.int64()), ("raw_id", self.staged.types["i_raw"]),
                               ("count", pa.int64())]))

    def joined_sql(self, table: str, shards: int) -> str:
        """Rows with their dense ids and their user's shard."""
        shard = f"CAST(((uv.user_idx * {HASH_MULTIPLIER}) % 4294967296) % {shards} AS INT)"
        side = "".join(f", c.{c}" for c in ("ts", "val", "event") if self.staged.has(c))
        return (f"SELECT c.row_id, uv.user_idx, iv.item_idx{side}, {shard} AS shard "
                f"FROM {table} c JOIN users uv ON c.u = uv.u JOIN items iv ON c.i = iv.i")

    def events_sql(self, rows: str) -> str:
        """The event layout's columns from ``rows`` (a subquery or view of :meth:`joined_sql`'s columns)."""
        q = self.e.quote
        side = "".join(f", r.{c} AS {q(name)}" for c, name in (("ts", "timestamp"), ("val", "value"),
                                                               ("event", "event")) if self.staged.has(c))
        order = "r.ts, r.row_id" if self.has_ts else "r.row_id"
        # nullif keeps pos a nullable column on every engine (Spark would mark a window result NOT NULL).
        pos = f"nullif(CAST(row_number() OVER (PARTITION BY r.user_idx ORDER BY {order}) - 1 AS INT), -1)"
        return f"SELECT r.user_idx, {pos} AS pos, r.item_idx{side}, r.shard FROM {rows} r"

    def write_events(self, table: str, out: Path, shards: int, passes: int) -> None:
        """The events, partitioned by shard. Numbering every user's positions at once sorts the whole log; in
        ``passes`` > 1 the joined rows are first scattered by shard group (one scan, no sort), then each group
        is numbered and written on its own, so spill space and memory are those of one group."""
        folder = out / EVENTS
        if passes == 1:
            self.e.copy_partitioned(self.events_sql(f"({self.joined_sql(table, shards)})"), folder, "shard")
            return
        scatter = out / ".events-by-pass"
        self.e.copy_partitioned(f"SELECT j.*, j.shard % {passes} AS grp FROM ({self.joined_sql(table, shards)}) j",
                                scatter, "grp")
        folder.mkdir(parents=True, exist_ok=True)
        for p in range(passes):
            part = scatter / f"grp={p}"
            if not part.is_dir():  # no user hashed into this group
                continue
            self.e.source("pass_rows", part)
            self.e.copy_partitioned(self.events_sql("pass_rows"), out / ".events-pass", "shard")
            for shard_dir in sorted((out / ".events-pass").iterdir()):
                shard_dir.rename(folder / shard_dir.name)
            shutil.rmtree(out / ".events-pass")
            shutil.rmtree(part)
            self.progress(f"  events pass {p + 1}/{passes}")
        shutil.rmtree(scatter)

    def write_catalog(self, catalog: Path, out: Path) -> None:
        """Catalog rows of kept items with their item_idx: the first row of each item, in catalog order."""
        self.e.source("catalog", catalog)
        raw, join = self._raw("i", "iv")
        id_type = "BIGINT" if self.int_ids["i"] else "STRING"
        staged = pq.read_schema(next(catalog.glob("*.parquet")))
        cols = [c for c in staged.names if c != "crow"]
        schema = pa.schema([staged.field(c).with_nullable(True) for c in cols] + [("item_idx", pa.int64())])
        select = ", ".join(f"c.{self.e.quote(c)}" for c in cols)
        self.e.copy(f"SELECT {', '.join(self.e.quote(c) for c in cols)}, item_idx FROM (SELECT {select}, iv.item_idx, "
                    "c.crow, row_number() OVER (PARTITION BY iv.item_idx ORDER BY c.crow) AS rn FROM catalog c "
                    f"JOIN (SELECT iv.item_idx, {raw} AS raw_id FROM items iv {join}) AS iv "
                    f"ON try_cast(c.item AS {id_type}) = iv.raw_id) AS k WHERE rn = 1 ORDER BY crow",
                    out / "catalog.parquet", schema)

    def temporal(self, table: str, n: int) -> dict[str, float]:
        """The default temporal cut times: numpy's quantiles of all kept timestamps, from order statistics."""
        q_valid, q_test = default_cut_quantiles()
        dtype = np.int64 if self.staged.types["ts"] == pa.int64() else np.float64
        found: dict[int, Any] = {}

        def value_at(k: int) -> Any:
            if k not in found:
                found[k] = self.order_statistic(table, "ts", k)
            return found[k]

        return {"valid_start": linear_quantile(n, q_valid, value_at, dtype),
                "test_start": linear_quantile(n, q_test, value_at, dtype)}

    def order_statistic(self, table: str, column: str, k: int) -> Any:
        """The k-th smallest value (0-based) of ``column`` by narrowing histograms.

        Each pass counts the rows of the current value range in ``BUCKETS`` equal-width buckets (a parallel
        aggregation on any engine, no global sort, bounded memory) and keeps only the bucket holding rank k;
        a bucket of at most ``FETCH_ROWS`` rows is finished here. Buckets are monotone in the value, so the
        answer is exact however an engine rounds the bucket arithmetic.
        """
        lo, hi = self._cached(f"SELECT min({column}), max({column}) FROM {table}")[0]
        while lo != hi:
            where = f"{column} >= ({_literal(lo)}) AND {column} <= ({_literal(hi)})"
            width = (float(hi) - float(lo)) / BUCKETS
            if not 0 < width < math.inf:  # no finer buckets possible: count the values themselves
                return self._kth_of_values(table, column, where, k)
            bucket = (f"least(CAST(floor(({column} - ({_literal(lo)})) / ({_literal(width)})) AS BIGINT), "
                      f"{BUCKETS - 1})")
            counts = sorted((int(b), int(c)) for b, c in self._cached(
                f"SELECT {bucket}, count(*) FROM {table} WHERE {where} GROUP BY {bucket}"))
            cum = np.cumsum([c for _, c in counts])
            at = int(np.searchsorted(cum, k, side="right"))
            k -= int(cum[at - 1]) if at else 0
            where = f"{where} AND {bucket} = {counts[at][0]}"
            if counts[at][1] <= FETCH_ROWS or counts[at][1] == cum[-1]:
                return self._kth_of_values(table, column, where, k)
            lo, hi = self.e.rows(f"SELECT min({column}), max({column}) FROM {table} WHERE {where}")[0]
        return lo

    def _kth_of_values(self, table: str, column: str, where: str, k: int) -> Any:
        values = sorted(self.e.rows(f"SELECT {column}, count(*) FROM {table} WHERE {where} GROUP BY {column}"))
        cum = np.cumsum([c for _, c in values])
        return values[int(np.searchsorted(cum, k, side="right"))][0]

    def _cached(self, sql: str) -> list[tuple]:
        """Results of statements that several order statistics share."""
        if sql not in self._results:
            self._results[sql] = self.e.rows(sql)
        return self._results[sql]

    def run(self, out: Path, *, name: str, dedup: bool, kcore: int | None, shards: int | None, source: str,
            catalog: Path | None = None, meta: dict | None = None, memory_limit: int | None = None
            ) -> dict[str, Any]:
        """Every statement, in order; writes the layout's files under ``out`` and returns the manifest."""
        table, n = self.base(), self.staged.rows
        if dedup:
            with self._stage("dedup") as note:
                table = self.dedup(table)
                n = self.count(table)
                note(f"{n:,} of {self.staged.rows:,} rows kept")
        if kcore:
            with self._stage(f"kcore {kcore}") as note:
                table, n = self.kcore(table, kcore, n)
                note(f"{n:,} rows kept")
        if n == 0:
            raise DataError(f"no interactions left after preprocessing (kcore={kcore}, dedup={dedup})")
        with self._stage("vocabularies") as note:
            self.vocabularies(table)
            users, items = self.count("users"), self.count("items")
            self.write_vocabularies(out)
            note(f"{users:,} users, {items:,} items")
        n_shards = shards or default_shards(n)
        passes = event_passes(n, n_shards, memory_limit)
        with self._stage("events") as note:
            self.write_events(table, out, n_shards, passes)
            note(f"{n:,} in {n_shards} shards" + (f", {passes} passes" if passes > 1 else ""))
        if catalog is not None:
            with self._stage("catalog") as note:
                self.write_catalog(catalog, out)
                note("catalog.parquet")
        with self._stage("statistics") as note:
            hist = self.e.rows(f"SELECT n, count(*) FROM (SELECT u, count(*) AS n FROM {table} GROUP BY u) AS l "
                               "GROUP BY n")
            temporal = self.temporal(table, n) if self.has_ts else None
            note("sequence lengths" + (", temporal cut times" if self.has_ts else ""))
        columns = ["user_idx", "pos", "item_idx"] + [name for col, name in (("ts", "timestamp"), ("val", "value"),
                                                                           ("event", "event")) if self.staged.has(col)]
        stats = {"name": name, "users": users, "items": items, "interactions": n, "density": n / (users * items),
                 "has_timestamps": self.has_ts, "has_item_table": catalog is not None,
                 "sequence_length": length_stats(hist)}
        return build_manifest(name=name, engine=self.e.name, shards=n_shards, users=users, items=items,
                              interactions=n, columns=columns, dedup=dedup, kcore=kcore, temporal=temporal,
                              source=source, stats=stats, meta=meta)


def event_passes(rows: int, shards: int, memory_limit: int | None) -> int:
    """How many shard groups the events are numbered in, so that one group's working set fits the limit."""
    if not memory_limit:
        return 1
    return max(1, min(shards, math.ceil(rows * EVENT_BYTES / (memory_limit * DUCKDB_SHARE))))


def _literal(value: Any) -> str:
    """A number as SQL text that every engine reads as BIGINT or DOUBLE (never DECIMAL)."""
    return str(int(value)) if isinstance(value, (int, np.integer)) else f"{float(value):.17e}"
