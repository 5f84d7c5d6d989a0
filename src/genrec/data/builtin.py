"""Built-in public datasets: where their files come from, how to check them, how to read them.

Files are looked up under ``GENREC_DATA_DIR`` (then ``~/.cache/genrec/data``) in the layouts described by
each dataset's SOURCE.md; ``genrec data download NAME`` fetches them from their pinned public sources and
verifies each checksum. The licences of these datasets forbid redistribution, so genrec ships none of them.
"""

from __future__ import annotations

import csv
import os
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from genrec.data.dataset import SequenceDataset, prepare
from genrec.data.readers import read_sequences
from genrec.errors import DataError, UnknownDatasetError
from genrec.io import sha256_file

GH = "https://raw.githubusercontent.com"


@dataclass(frozen=True)
class RemoteFile:
    path: str  # relative to the dataset folder
    url: str
    sha256: str | None  # None: no verified copy was available to pin a checksum
    required: bool = True


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    folder: str
    description: str
    licence: str
    files: tuple[RemoteFile, ...]
    reader: Callable[[Path], tuple[pa.Table, pa.Table | None]]
    expected: dict[str, int] = field(default_factory=dict)  # users / items / interactions of the copy

    def root(self) -> Path:
        return data_home() / self.folder

    def available(self) -> bool:
        return all((self.root() / f.path).is_file() for f in self.files if f.required)

    def load(self) -> SequenceDataset:
        root = self.root()
        missing = [f.path for f in self.files if f.required and not (root / f.path).is_file()]
        if missing:
            raise DataError(
                f"dataset '{self.name}' is not on this machine (missing {', '.join(missing)}); set GENREC_DATA_DIR "
                f"to a folder holding '{self.folder}/' or run 'genrec data download {self.name}'", path=root)
        interactions, items = self.reader(root)
        return prepare(interactions, name=self.name, items=items, meta={"source": self.name, "root": str(root)})


