"""genrec.io: atomic writes leave no temporary files and never a half-written target."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genrec.io import atomic_write, read_json, write_json, write_parquet, write_text


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_text_creates_parents_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a" / "b" / "note.txt"
    assert write_text(target, "h\u00e9llo\n") == target
    assert target.read_text(encoding="utf-8") == "h\u00e9llo\n"
    assert names(target.parent) == ["note.txt"]
    write_text(target, "second")
    assert target.read_text(encoding="utf-8") == "second"
    assert names(target.parent) == ["note.txt"]


def test_write_json_round_trip_with_numpy_and_paths(tmp_path):
    obj = {"n": np.int64(3), "x": np.float32(0.5), "arr": np.arange(3), "p": Path("/x/y"), "s": "ok"}
    path = write_json(tmp_path / "o.json", obj)
    assert read_json(path) == {"n": 3, "x": 0.5, "arr": [0, 1, 2], "p": "/x/y", "s": "ok"}
    assert path.read_text().endswith("\n")
    assert names(tmp_path) == ["o.json"]


def test_write_json_rejects_unknown_types_and_keeps_old_file(tmp_path):
    path = write_json(tmp_path / "o.json", {"v": 1})
    with pytest.raises(TypeError, match="object"):
        write_json(path, {"v": object()})
    assert read_json(path) == {"v": 1}
    assert names(tmp_path) == ["o.json"]


def test_write_parquet(tmp_path):
    table = pa.table({"a": [1, 2], "b": ["x", "y"]})
    path = write_parquet(tmp_path / "t.parquet", table)
    assert pq.read_table(path).equals(table)
    assert names(tmp_path) == ["t.parquet"]


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_exception_in_writer_keeps_previous_content(tmp_path, exc):
    target = tmp_path / "data.txt"
    write_text(target, "old content")

    def half_write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("new but incompl")
        raise exc

    with pytest.raises(type(exc)):
        atomic_write(target, half_write)
    assert target.read_text() == "old content"
    assert names(tmp_path) == ["data.txt"]


def test_exception_before_first_write_leaves_nothing(tmp_path):
    def fail(tmp: str) -> None:
        raise ValueError("no")

    with pytest.raises(ValueError):
        atomic_write(tmp_path / "new.bin", fail)
    assert names(tmp_path) == []


def test_writer_that_removes_its_temp_file(tmp_path):
    def vanish(tmp: str) -> None:
        Path(tmp).unlink()

    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "x", vanish)
    assert names(tmp_path) == []


def test_temp_file_lives_next_to_target(tmp_path):
    seen: list[str] = []

    def record(tmp: str) -> None:
        seen.append(tmp)
        Path(tmp).write_text(json.dumps({"ok": True}))

    atomic_write(tmp_path / "sub" / "f.json", record)
    assert Path(seen[0]).parent == tmp_path / "sub"
    assert Path(seen[0]).name.startswith(".f.json.") and seen[0].endswith(".tmp")
    assert read_json(tmp_path / "sub" / "f.json") == {"ok": True}
