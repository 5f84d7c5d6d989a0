"""Out-of-core preparation: DuckDB and Spark write exactly what the in-memory path writes (tables, manifests,
splits), from files, folders and globs of Parquet and CSV; bad input fails cleanly with nothing left behind."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_prepared import assert_splits_equal, merge_shard_splits

from cli_run import run
from genrec.data import (
    InteractionSchema,
    PrepareConfig,
    PreparedDataset,
    leave_one_out,
    load_dataset,
    prepare,
    prepare_to_folder,
    temporal_split,
)
from genrec.data.ingest import ingest, resolve_inputs
from genrec.errors import ConfigError, DataError

pytest.importorskip("duckdb")

SCHEMA = InteractionSchema(user="uid", item="iid", timestamp="ts", value="rating", event="kind")


def make_log(n: int = 600, seed: int = 0, string_users: bool = True, string_items: bool = False) -> pa.Table:
    """A log with ties in time, repeated (user, item) pairs, and side columns."""
    rng = np.random.default_rng(seed)
    users, items = rng.integers(0, 50, n), rng.integers(0, 40, n)
    return pa.table({
        "uid": pa.array([f"u{u}" for u in users]) if string_users else pa.array(users),
        "iid": pa.array([f"i{i}" for i in items]) if string_items else pa.array(items),
        "ts": pa.array(rng.integers(0, 30, n)),
        "rating": pa.array(rng.integers(1, 6, n).astype(np.float64)),
        "kind": pa.array(rng.choice(["click", "like", "share"], n)),
    })


def write_parts(table: pa.Table, folder: Path, parts: int = 3, fmt: str = "parquet") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, table.num_rows, parts + 1).astype(int)
    for k in range(parts):
        part = table.slice(bounds[k], bounds[k + 1] - bounds[k])
        if fmt == "parquet":
            pq.write_table(part, folder / f"part-{k}.parquet", row_group_size=64)
        else:
            pacsv.write_csv(part, folder / f"part-{k}.csv")
    return folder


def layout(path: Path) -> dict[str, object]:
    """Every table of a prepared folder, in a canonical row order, plus the manifest without the engine."""
    out: dict[str, object] = {}
    for name, key in (("users", "user_idx"), ("items", "item_idx"), ("catalog", "item_idx")):
        if (path / f"{name}.parquet").is_file():
            out[name] = pq.read_table(path / f"{name}.parquet").sort_by(key)
    p = PreparedDataset.open(path)
    for k in range(p.n_shards):
        files = p.shard_files(k)
        if files:
            out[f"shard={k}"] = pa.concat_tables([pq.ParquetFile(f).read() for f in files]).sort_by(
                [("user_idx", "ascending"), ("pos", "ascending")])
    manifest = dict(p.manifest)
    manifest.pop("engine")
    out["manifest"] = manifest
    return out


def assert_same_layout(a: Path, b: Path) -> None:
    la, lb = layout(a), layout(b)
    assert la.keys() == lb.keys()
    assert la.pop("manifest") == lb.pop("manifest")
    for name, table in la.items():
        other = lb[name]
        assert table.schema.equals(other.schema), f"{name}: {table.schema} != {other.schema}"
        assert table.equals(other), name


def prep(inputs, out: Path, engine: str, schema: InteractionSchema = SCHEMA, **options) -> PreparedDataset:
    return prepare_to_folder(inputs, out, schema=schema, config=PrepareConfig(engine=engine, **options))


# --- memory vs DuckDB ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("string_users", "string_items", "dedup", "kcore"),
                         [(True, False, True, 3), (False, True, False, None), (True, True, True, None),
                          (False, False, False, 2)])
def test_duckdb_equals_memory(tmp_path, string_users, string_items, dedup, kcore):
    log = make_log(string_users=string_users, string_items=string_items)
    src = write_parts(log, tmp_path / "in")
    mem = prep(src, tmp_path / "mem", "memory", dedup=dedup, kcore=kcore, shards=3)
    duck = prep(src, tmp_path / "duck", "duckdb", dedup=dedup, kcore=kcore, shards=3)
    assert duck.manifest["engine"] == "duckdb" and mem.manifest["engine"] == "memory"
    assert_same_layout(mem.path, duck.path)
    # The in-memory path over the same rows, as every verb loads a file today.
    today = prepare(pa.table({"user": log["uid"], "item": log["iid"], "timestamp": log["ts"],
                              "value": log["rating"], "event": log["kind"]}),
                    name="in", dedup=dedup, kcore=kcore)
    whole = duck.to_memory()
    assert whole.users.raw.equals(today.users.raw) and whole.items.raw.equals(today.items.raw)
    assert_splits_equal(leave_one_out(whole), leave_one_out(today))
    assert_splits_equal(temporal_split(whole), temporal_split(today))
    assert duck.temporal == temporal_split(today).info
    shards = list(duck.iter_shards())
    assert_splits_equal(merge_shard_splits([s.split("loo") for s in shards]), leave_one_out(today))
    assert_splits_equal(merge_shard_splits([s.split("temporal") for s in shards]), temporal_split(today))


def test_single_csv_file_equals_todays_loader(tmp_path):
    log = make_log(seed=5).drop_columns(["rating", "kind"])
    src = tmp_path / "log.csv"
    pacsv.write_csv(log, src)
    schema = InteractionSchema(user="uid", item="iid", timestamp="ts")
    duck = prep(src, tmp_path / "duck", "duckdb", schema=schema, dedup=True, shards=2)
    today = load_dataset(src, schema, dedup=True)
    whole = duck.to_memory()
    assert whole.name == today.name == "log"
    assert whole.users.raw.equals(today.users.raw) and whole.items.raw.equals(today.items.raw)
    assert_splits_equal(leave_one_out(whole), leave_one_out(today))
    assert_splits_equal(temporal_split(whole), temporal_split(today))
    assert_same_layout(prep(src, tmp_path / "mem", "memory", schema=schema, dedup=True, shards=2).path, duck.path)


def test_without_timestamps_and_with_a_catalog(tmp_path):
    log = make_log(seed=2, string_items=True).select(["uid", "iid"])
    src = write_parts(log, tmp_path / "in", parts=2)
    catalog = tmp_path / "items.csv"
    names = [f"i{i}" for i in range(45)] + ["i3"]  # unknown items and a repeated row
    pacsv.write_csv(pa.table({"item_id": names, "title": [f"t{k}" for k in range(len(names))]}), catalog)
    schema = InteractionSchema(user="uid", item="iid")
    from genrec.data import ItemSchema

    outs = [prepare_to_folder(src, tmp_path / e, schema=schema, items_path=catalog,
                              item_schema=ItemSchema(text=["title"]), config=PrepareConfig(engine=e, kcore=2))
            for e in ("memory", "duckdb")]
    assert outs[0].manifest["temporal"] is None and outs[0].manifest["stats"]["has_item_table"]
    assert_same_layout(outs[0].path, outs[1].path)
    cat = outs[1].catalog()
    assert cat.column_names == ["item", "title", "item_idx"] and "t46" not in cat.column("title").to_pylist()


def test_mixed_id_types_across_files(tmp_path):
    """One file with integer ids, one with strings: ids become strings, as in memory."""
    a, b = make_log(n=200, seed=1, string_users=False), make_log(n=200, seed=2, string_users=True)
    (tmp_path / "in").mkdir()
    pq.write_table(a, tmp_path / "in" / "a.parquet")
    pq.write_table(b, tmp_path / "in" / "b.parquet")
    duck = prep(tmp_path / "in", tmp_path / "duck", "duckdb", shards=2)
    assert duck.users().raw.type == pa.string()
    assert_same_layout(prep(tmp_path / "in", tmp_path / "mem", "memory", shards=2).path, duck.path)


# --- folders, globs, CSV -----------------------------------------------------------------------------------

def test_folder_and_glob_inputs(tmp_path):
    log = make_log(seed=7)
    root = tmp_path / "logs"
    write_parts(log.slice(0, 300), root / "day=1", parts=2)
    write_parts(log.slice(300), root / "day=2", parts=2)
    (root / "_SUCCESS").write_text("")
    (root / "day=1" / ".part-0.parquet.crc").write_text("x")
    files = resolve_inputs(root)
    assert [f.relative_to(root).as_posix() for f in files] == ["day=1/part-0.parquet", "day=1/part-1.parquet",
                                                                "day=2/part-0.parquet", "day=2/part-1.parquet"]
    assert resolve_inputs(str(root / "day=*" / "*.parquet")) == files
    folder = prep(root, tmp_path / "folder", "duckdb", dedup=True, shards=2)
    glob = prep(str(root / "*" / "*.parquet"), tmp_path / "glob", "duckdb", dedup=True, shards=2)
    assert folder.name == glob.name == "logs"
    mem = prep(root, tmp_path / "mem", "memory", dedup=True, shards=2)
    assert_same_layout(mem.path, folder.path)
    assert layout(folder.path).keys() == layout(glob.path).keys()
    whole = prepare(pa.table({"user": log["uid"], "item": log["iid"], "timestamp": log["ts"]}), name="x",
                    dedup=True)
    assert_splits_equal(leave_one_out(folder.to_memory()), leave_one_out(whole))


def test_csv_folder_equals_parquet_folder(tmp_path):
    log = make_log(seed=9, string_items=True)
    csv_in = write_parts(log, tmp_path / "csv" / "logs", fmt="csv")
    csv = prep(csv_in, tmp_path / "a", "duckdb", kcore=2, shards=2)
    parquet = prep(write_parts(log, tmp_path / "pq" / "logs"), tmp_path / "b", "duckdb", kcore=2, shards=2)
    mem = prep(csv_in, tmp_path / "c", "memory", kcore=2, shards=2)
    la, lb = layout(csv.path), layout(parquet.path)
    assert la["manifest"].pop("source") != lb["manifest"].pop("source")
    assert la["manifest"] == lb["manifest"]
    assert all(la[k].equals(lb[k]) for k in la if k != "manifest")
    assert_same_layout(mem.path, csv.path)


def test_auto_engine(tmp_path, monkeypatch):
    src = write_parts(make_log(), tmp_path / "in")
    assert prep(src, tmp_path / "a", "auto").manifest["engine"] == "memory"
    monkeypatch.setattr("genrec.data.ooc.AUTO_MEMORY_ROWS", 100)
    assert prep(src, tmp_path / "b", "auto").manifest["engine"] == "duckdb"


def test_text_sequences_are_prepared_in_memory(tmp_path):
    src = tmp_path / "seqs.txt"
    src.write_text("u1 a b c\nu2 b c\nu1 d\n")
    p = prepare_to_folder(src, tmp_path / "out")
    assert p.manifest["engine"] == "memory" and p.to_memory().sequences.to_lists() == [[1, 2, 3, 4], [2, 3]]
    with pytest.raises(DataError, match="in memory only"):
        prepare_to_folder(src, tmp_path / "out2", config=PrepareConfig(engine="duckdb"))


def test_replaces_a_prepared_folder(tmp_path):
    src = write_parts(make_log(), tmp_path / "in")
    prep(src, tmp_path / "out", "duckdb", kcore=3)
    again = prep(src, tmp_path / "out", "duckdb")
    assert again.manifest["kcore"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]  # no temporary siblings left


# --- property: DuckDB equals memory on any small log -----------------------------------------------------

@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 8), st.integers(0, 4)), min_size=1, max_size=40),
       st.booleans(), st.sampled_from([None, 2]), st.booleans())
def test_property_duckdb_equals_memory(tmp_path_factory, rows, dedup, kcore, string_items):
    tmp = tmp_path_factory.mktemp("prop")
    users, items, ts = (list(c) for c in zip(*rows, strict=True))
    log = pa.table({"uid": users, "iid": [f"i{i}" for i in items] if string_items else items, "ts": ts})
    pq.write_table(log, tmp / "log.parquet")
    schema = InteractionSchema(user="uid", item="iid", timestamp="ts")
    results = {}
    for engine in ("memory", "duckdb"):
        try:
            results[engine] = prep(tmp / "log.parquet", tmp / engine, engine, schema=schema, dedup=dedup,
                                   kcore=kcore, shards=2).path
        except DataError as e:
            results[engine] = str(e)
    if isinstance(results["memory"], str):
        assert results["duckdb"] == results["memory"]  # both find nothing left after k-core
    else:
        assert_same_layout(results["memory"], results["duckdb"])
    shutil.rmtree(tmp)


# --- bad input ---------------------------------------------------------------------------------------------

def bad_parquet_with_null(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(make_log(n=20), src / "a.parquet")
    users = make_log(n=20, seed=1)["uid"].to_pylist()
    users[13] = None
    pq.write_table(make_log(n=20, seed=1).set_column(0, "uid", pa.array(users)), src / "b.parquet")
    return src


def test_errors_name_file_and_line_across_batches(tmp_path):
    src = bad_parquet_with_null(tmp_path)
    with pytest.raises(DataError, match=r"b\.parquet, line 14, column 'user': empty user id"):
        ingest(resolve_inputs(src), tmp_path / "staged", SCHEMA, batch_rows=4)
    csv = tmp_path / "bad.csv"
    csv.write_text("uid,iid,ts\n" + "u1,3,5\n" * 9 + "u2,4\n")
    with pytest.raises(DataError, match=r"bad\.csv, line 11: expected 3 fields"):
        ingest([csv], tmp_path / "staged2", InteractionSchema(user="uid", item="iid", timestamp="ts"))
    csv.write_text("uid,iid,ts\n" + "u1,3,5\n" * 9 + "u2,,6\n")
    with pytest.raises(DataError, match=r"bad\.csv, line 11, column 'item'"):
        ingest([csv], tmp_path / "staged3", InteractionSchema(user="uid", item="iid", timestamp="ts"))


@pytest.mark.parametrize(("setup", "argv", "needle"), [
    ("null", ["--user-col", "uid", "--item-col", "iid", "--engine", "duckdb"], "empty user id"),
    ("good", ["--user-col", "nope", "--item-col", "iid", "--engine", "duckdb"], "column 'nope'"),
    ("garbage", ["--user-col", "uid", "--item-col", "iid", "--engine", "duckdb"], "not a readable Parquet file"),
    ("good", ["--user-col", "uid", "--item-col", "iid", "--memory-limit", "lots"], "--memory-limit"),
    ("good", ["--user-col", "uid", "--item-col", "iid", "--memory-limit", "1MB"], "too small"),
    ("good", ["--user-col", "uid", "--item-col", "iid", "--engine", "sql"], "--engine"),
    ("glob", ["--user-col", "uid", "--item-col", "iid"], "no file matches"),
    ("good", ["--user-col", "uid", "--item-col", "iid", "--kcore", "1000", "--engine", "duckdb"],
     "no interactions left"),
])
def test_cli_bad_input_exits_2_and_leaves_nothing(tmp_path, capsys, setup, argv, needle):
    src = bad_parquet_with_null(tmp_path) if setup == "null" else write_parts(make_log(), tmp_path / "in")
    if setup == "garbage":
        (src / "part-1.parquet").write_bytes(b"not parquet at all")
    target = str(src / "*.nothing") if setup == "glob" else str(src)
    code, _, err = run(["data", "prepare", target, "--out", str(tmp_path / "out"), *argv], capsys)
    assert code == 2 and needle in err, err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no output, no temporary folder


def test_out_folder_that_is_not_a_dataset_is_left_alone(tmp_path):
    src = write_parts(make_log(), tmp_path / "in")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a prepared dataset"):
        prep(src, tmp_path / "out", "duckdb")
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_missing_engine_library_names_the_extra(tmp_path, monkeypatch):
    src = write_parts(make_log(), tmp_path / "in")
    monkeypatch.setitem(sys.modules, "duckdb", None)  # import duckdb now raises ImportError
    with pytest.raises(ConfigError, match=r"genrec\[scale\]"):
        prep(src, tmp_path / "out", "duckdb")
    assert not (tmp_path / "out").exists()


def test_cli_prepare_progress_and_stats_from_manifest(tmp_path, capsys):
    src = write_parts(make_log(), tmp_path / "in")
    code, out, err = run(["data", "prepare", str(src / "*.parquet"), "--out", str(tmp_path / "out"), "--user-col",
                          "uid", "--item-col", "iid", "--time-col", "ts", "--engine", "duckdb", "--dedup",
                          "--shards", "2", "--memory-limit", "256MB", "--threads", "1"], capsys)
    assert code == 0, err
    for stage in ("ingest:", "dedup:", "vocabularies:", "events:", "statistics:"):
        assert stage in err
    assert "2 shards (duckdb)" in out
    for events in (tmp_path / "out" / "events").rglob("*.parquet"):
        events.unlink()  # stats must not need the events
    code, out, err = run(["data", "stats", str(tmp_path / "out"), "--json"], capsys)
    assert code == 0, err
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert json.loads(out) == m["stats"] and m["stats"]["interactions"] == m["interactions"]


def test_builtin_name_keeps_working(tmp_path):
    from genrec.data import get_builtin

    if not get_builtin("movielens-100k").available():
        pytest.skip("no copy of movielens-100k under GENREC_DATA_DIR")
    p = prepare_to_folder("movielens-100k", tmp_path / "ml", config=PrepareConfig(kcore=5))
    assert p.manifest["engine"] == "memory" and p.manifest["kcore"] == 5
    assert p.to_memory().n_interactions == p.n_interactions
    with pytest.raises(ConfigError, match="in memory"):
        prepare_to_folder("movielens-100k", tmp_path / "ml2", config=PrepareConfig(engine="duckdb"))


# --- DuckDB vs Spark -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def spark():
    pytest.importorskip("pyspark")
    if shutil.which("java") is None:
        pytest.skip("Spark needs a Java runtime")
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[2]").appName("genrec-test").config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false").config("spark.sql.shuffle.partitions", "2")
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def test_spark_equals_duckdb(tmp_path, spark):
    log = make_log(n=500, seed=4, string_users=True, string_items=False)
    src = write_parts(log, tmp_path / "in")
    duck = prep(src, tmp_path / "duck", "duckdb", dedup=True, kcore=2, shards=3)
    sp = prep(src, tmp_path / "spark", "spark", dedup=True, kcore=2, shards=3)
    assert sp.manifest["engine"] == "spark"
    assert_same_layout(duck.path, sp.path)
    assert not list((tmp_path / "spark").rglob("_SUCCESS")) and not list((tmp_path / "spark").rglob("*.crc"))


def test_spark_equals_duckdb_int_users_string_items(tmp_path, spark):
    log = make_log(n=300, seed=8, string_users=False, string_items=True).select(["uid", "iid", "ts"])
    src = write_parts(log, tmp_path / "in", parts=2)
    schema = InteractionSchema(user="uid", item="iid", timestamp="ts")
    catalog = tmp_path / "items.parquet"
    pq.write_table(pa.table({"item_id": [f"i{i}" for i in range(50)] + ["i7"], "title": [f"t{k}" for k in range(51)]}),
                   catalog)
    from genrec.data import ItemSchema

    duck, sp = (prepare_to_folder(src, tmp_path / e, schema=schema, items_path=catalog,
                                  item_schema=ItemSchema(text=["title"]), config=PrepareConfig(engine=e, shards=2))
                for e in ("duckdb", "spark"))
    assert_same_layout(duck.path, sp.path)
    assert sp.catalog().num_rows == sp.n_items


# --- order statistics by narrowing histograms --------------------------------------------------------------

@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.lists(st.integers(-10**15, 10**15), min_size=1, max_size=200),
                 st.lists(st.integers(0, 3), min_size=1, max_size=200),
                 st.lists(st.floats(-1e12, 1e12, allow_nan=False), min_size=1, max_size=200)),
       st.data())
def test_order_statistic_is_exact(tmp_path_factory, monkeypatch, values, data):
    """Few buckets and a tiny fetch size force several narrowing passes."""
    from genrec.data.ingest import Staged
    from genrec.data.sql import DuckDBEngine, Pipeline

    monkeypatch.setattr("genrec.data.sql.BUCKETS", 3)
    monkeypatch.setattr("genrec.data.sql.FETCH_ROWS", 2)
    tmp = tmp_path_factory.mktemp("os")
    pq.write_table(pa.table({"row_id": np.arange(len(values)), "ts": values}), tmp / "part-0.parquet")
    engine = DuckDBEngine(tmp, 256 << 20, threads=1)
    try:
        types = {"row_id": pa.int64(), "u_raw": pa.int64(), "i_raw": pa.int64(), "ts": pa.int64()}
        pipe = Pipeline(engine, Staged(tmp, rows=len(values), types=types))
        engine.source("t", tmp)
        k = data.draw(st.integers(0, len(values) - 1))
        assert pipe.order_statistic("t", "ts", k) == sorted(values)[k]
    finally:
        engine.close()
        shutil.rmtree(tmp)


# --- the events stage in passes ------------------------------------------------------------------------------

def test_event_passes_follow_the_memory_limit():
    from genrec.data.sql import event_passes

    assert event_passes(10**6, 4, None) == 1
    assert event_passes(10**6, 4, 10**9) == 1
    assert event_passes(10**9, 300, 4 * 2**30) == 19  # 64 GB of working set in 3.4 GB groups
    assert event_passes(10**9, 5, 2**20) == 5  # never more passes than shards


@pytest.mark.parametrize("engine", ["duckdb", "spark"])
def test_events_in_passes_equal_one_pass(tmp_path, monkeypatch, request, engine):
    """A tiny budget per row forces one pass per shard; the folder equals the in-memory preparation's."""
    if engine == "spark":
        request.getfixturevalue("spark")
    log = make_log(n=500, seed=5)
    src = write_parts(log, tmp_path / "in")
    mem = prep(src, tmp_path / "mem", "memory", dedup=True, shards=4)
    monkeypatch.setattr("genrec.data.sql.EVENT_BYTES", 10**9)
    messages: list[str] = []
    out = prepare_to_folder(src, tmp_path / engine, schema=SCHEMA, progress=messages.append,
                            config=PrepareConfig(engine=engine, dedup=True, shards=4, memory_limit="256MB"))
    assert any("4 passes" in m for m in messages), messages
    assert_same_layout(mem.path, out.path)
    assert not [p for p in out.path.iterdir() if p.name.startswith(".")]
