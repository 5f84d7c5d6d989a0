"""Readers and schemas: every format, custom columns, and bad input that raises a genrec error naming the
file, line and column."""

from __future__ import annotations

import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genrec.data import (
    DataSchema,
    InteractionSchema,
    ItemSchema,
    load_dataset,
    load_schema,
    read_interactions,
    read_items,
    read_sequences,
)
from genrec.data.readers import read_table, validate_interactions
from genrec.errors import ConfigError, DataError, GenrecError, UnknownDatasetError

ROWS = [("alice", "x", 3), ("bob", "y", 1), ("alice", "z", 2)]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def csv_text(sep: str = ",", header: tuple[str, ...] = ("user_id", "item_id", "timestamp")) -> str:
    lines = [sep.join(header)] if header else []
    lines += [sep.join(str(v) for v in row) for row in ROWS]
    return "\n".join(lines) + "\n"


EXPECTED = {"user": ["alice", "bob", "alice"], "item": ["x", "y", "z"], "timestamp": [3, 1, 2]}


# --- formats -------------------------------------------------------------------------------------------

def test_csv(tmp_path):
    t = read_interactions(write(tmp_path / "a.csv", csv_text()), InteractionSchema(timestamp="timestamp"))
    assert t.column_names == ["user", "item", "timestamp"]
    assert t.to_pydict() == EXPECTED
    assert t.schema.field("user").type == pa.string() and t.schema.field("timestamp").type == pa.int64()


def test_csv_without_timestamp_role_drops_the_column(tmp_path):
    t = read_interactions(write(tmp_path / "a.csv", csv_text()))
    assert t.column_names == ["user", "item"]


def test_tsv(tmp_path):
    t = read_interactions(write(tmp_path / "a.tsv", csv_text("\t")), InteractionSchema(timestamp="timestamp"))
    assert t.to_pydict() == EXPECTED


def test_custom_delimiter_and_format(tmp_path):
    path = write(tmp_path / "a.data", csv_text(";"))
    t = read_interactions(path, InteractionSchema(format="csv", delimiter=";", timestamp="timestamp"))
    assert t.to_pydict() == EXPECTED


def test_headerless_csv_uses_column_numbers(tmp_path):
    path = write(tmp_path / "a.csv", csv_text(header=()))
    t = read_interactions(path, InteractionSchema(user="0", item="1", timestamp="2", header=False))
    assert t.to_pydict() == EXPECTED


def test_parquet(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"uid": pa.array([10, 20, 10], pa.int32()), "iid": ["x", "y", "z"],
                             "ts": [3.5, 1.0, 2.0], "kind": ["click", "buy", "click"], "rating": [5, 4, 3]}), path)
    schema = InteractionSchema(user="uid", item="iid", timestamp="ts", event="kind", value="rating")
    t = read_interactions(path, schema)
    assert t.column_names == ["user", "item", "timestamp", "event", "value"]
    assert t.schema.field("user").type == pa.int64()  # ints are widened to int64
    assert t.schema.field("timestamp").type == pa.float64()
    assert t.schema.field("value").type == pa.float64()
    assert t.to_pydict() == {"user": [10, 20, 10], "item": ["x", "y", "z"], "timestamp": [3.5, 1.0, 2.0],
                             "event": ["click", "buy", "click"], "value": [5.0, 4.0, 3.0]}


def test_int_ids_in_csv(tmp_path):
    t = read_interactions(write(tmp_path / "a.csv", "user_id,item_id\n1,100\n2,200\n"))
    assert t.schema.field("user").type == pa.int64() and t.schema.field("item").type == pa.int64()
    assert t.to_pydict() == {"user": [1, 2], "item": [100, 200]}