def data_home() -> Path:
    env = os.environ.get("GENREC_DATA_DIR", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "genrec" / "data"


def verify(ds: BuiltinDataset) -> dict[str, str]:
    """Checksum status of each file: 'ok', 'missing', 'MISMATCH' or 'unpinned'."""
    out = {}
    for f in ds.files:
        p = ds.root() / f.path
        if not p.is_file():
            out[f.path] = "missing"
        elif f.sha256 is None:
            out[f.path] = "unpinned"
        else:
            out[f.path] = "ok" if sha256_file(p) == f.sha256 else "MISMATCH"
    return out


def download(ds: BuiltinDataset, progress: Callable[[str], None] = print) -> Path:
    """Fetch every missing file of ``ds`` into :func:`data_home`, verifying its checksum before keeping it."""
    for f in ds.files:
        target = ds.root() / f.path
        if target.is_file():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        progress(f"downloading {f.url}")
        try:
            with urllib.request.urlopen(f.url, timeout=60) as r, open(tmp, "wb") as out:
                while block := r.read(1 << 20):
                    out.write(block)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if f.required:
                raise DataError(f"download failed ({e})", path=f.url) from None
            continue
        if f.sha256 is not None and sha256_file(tmp) != f.sha256:
            tmp.unlink()
            raise DataError(f"checksum mismatch (expected sha256 {f.sha256})", path=f.url)
        os.replace(tmp, target)
    return ds.root()


# --- readers, one per layout -------------------------------------------------------------------------

def _movielens_titles(path: Path, sep: str, genre_col: int | None) -> pa.Table:
    ids, titles, genres = [], [], []
    with open(path, encoding="latin-1") as f:
        for line in f:
            parts = line.rstrip("\n").split(sep)
            if len(parts) < 2:
                continue
            ids.append(int(parts[0]))
            titles.append(parts[1])
            genres.append(parts[genre_col] if genre_col is not None else "")
    return pa.table({"item": pa.array(ids, pa.int64()), "title": titles, "genres": genres})


def _read_movielens_1m(root: Path) -> tuple[pa.Table, pa.Table | None]:
    # SASRec's ml-1m.txt ("user item" lines, chronological), mapped back to the original MovieLens ids.
    pairs = np.loadtxt(root / "derived/ml-1m_sas_reconstructed.txt", dtype=np.int64, ndmin=2)
    users, items = pairs[:, 0], pairs[:, 1]
    mapping = root / "sas_mapping"
    if (mapping / "sas_to_original_items.txt").is_file() and (mapping / "sas_to_original_users.txt").is_file():
        users = _lookup(np.loadtxt(mapping / "sas_to_original_users.txt", dtype=np.int64, ndmin=2), users)
        items = _lookup(np.loadtxt(mapping / "sas_to_original_items.txt", dtype=np.int64, ndmin=2), items)
    inter = pa.table({"user": users, "item": items})
    movies = root / "raw_bigdataguide/movies.dat"
    return inter, _movielens_titles(movies, "::", 2) if movies.is_file() else None


def _lookup(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    full = np.zeros(int(max(table[:, 0].max(), ids.max())) + 1, dtype=np.int64)
    full[table[:, 0]] = table[:, 1]
    return full[ids]


def _read_movielens_100k(root: Path) -> tuple[pa.Table, pa.Table | None]:
    # u.data is tab separated; the offline copy's first line uses spaces, so split on any whitespace.
    raw = np.loadtxt(root / "u.data", dtype=np.int64)
    inter = pa.table({"user": raw[:, 0], "item": raw[:, 1], "value": raw[:, 2].astype(np.float64),
                      "timestamp": raw[:, 3]})
    ids, titles, genres = [], [], []
    names = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
             "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]
    with open(root / "u.item", encoding="latin-1") as f:
        for line in f:
            parts = line.rstrip("\n").split("|")
            if len(parts) < 24:
                continue
            ids.append(int(parts[0]))
            titles.append(parts[1])
            genres.append("|".join(n for n, flag in zip(names, parts[5:24], strict=True) if flag == "1"))
    return inter, pa.table({"item": pa.array(ids, pa.int64()), "title": titles, "genres": genres})


def _s3rec_reader(seq_file: str) -> Callable[[Path], tuple[pa.Table, pa.Table | None]]:
    def read(root: Path) -> tuple[pa.Table, pa.Table | None]:
        inter = read_sequences(root / seq_file)
        items = root / "derived/beauty_items.tsv"
        if not items.is_file():
            return inter, None
        table = pacsv.read_csv(items, parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
                               convert_options=pacsv.ConvertOptions(column_types={"s3rec_attribute_ids": pa.string(),
                                                                                  "title": pa.string()}))
        table = table.rename_columns(["item", "asin", "title", "attributes"])
        return inter, table
    return read


def _read_microlens(root: Path) -> tuple[pa.Table, pa.Table | None]:
    inter = read_sequences(root / "MicroLens-50k_pairs.tsv")
    titles = root / "MicroLens-50k_titles.csv"
    if not titles.is_file():
        return inter, None
    ids, names = [], []
    with open(titles, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            ids.append(int(row["item"]))
            names.append(row["title"])
    return inter, pa.table({"item": pa.array(ids, pa.int64()), "title": names})


def _read_kuairand_clicks(root: Path) -> tuple[pa.Table, pa.Table | None]:
    """KuaiRand-Pure's clicked impressions as interactions (user, video, time in unix ms), read through the
    impression log (``genrec.data.impressions``, same files, same cache), so raw ids are the log's own:
    a model trained on this view maps onto the ranker's impression log by raw video id. Fully identical
    (user, video, time) click rows, duplicated in the published log, count once."""
    from genrec.data.impression_readers import load_impressions  # imports this module: import it only when needed

    log = load_impressions("kuairand-pure", root)
    rows = np.flatnonzero(log.labels["click"] > 0)
    key = np.stack([log.user[rows], log.item[rows], log.time[rows]], axis=1)
    # rows are sorted by (user, time): identical rows are neighbours after sorting by item within equal times
    order = np.lexsort((log.item[rows], log.time[rows], log.user[rows]))
    same = np.zeros(len(rows), dtype=bool)
    same[1:] = (np.diff(key[order], axis=0) == 0).all(axis=1)
    rows = np.sort(rows[order[~same]])
    raw_users = np.asarray(log.users.raw.to_numpy(zero_copy_only=False))
    raw_items = np.asarray(log.items.raw.to_numpy(zero_copy_only=False))
    inter = pa.table({"user": raw_users[log.user[rows] - 1], "item": raw_items[log.item[rows] - 1],
                      "timestamp": log.time[rows]})
    return inter, None


@dataclass(frozen=True)
class _KuaiRandView(BuiltinDataset):
    """A sequence view of the KuaiRand-Pure impression log: its files sit in one of two layouts directly under
    the data dir (see genrec.data.impression_readers), so availability is that of either layout."""

    def root(self) -> Path:
        return data_home()

    def available(self) -> bool:
        from genrec.data.impression_readers import _kuairand_files

        return _kuairand_files(data_home()) is not None


def _amazon(category: str, file_stem: str, sha: str | None, expected: dict[str, int]) -> BuiltinDataset:
    s3rec = f"{GH}/RUCAIBox/CIKM2020-S3Rec/2a81540ae18615d88ef88227b0c066e5b74781e5/data"
    return BuiltinDataset(
        name=f"amazon-{category}", folder=f"amazon-{category}-2014",
        description=f"Amazon 2014 5-core '{file_stem}' reviews as chronological sequences (S3Rec/TIGER form)",
        licence="research only (J. McAuley, UCSD); do not redistribute",
        files=(RemoteFile(f"s3rec/{file_stem}.txt", f"{s3rec}/{file_stem}.txt", sha),),
        reader=_s3rec_reader(f"s3rec/{file_stem}.txt"), expected=expected)


_SASMAP = f"{GH}/asash/ml1m-sas-mapping/56013fb1def17a503613b5b914c2809ed18f607c"
_ML100K = f"{GH}/adn53/Spark-with-Python/6850178849dcdc1d010ca36418fc9cf3a778556f/ml-100k"
REGISTRY: dict[str, BuiltinDataset] = {d.name: d for d in [
    BuiltinDataset(
        name="movielens-1m", folder="movielens-1m",
        description="MovieLens-1M in SASRec's form (items with >= 5 ratings, chronological), original ids, titles",
        licence="GroupLens: research use, no redistribution without permission",
        files=(
            RemoteFile("derived/ml-1m_sas_reconstructed.txt", f"{GH}/kang205/SASRec/master/data/ml-1m.txt",
                       "b725f3acb3986fe3130bffd1e77a74d182a1f51799567a236dbd60270f95b0a2"),
            RemoteFile("sas_mapping/sas_to_original_items.txt", f"{_SASMAP}/sas_to_original_items.txt",
                       "9ae42c23af0b0fe2f189b9d5acc6cf3936bffe1a9568390cf5d100c0c1b1fca1", required=False),
            RemoteFile("sas_mapping/sas_to_original_users.txt", f"{_SASMAP}/sas_to_original_users.txt",
                       "121893a66ab13fad83a67e12e3b3e6ddc56bcd01f0bcedf2ccb10bd8405e6239", required=False),
            RemoteFile("raw_bigdataguide/movies.dat", f"{GH}/bigdataguide/AuraSparkTraining/"
                       "03ebfaf1fdd7a0abd40578aa2ab72bcac51f18db/data/ml-1m/movies.dat",
                       "0140fc2356357c1a851d0f52e893a1e4d3696df632c4141cea8d5bc3d621f0b9", required=False),
        ),
        reader=_read_movielens_1m, expected={"users": 6040, "items": 3416, "interactions": 999611}),
    BuiltinDataset(
        name="movielens-100k", folder="movielens-100k",
        description="MovieLens-100K ratings with timestamps, titles and genres",
        licence="GroupLens: research use, no redistribution without permission",
        files=(RemoteFile("u.data", f"{_ML100K}/u.data",
                          "df3b7a707b24a5dd4fdd0607d35468f7f843d6852eb8cf76edc31d26a05d0587"),
               RemoteFile("u.item", f"{_ML100K}/u.item",
                          "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701")),
        reader=_read_movielens_100k, expected={"users": 943, "items": 1682, "interactions": 100000}),
    _amazon("beauty", "Beauty", "226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8",
            {"users": 22363, "items": 12101, "interactions": 198502}),
    _amazon("sports", "Sports_and_Outdoors", None, {}),
    _amazon("toys", "Toys_and_Games", None, {}),
    BuiltinDataset(
        name="microlens-50k", folder="microlens-50k",
        description="MicroLens-50K micro-video interactions (chronological) with English titles",
        licence="MicroLens terms: no modified re-hosting; cite the paper",
        files=(
            RemoteFile("MicroLens-50k_pairs.tsv", f"{GH}/YuyangYe/MLLM-MSR/bb270c6faa689b96719f8dfcbb75d764ca0215fa/"
                       "MLLM-MSR/data/microlens/MicroLens-50k_pairs.tsv",
                       "46be22f478aa891b9c2a4b357c1df2ac2478793a99d58d07336e6277b6bf426d"),
            RemoteFile("MicroLens-50k_titles.csv", f"{GH}/YuyangYe/MLLM-MSR/bb270c6faa689b96719f8dfcbb75d764ca0215fa/"
                       "MLLM-MSR/data/microlens/MicroLens-50k_titles.csv",
                       "244aad5380cbbe0fb43458cfcda5ebe820f534384602f80a64dbbcd07dd30e49", required=False),
        ),
        reader=_read_microlens, expected={"users": 50000, "items": 19220, "interactions": 359708}),
    _KuaiRandView(
        name="kuairand-pure-clicks", folder="",
        description="KuaiRand-Pure clicked feed impressions as chronological sequences (unix-ms timestamps; raw "
                    "video ids of the kuairand-pure impression log)",
        licence="CC BY-SA 4.0 (KuaiRand, Gao et al. 2022)",
        # The official tarball unpacks to KuaiRand-Pure/data/ under the data dir; download fetches it, unpacking
        # is left to the user. The offline window copy (kuairand-pure-window/) is read as well.
        files=(RemoteFile("KuaiRand-Pure.tar.gz", "https://zenodo.org/records/10439422/files/KuaiRand-Pure.tar.gz",
                          None, required=False),),
        reader=_read_kuairand_clicks),
]}


def get_builtin(name: str) -> BuiltinDataset:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownDatasetError(
            f"unknown dataset '{name}'; built-in datasets are {', '.join(REGISTRY)} (or give a path to a file)"
        ) from None


