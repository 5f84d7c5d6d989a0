"""Built-in datasets: data home, download with checksums (file:// URLs), verify, and each layout's reader on
small generated copies."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from genrec.data import REGISTRY, BuiltinDataset, data_home, download, get_builtin, load_dataset, verify
from genrec.data.builtin import RemoteFile, sha256_file
from genrec.data.readers import read_sequences
from genrec.errors import DataError, GenrecError, UnknownDatasetError

PAYLOAD = b"u1 a b c\nu2 b c\nu3 a c\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "home"
    monkeypatch.setenv("GENREC_DATA_DIR", str(root))
    return root


@pytest.fixture
def source(tmp_path) -> Path:
    src = tmp_path / "remote" / "seq.txt"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    return src


def fake(files: tuple[RemoteFile, ...], name: str = "fake") -> BuiltinDataset:
    return BuiltinDataset(name=name, folder=f"{name}-folder", description="test", licence="none", files=files,
                          reader=lambda root: (read_sequences(root / "data/seq.txt"), None))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


# --- data home -----------------------------------------------------------------------------------------

def test_data_home_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("GENREC_DATA_DIR", str(tmp_path))
    assert data_home() == tmp_path
    monkeypatch.setenv("GENREC_DATA_DIR", "  ")
    assert data_home() == Path.home() / ".cache" / "genrec" / "data"
    monkeypatch.delenv("GENREC_DATA_DIR")
    assert data_home() == Path.home() / ".cache" / "genrec" / "data"
    monkeypatch.setenv("GENREC_DATA_DIR", "~/genrec-test-data")
    assert data_home() == Path.home() / "genrec-test-data"


def test_registry_and_get_builtin():
    assert {"movielens-1m", "movielens-100k", "amazon-beauty", "microlens-50k"} <= set(REGISTRY)
    assert get_builtin("movielens-1m") is REGISTRY["movielens-1m"]
    with pytest.raises(UnknownDatasetError, match="'nope'.*movielens-1m") as e:
        get_builtin("nope")
    assert isinstance(e.value, GenrecError)
    for ds in REGISTRY.values():
        assert ds.files and all(f.url.startswith("https://") for f in ds.files)
        assert all(f.sha256 is None or len(f.sha256) == 64 for f in ds.files)


# --- download ------------------------------------------------------------------------------------------

def test_download_with_good_checksum(home, source):
    ds = fake((RemoteFile("data/seq.txt", source.as_uri(), sha(PAYLOAD)),))
    assert not ds.available()
    messages: list[str] = []
    root = download(ds, progress=messages.append)
    assert root == home / "fake-folder"
    assert (root / "data/seq.txt").read_bytes() == PAYLOAD
    assert leftovers(root) == ["data", "seq.txt"]  # no .part file
    assert messages == [f"downloading {source.as_uri()}"]
    assert ds.available()
    assert verify(ds) == {"data/seq.txt": "ok"}
    loaded = ds.load()
    assert (loaded.n_users, loaded.n_items, loaded.n_interactions) == (3, 3, 7)
    # present files are not fetched again, even if the source is gone
    source.unlink()
    messages.clear()
    download(ds, progress=messages.append)
    assert messages == []


def test_download_with_wrong_checksum_leaves_nothing(home, source):
    ds = fake((RemoteFile("data/seq.txt", source.as_uri(), sha(b"something else")),))
    with pytest.raises(DataError, match="checksum mismatch") as e:
        download(ds, progress=lambda _: None)
    assert source.as_uri() in str(e.value)
    assert not (home / "fake-folder/data/seq.txt").exists()
    assert not [n for n in leftovers(home) if n.endswith(".part")]
    assert leftovers(home / "fake-folder") == ["data"]


def test_download_failure(home, tmp_path, source):
    gone = (tmp_path / "remote" / "gone.txt").as_uri()
    with pytest.raises(DataError, match="download failed") as e:
        download(fake((RemoteFile("data/seq.txt", gone, None),)), progress=lambda _: None)
    assert gone in str(e.value)
    assert not [n for n in leftovers(home) if n.endswith(".part")]
    # an optional file that cannot be fetched is skipped; the required ones still land
    ds = fake((RemoteFile("data/seq.txt", source.as_uri(), sha(PAYLOAD)),
               RemoteFile("data/extra.txt", gone, None, required=False)))
    download(ds, progress=lambda _: None)
    assert leftovers(home / "fake-folder") == ["data", "seq.txt"]
    assert ds.available()
    assert verify(ds) == {"data/seq.txt": "ok", "data/extra.txt": "missing"}


def test_download_unpinned_file_is_kept(home, source):
    ds = fake((RemoteFile("data/seq.txt", source.as_uri(), None),))
    download(ds, progress=lambda _: None)
    assert verify(ds) == {"data/seq.txt": "unpinned"}


def test_verify_statuses(home):
    root = home / "fake-folder"
    (root / "data").mkdir(parents=True)
    (root / "data/a.txt").write_bytes(b"A")
    (root / "data/b.txt").write_bytes(b"B")
    ds = fake((RemoteFile("data/a.txt", "file:///x", sha(b"A")), RemoteFile("data/b.txt", "file:///x", sha(b"A")),
               RemoteFile("data/c.txt", "file:///x", sha(b"C"))))
    assert verify(ds) == {"data/a.txt": "ok", "data/b.txt": "MISMATCH", "data/c.txt": "missing"}
    assert sha256_file(root / "data/a.txt") == sha(b"A")


def test_load_missing_required_file_mentions_data_dir(home):
    ds = fake((RemoteFile("data/seq.txt", "file:///x", None), RemoteFile("opt.txt", "file:///x", None, False)))
    with pytest.raises(DataError) as e:
        ds.load()
    msg = str(e.value)
    assert "GENREC_DATA_DIR" in msg and "data/seq.txt" in msg and "genrec data download fake" in msg
    assert "opt.txt" not in msg
    assert str(home / "fake-folder") in msg


def test_load_dataset_builtin_missing(home):
    with pytest.raises(DataError, match="GENREC_DATA_DIR"):
        load_dataset("movielens-1m")


# --- readers of the built-in layouts, on tiny generated copies -----------------------------------------

def put(root: Path, rel: str, text: str, encoding: str = "utf-8") -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)


def test_movielens_1m_layout(home):
    root = home / "movielens-1m"
    put(root, "derived/ml-1m_sas_reconstructed.txt", "1 1\n1 2\n2 2\n2 3\n1 3\n")
    ds = load_dataset("movielens-1m")  # without the optional files: SASRec ids, no titles
    assert ds.users.raw.to_pylist() == [1, 2] and ds.items.raw.to_pylist() == [1, 2, 3]
    assert ds.sequences.to_lists() == [[1, 2, 3], [2, 3]] and ds.item_titles() is None
    put(root, "sas_mapping/sas_to_original_users.txt", "1 501\n2 502\n")
    put(root, "sas_mapping/sas_to_original_items.txt", "1 1198\n2 7\n3 42\n")
    put(root, "raw_bigdataguide/movies.dat",
        "7::Sabrina (1995)::Comedy|Romance\n1198::Raiders of the Lost Ark (1981)::Action\n"
        "42::Caf\u00e9 (1990)::Drama\n99::Unused (1999)::Drama\n", encoding="latin-1")
    ds = load_dataset("movielens-1m")
    assert ds.users.raw.to_pylist() == [501, 502] and ds.items.raw.to_pylist() == [1198, 7, 42]
    assert ds.item_titles() == ["", "Raiders of the Lost Ark (1981)", "Sabrina (1995)", "Caf\u00e9 (1990)"]
    assert ds.item_table.column("genres").to_pylist()[0] == "Comedy|Romance"
    assert ds.meta["source"] == "movielens-1m"


def test_movielens_100k_layout(home):
    root = home / "movielens-100k"
    put(root, "u.data", "196 242 3\t881250949\n186\t302\t3\t891717742\n196\t302\t5\t881250000\n")
    flags = ["0"] * 19
    flags[1] = flags[8] = "1"
    put(root, "u.item", "".join(f"{i}|Movie {i}|01-Jan-1995||http://x|{'|'.join(flags)}\n" for i in (242, 302)),
        encoding="latin-1")
    ds = load_dataset("movielens-100k")
    assert ds.users.raw.to_pylist() == [196, 186]
    assert ds.sequences.to_lists() == [[2, 1], [2]]  # user 196: item 302 (t=881250000) before 242
    assert ds.timestamps.to_lists() == [[881250000, 881250949], [891717742]]
    assert ds.values.tolist() == [5.0, 3.0, 3.0]
    assert ds.item_titles() == ["", "Movie 242", "Movie 302"]
    assert ds.item_table.column("genres").to_pylist() == ["Action|Drama", "Action|Drama"]


def test_amazon_layout(home):
    root = home / "amazon-beauty-2014"
    put(root, "s3rec/Beauty.txt", "1 1 2 3\n2 2 3\n")
    ds = load_dataset("amazon-beauty")
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (2, 3, 5) and ds.item_titles() is None
    put(root, "derived/beauty_items.tsv",
        "item_id\tasin\ttitle\ts3rec_attribute_ids\n1\tB01\tLipstick \"red\"\t1 2\n2\tB02\t123\t\n3\tB03\tSoap\t4\n")
    ds = load_dataset("amazon-beauty")
    assert ds.item_titles() == ["", 'Lipstick "red"', "123", "Soap"]
    assert ds.item_table.column_names == ["item", "asin", "title", "attributes", "item_idx"]


def test_microlens_layout(home):
    root = home / "microlens-50k"
    put(root, "MicroLens-50k_pairs.tsv", "1\t10 20 30\n2\t20 40\n")
    put(root, "MicroLens-50k_titles.csv", 'item,title\n10,"ten, with a comma"\n20,twenty\n30,thirty\n40,forty\n')
    ds = load_dataset("microlens-50k")
    assert ds.sequences.to_lists() == [[1, 2, 3], [2, 4]]
    assert ds.item_titles() == ["", "ten, with a comma", "twenty", "thirty", "forty"]


def test_builtin_with_dedup_and_kcore(home):
    put(home / "microlens-50k", "MicroLens-50k_pairs.tsv", "1\t10 20 10 30\n2\t20 10\n3\t10 20\n4\t30\n")
    ds = load_dataset("microlens-50k")
    assert ds.n_interactions == 9
    dd = load_dataset("microlens-50k", dedup=True)
    assert dd.sequences.to_lists() == [[1, 2, 3], [2, 1], [1, 2], [3]] and dd.meta["dedup"] is True
    kc = load_dataset("microlens-50k", kcore=2)
    assert kc.users.raw.to_pylist() == [1, 2, 3] and kc.items.raw.to_pylist() == [10, 20]
    assert min(kc.sequences.lengths) >= 2
    assert kc.meta["source"] == "microlens-50k" and kc.meta["kcore"] == 2


def test_reprepare_keeps_timestamps_and_catalog(home):
    root = home / "movielens-100k"
    put(root, "u.data", "1\t10\t3\t5\n1\t10\t4\t3\n2\t11\t5\t1\n")
    put(root, "u.item", "".join(f"{i}|T{i}|d||u|{'|'.join(['0'] * 19)}\n" for i in (10, 11)), encoding="latin-1")
    ds = load_dataset("movielens-100k", dedup=True)
    assert ds.timestamps.to_lists() == [[3], [1]]
    assert ds.values.tolist() == [4.0, 5.0]  # ratings follow their rows
    assert ds.item_titles() == ["", "T10", "T11"]