def test_datetime_timestamps_become_epoch_seconds(tmp_path):
    path = write(tmp_path / "a.csv",
                 "user_id,item_id,timestamp\na,x,2020-01-01T00:00:00\nb,y,2020-01-02T00:00:01.5\n")
    t = read_interactions(path, InteractionSchema(timestamp="timestamp"))
    assert t.column("timestamp").to_pylist() == [1577836800, 1577923201]
    pq_path = tmp_path / "a.parquet"
    ts = pa.array([datetime.datetime(2020, 1, 1, 0, 0, 0, 500000), datetime.datetime(2020, 1, 2)],
                  pa.timestamp("ms", tz="UTC"))
    pq.write_table(pa.table({"user_id": [1, 2], "item_id": [1, 2], "timestamp": ts}), pq_path)
    t = read_interactions(pq_path, InteractionSchema(timestamp="timestamp"))
    assert t.column("timestamp").to_pylist() == [1577836800, 1577923200]
    pq.write_table(pa.table({"user_id": [1], "item_id": [1], "timestamp": [datetime.date(2020, 1, 2)]}), pq_path)
    assert read_interactions(pq_path, InteractionSchema(timestamp="timestamp")).column("timestamp").to_pylist() == [
        1577923200]


def test_sequences_text_form(tmp_path):
    path = write(tmp_path / "seq.txt", "# a comment\nu1 a b c\n\nu2\td  e\nu1 f\n")
    t = read_interactions(path)
    assert t.to_pydict() == {"user": ["u1", "u1", "u1", "u2", "u2", "u1"], "item": ["a", "b", "c", "d", "e", "f"]}
    assert read_sequences(path).to_pydict() == t.to_pydict()


def test_sequences_int_ids_and_mixed(tmp_path):
    t = read_sequences(write(tmp_path / "s.txt", "1 10 11\n2 12\n"))
    assert t.schema.field("user").type == pa.int64() and t.schema.field("item").type == pa.int64()
    assert t.to_pydict() == {"user": [1, 1, 2], "item": [10, 11, 12]}
    t = read_sequences(write(tmp_path / "m.txt", "1 10 a\n2 12\n"))
    assert t.schema.field("user").type == pa.int64() and t.schema.field("item").type == pa.string()
    assert t.column("item").to_pylist() == ["10", "a", "12"]


def test_sequences_format_by_name(tmp_path):
    path = write(tmp_path / "seq.data", "u1 a b\n")
    assert read_interactions(path, InteractionSchema(format="sequences")).num_rows == 2


def test_read_items(tmp_path):
    path = write(tmp_path / "items.csv", "iid,name,desc,cat,img\n1,One,first,a|b,1.jpg\n2,Two,second,c,2.jpg\n")
    t = read_items(path, ItemSchema(item="iid", text=["name", "desc"], tags="cat", image="img"))
    assert t.column_names == ["item", "name", "desc", "cat", "img"]
    assert t.schema.field("item").type == pa.int64()
    assert t.column("name").to_pylist() == ["One", "Two"]


def test_read_items_default_schema_and_string_ids(tmp_path):
    t = read_items(write(tmp_path / "items.tsv", "item_id\ttitle\nx\tX\n"))
    assert t.column_names == ["item"] and t.column("item").to_pylist() == ["x"]


# --- YAML schema ---------------------------------------------------------------------------------------

def test_load_schema(tmp_path):
    path = write(tmp_path / "s.yaml", """
interactions_path: events.csv
interactions:
  user: uid
  item: iid
  timestamp: ts
  delimiter: ";"
items_path: items.csv
items:
  item: iid
  text: [title, description]
""")
    s = load_schema(path)
    assert isinstance(s, DataSchema)
    assert s.interactions.user == "uid" and s.interactions.timestamp == "ts" and s.interactions.delimiter == ";"
    assert s.items is not None and s.items.text == ["title", "description"]
    assert s.interactions_path == "events.csv" and s.items_path == "items.csv"
    events = write(tmp_path / "events.csv", "uid;iid;ts\n1;a;5\n2;b;4\n")
    assert read_interactions(events, s.interactions).to_pydict() == {"user": [1, 2], "item": ["a", "b"],
                                                                     "timestamp": [5, 4]}


def test_empty_yaml_gives_defaults(tmp_path):
    assert load_schema(write(tmp_path / "s.yaml", "")) == DataSchema()


@pytest.mark.parametrize("text, field", [
    ("interactions:\n  usr: uid\n", "interactions.usr"),
    ("interaction:\n  user: uid\n", "interaction"),
    ("items:\n  item: iid\n  colour: red\n", "items.colour"),
])
def test_unknown_yaml_key_is_config_error_naming_field(tmp_path, text, field):
    path = write(tmp_path / "s.yaml", text)
    with pytest.raises(ConfigError) as e:
        load_schema(path)
    assert field in str(e.value) and "unknown field" in str(e.value) and str(path) in str(e.value)


def test_mistyped_yaml_value(tmp_path):
    with pytest.raises(ConfigError, match=r"interactions\.header"):
        load_schema(write(tmp_path / "s.yaml", "interactions:\n  header: maybe\n"))
    with pytest.raises(ConfigError, match=r"interactions\.format"):
        load_schema(write(tmp_path / "s.yaml", "interactions:\n  format: xlsx\n"))


def test_bad_yaml_and_missing_schema(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_schema(write(tmp_path / "s.yaml", "interactions: [unclosed\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_schema(tmp_path / "nope.yaml")


def test_schema_objects_reject_unknown_fields():
    with pytest.raises(ValueError):
        InteractionSchema(usr="x")


# --- bad input -----------------------------------------------------------------------------------------

def raises_data_error(path: Path, *fragments: str, schema=None, reader=read_interactions) -> DataError:
    with pytest.raises(DataError) as e:
        reader(path, schema) if schema is not None else reader(path)
    assert isinstance(e.value, GenrecError)
    msg = str(e.value)
    assert str(path) in msg, msg
    for frag in fragments:
        assert frag in msg, (frag, msg)
    return e.value


@pytest.mark.parametrize("name", ["missing.csv", "missing.tsv", "missing.parquet", "missing.txt"])
def test_missing_file(tmp_path, name):
    raises_data_error(tmp_path / name, "not found")


def test_missing_items_file(tmp_path):
    raises_data_error(tmp_path / "items.csv", "not found", reader=read_items)


def test_unknown_suffix(tmp_path):
    raises_data_error(write(tmp_path / "a.json", "{}"), "'.json'")


def test_missing_column(tmp_path):
    path = write(tmp_path / "a.csv", csv_text())
    err = raises_data_error(path, "'uid'", "user_id", schema=InteractionSchema(user="uid"))
    assert err.column == "uid"
    raises_data_error(path, "'ts'", schema=InteractionSchema(timestamp="ts"))


def test_missing_item_column_in_catalog(tmp_path):
    path = write(tmp_path / "items.csv", "item_id,title\n1,a\n")
    raises_data_error(path, "'description'", schema=ItemSchema(text=["title", "description"]), reader=read_items)


def test_non_numeric_timestamp_names_column_and_line(tmp_path):
    path = write(tmp_path / "a.csv", "user_id,item_id,timestamp\na,x,1\nb,y,2\nc,z,oops\nd,w,4\n")
    err = raises_data_error(path, "'timestamp'", "line 4", "oops", schema=InteractionSchema(timestamp="timestamp"))
    assert err.line == 4 and err.column == "timestamp"


def test_non_numeric_timestamp_without_header(tmp_path):
    path = write(tmp_path / "a.csv", "a,x,1\nb,y,later\n")
    schema = InteractionSchema(user="0", item="1", timestamp="2", header=False)
    err = raises_data_error(path, "line 2", schema=schema)
    assert err.line == 2


def test_non_numeric_value(tmp_path):
    path = write(tmp_path / "a.tsv", "user_id\titem_id\trating\na\tx\t5\nb\ty\tgood\n")
    raises_data_error(path, "'value'", "line 3", "good", schema=InteractionSchema(value="rating"))


def test_float_ids_rejected(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"user_id": [1, 2], "item_id": [1.5, 2.0]}), path)
    raises_data_error(path, "'item'", "double")


@pytest.mark.parametrize("text", ["user_id,item_id\n", "user_id,item_id,timestamp\n"])
def test_empty_table(tmp_path, text):
    raises_data_error(write(tmp_path / "a.csv", text), "empty")


def test_empty_file(tmp_path):
    raises_data_error(write(tmp_path / "a.csv", ""), "")


def test_empty_parquet(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"user_id": pa.array([], pa.int64()), "item_id": pa.array([], pa.int64())}), path)
    raises_data_error(path, "empty")


def test_empty_sequence_file(tmp_path):
    raises_data_error(write(tmp_path / "s.txt", "# only a comment\n\n"), "empty")


def test_empty_item_table(tmp_path):
    raises_data_error(write(tmp_path / "items.csv", "item_id,title\n"), "empty", reader=read_items)


def test_csv_row_with_too_many_fields_names_line(tmp_path):
    path = write(tmp_path / "a.csv", "user_id,item_id\na,x\nb,y\nc,z,extra\nd,w\n")
    err = raises_data_error(path, "line 4", "expected 2 fields", "c,z,extra")
    assert err.line == 4


def test_csv_row_with_too_few_fields_names_line(tmp_path):
    path = write(tmp_path / "a.tsv", "user_id\titem_id\ttimestamp\na\tx\t1\nb\n")
    raises_data_error(path, "line 3", "expected 3 fields")


def test_sequence_line_with_only_a_user(tmp_path):
    path = write(tmp_path / "s.txt", "u1 a b\n# c\nu2\nu3 c\n")
    err = raises_data_error(path, "line 3", "u2")
    assert err.line == 3


def test_non_utf8_sequence_file(tmp_path):
    path = tmp_path / "s.txt"
    path.write_bytes(b"u1 a b\nu2 \xff\xfe c\n")
    raises_data_error(path, "UTF-8")


def test_unreadable_parquet(tmp_path):
    raises_data_error(write(tmp_path / "a.parquet", "definitely not parquet"), "Parquet")


@pytest.mark.parametrize("text, line", [
    ("user_id,item_id\na,x\n,y\n", 3),  # empty string id
    ("user_id,item_id\n1,x\n2,y\n,z\n", 4),  # int column with a blank
])
def test_null_user_id_csv(tmp_path, text, line):
    err = raises_data_error(write(tmp_path / "a.csv", text), "'user'", f"line {line}")
    assert err.line == line and err.column == "user"


def test_null_ids_parquet(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"user_id": [1, None, 3], "item_id": [1, 2, 3]}), path)
    raises_data_error(path, "'user'", "line 2")
    pq.write_table(pa.table({"user_id": [1, 2, 3], "item_id": ["a", "b", None]}), path)
    raises_data_error(path, "'item'", "line 3")


def test_null_timestamp(tmp_path):
    path = write(tmp_path / "a.csv", "user_id,item_id,timestamp\na,x,1\nb,y,\n")
    raises_data_error(path, "'timestamp'", "line 3", schema=InteractionSchema(timestamp="timestamp"))


def test_null_item_id_in_catalog(tmp_path):
    raises_data_error(write(tmp_path / "items.csv", "item_id,title\n1,a\n,b\n"), "line 3", reader=read_items)


def test_table_format_check(tmp_path):
    with pytest.raises(DataError, match="not a table format"):
        read_table(write(tmp_path / "s.txt", "u a\n"))


def test_validate_in_memory_table_names_placeholder():
    with pytest.raises(DataError, match="<table>.*empty"):
        validate_interactions(pa.table({"user": pa.array([], pa.int64()), "item": pa.array([], pa.int64())}))


# --- load_dataset entry point --------------------------------------------------------------------------

def test_unknown_dataset_name():
    with pytest.raises(UnknownDatasetError, match="'no-such-dataset'.*movielens-1m"):
        load_dataset("no-such-dataset")


def test_load_dataset_missing_path_names_file(tmp_path):
    with pytest.raises(DataError, match="not found") as e:
        load_dataset(tmp_path / "events.csv")
    assert str(tmp_path / "events.csv") in str(e.value)


def test_load_dataset_from_files(tmp_path):
    events = write(tmp_path / "events.csv", "uid,iid,ts\nu1,a,2\nu1,b,1\nu2,a,3\n")
    items = write(tmp_path / "items.csv", "item_id,title\nb,Bee\na,Ay\nc,Sea\n")
    ds = load_dataset(events, schema=InteractionSchema(user="uid", item="iid", timestamp="ts"), items_path=items,
                      item_schema=ItemSchema(text=["title"]))
    assert ds.name == "events" and ds.meta["source"] == str(events)
    assert ds.sequences.to_lists() == [[2, 1], [1]]  # dense a=1, b=2; u1 sorted by time
    assert ds.item_titles() == ["", "Ay", "Bee"]
