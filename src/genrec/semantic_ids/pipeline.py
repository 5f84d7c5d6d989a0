"""``tokenize``: an item embedding table in, semantic IDs, a saved tokenizer and a quality report out.

Default places: embeddings in ``runs/content/<dataset>/`` (what ``genrec content encode`` writes), semantic IDs
in ``runs/semantic_ids/<dataset>/<method>/``. The output folder holds ``semantic_ids.safetensors`` and
``semantic_ids.json`` (read by the generator and by ID models' semantic-ID features), ``tokenizer.json`` and
``tokenizer.safetensors`` (encode new items without retraining) and ``report.json``. ``extend_ids`` gives new
items IDs next to those of such a folder with its saved tokenizer, into a new folder (``genrec tokenize-new``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from genrec.content.store import FILES as EMBEDDING_FILES
from genrec.content.store import ItemEmbeddings
from genrec.errors import ConfigError, DataError
from genrec.io import write_json, write_parquet
from genrec.progress import progress_bar
from genrec.semantic_ids.codes import SemanticIds
from genrec.semantic_ids.collaborative import collaborative_vectors, read_id_model
from genrec.semantic_ids.report import code_report, grouping_report, reconstruction_report
from genrec.semantic_ids.rqkmeans import residual_encode
from genrec.semantic_ids.tokenizer import FILES as TOKENIZER_FILES
from genrec.semantic_ids.tokenizer import Tokenizer, TokenizerConfig

CONTENT_ROOT = Path("runs/content")
SEMANTIC_IDS_ROOT = Path("runs/semantic_ids")


def items_digest(item_ids: list[Any]) -> str:
    """A fingerprint of the dense-id -> raw-id mapping, so IDs are never attached to another catalog."""
    return hashlib.sha256("\n".join(str(i) for i in item_ids).encode("utf-8")).hexdigest()


def default_embeddings_dir(dataset: str) -> Path:
    return CONTENT_ROOT / dataset


def default_out_dir(dataset: str, method: str) -> Path:
    return SEMANTIC_IDS_ROOT / dataset / method


def resolve_embeddings(source: str | Path | ItemEmbeddings) -> tuple[ItemEmbeddings, str, Path | None]:
    """An embedding table, its dataset name and its folder, from a table, a folder or a dataset name."""
    if isinstance(source, ItemEmbeddings):
        return source, str(source.meta.get("dataset", "items")), None
    path = Path(source)
    if not (path / EMBEDDING_FILES[0]).is_file():
        default = default_embeddings_dir(str(source))
        if "/" in str(source) or not (default / EMBEDDING_FILES[0]).is_file():
            raise DataError(f"no item embedding table for {str(source)!r} (looked in {path} and {default}); write "
                            f"one with 'genrec content encode --dataset NAME --out {default}' or pass --embeddings DIR")
        path = default
    emb = ItemEmbeddings.load(path)
    return emb, str(emb.meta.get("dataset", source)), path


def missing_rows(emb: ItemEmbeddings) -> np.ndarray:
    """Dense ids with no usable content: listed as missing, or an all-zero row."""
    zero = np.flatnonzero(~np.any(emb.vectors[1:] != 0, axis=1)) + 1
    listed = emb.missing[(emb.missing >= 1) & (emb.missing <= emb.n_items)]
    return np.union1d(listed, zero).astype(np.int64)


def tokenize(source: str | Path | ItemEmbeddings, method: str | None = None, levels: int | None = None,
             codebook_size: int | None = None, seed: int | None = None, out: str | Path | None = None,
             config: TokenizerConfig | None = None, show_progress: bool = False
             ) -> tuple[SemanticIds, dict[str, Any]]:
    """Fit a tokenizer on an item embedding table and give every item a unique semantic ID.

    ``source``: an :class:`ItemEmbeddings`, its folder, or a dataset name (read from ``runs/content/NAME``).
    ``config`` (default :class:`TokenizerConfig`: RQ-KMeans, 3 levels x 256 codes) is overridden by the
    ``method``, ``levels``, ``codebook_size`` and ``seed`` given.
    Items without content are encoded as the mean content vector (they still need an ID) and counted in the
    report. With ``out``, writes the IDs, the tokenizer and ``report.json`` there.
    """
    emb, dataset, emb_dir = resolve_embeddings(source)
    if emb.n_items < 2:
        raise DataError(f"{emb_dir or 'embedding table'}: needs at least 2 items, has {emb.n_items}")
    given = {"method": method, "levels": levels, "codebook_size": codebook_size, "seed": seed}
    tok = Tokenizer(config, **{k: v for k, v in given.items() if v is not None})
    missing = missing_rows(emb)
    has = np.setdiff1d(np.arange(1, emb.n_items + 1), missing)
    if len(has) < 2:
        raise DataError(f"{emb_dir or 'embedding table'}: fewer than 2 items have content vectors")
    vectors = emb.vectors.copy()
    if len(missing):
        vectors[missing] = vectors[has].mean(0)
    collab = None
    if tok.config.collaborative is not None:  # fused vectors; items without content keep the mean content
        vectors, collab = _collaborative(tok, emb, vectors, missing)
    t0 = time.perf_counter()
    with progress_bar(tok.fit_steps(), f"{tok.config.method}", enabled=show_progress) as advance:
        tok.fit(vectors[has], progress=advance)
    fit_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    meta = {"dataset": dataset, "n_items": emb.n_items, "items_sha256": items_digest(emb.item_ids),
            "embeddings": str(emb_dir) if emb_dir else None, "missing": [int(i) for i in missing],
            "encoders": {k: v for k, v in emb.meta.items() if k.endswith("model")}}
    if collab is not None:
        meta["collaborative"] = collab
    ids = tok.tokenize(vectors, meta=meta)
    encode_seconds = time.perf_counter() - t0
    report = quality_report(tok, vectors[has], ids.codes[has])
    if collab is not None:
        report["collaborative"] = collab
    report.update(dataset=dataset, method=tok.config.method, levels=tok.config.levels,
                  codebook_size=tok.config.codebook_size, sizes=list(ids.sizes), unique=ids.is_unique(),
                  missing_items=len(missing), fit_seconds=fit_seconds, encode_seconds=encode_seconds,
                  config=tok.config.model_dump(mode="json"))
    if hasattr(tok.quantizer, "history") and tok.quantizer.history:
        report["training"] = tok.quantizer.history[-1]
    if out is not None:
        out = Path(out)
        ids.meta["tokenizer"] = "."  # the tokenizer files lie next to the IDs
        ids.save(out)
        tok.save(out)
        write_json(out / "report.json", report)
    return ids, report


def _collaborative(tok: Tokenizer, emb: ItemEmbeddings, vectors: np.ndarray, missing: np.ndarray
                   ) -> tuple[np.ndarray, dict[str, Any]]:
    """Content fused with the ID model's item embeddings (see :mod:`genrec.semantic_ids.collaborative`); sets the
    tokenizer's content map, so new items get IDs from their content later."""
    cfg = tok.config.collaborative
    table, counts = read_id_model(cfg.id_model)
    if len(table) != emb.n_items + 1:
        raise DataError(f"the ID model in {cfg.id_model} has {len(table) - 1:,} items, the embedding table "
                        f"{emb.n_items:,}; train it on the same dataset")
    has_content = np.ones(len(vectors), bool)
    has_content[missing] = False
    fused, w, summary = collaborative_vectors(vectors, table, counts, cfg, has_content)
    tok.content_map = torch.from_numpy(w)
    return fused, {**summary, "id_model": str(cfg.id_model), "weight": cfg.weight, "ridge": cfg.ridge,
                   "min_count": cfg.min_count}


@torch.no_grad()
def quality_report(tok: Tokenizer, vectors: np.ndarray, codes: np.ndarray, sample: int = 2000) -> dict[str, Any]:
    """The report of :mod:`genrec.semantic_ids.report` for items ``vectors`` [n, dim] and their full IDs
    ``codes`` [n, levels + 1] (rows without padding)."""
    levels = tok.config.levels
    x = tok.preprocess(vectors)
    latent = tok.quantizer.latent(x)
    _, residuals = residual_encode(latent, tok.quantizer.codebooks)
    return {"codes": code_report(codes[:, :levels], tok.config.codebook_size),
            "reconstruction": reconstruction_report(x, tok.reconstruct(codes), residuals, latent),
            "grouping": grouping_report(vectors, codes[:, :levels], sample=sample, seed=tok.config.seed)}


# --- new items without retraining -------------------------------------------------------------------------

ITEMS_FILE = "items.parquet"  # raw ids of extended semantic IDs: columns item_idx and item, as in an embedding folder
IDS_FILES = ("semantic_ids.json", "semantic_ids.safetensors")


def default_extended_dir(ids_dir: str | Path) -> Path:
    """Where :func:`extend_ids` writes by default: the IDs' folder name plus ``-extended``, next to it."""
    ids_dir = Path(ids_dir)
    if ids_dir.name in ("", ".", ".."):
        ids_dir = ids_dir.resolve()
    if not ids_dir.name:
        raise ConfigError(f"cannot name a folder next to {ids_dir}; give --out DIR")
    return ids_dir.with_name(f"{ids_dir.name}-extended")


def _read_item_ids(path: Path) -> list[str]:
    items = pq.read_table(path, columns=["item_idx", "item"])
    order = np.argsort(items.column("item_idx").to_numpy(), kind="stable")
    raw = items.column("item").to_pylist()
    return [str(raw[i]) for i in order]


def catalog_item_ids(ids_dir: str | Path, ids: SemanticIds, base_embeddings: str | Path | None = None) -> list[str]:
    """The raw ids, in dense-id order, of the items the semantic IDs in ``ids_dir`` belong to.

    Read from ``base_embeddings`` (an embedding folder) if given, else from ``items.parquet`` next to the IDs
    (written by :func:`extend_ids`), else from the embedding folder ``genrec tokenize`` recorded; checked
    against the IDs' item count and ``items_sha256``.
    """
    ids_dir = Path(ids_dir)
    if base_embeddings is not None:
        where = Path(base_embeddings)
        if not (where / EMBEDDING_FILES[1]).is_file():
            raise DataError(f"not an embedding folder (missing {EMBEDDING_FILES[1]}); give the folder "
                            f"'genrec content encode' wrote for the catalog of {ids_dir}", path=where)
        source = where / EMBEDDING_FILES[1]
    elif (ids_dir / ITEMS_FILE).is_file():
        where = source = ids_dir / ITEMS_FILE
    else:
        recorded = ids.meta.get("embeddings")
        if not recorded:
            raise DataError("cannot tell which raw item ids its semantic IDs belong to: it does not record the "
                            "embedding folder it was made from; pass that folder with --base-embeddings DIR",
                            path=ids_dir)
        where = Path(recorded)
        source = where / EMBEDDING_FILES[1]
        if not source.is_file():
            raise DataError(f"cannot tell which raw item ids its semantic IDs belong to: the embedding folder it "
                            f"was made from ({where}) is not there (from this working folder); pass it with "
                            "--base-embeddings DIR", path=ids_dir)
    known = _read_item_ids(source)
    if len(known) != ids.n_items:
        raise DataError(f"lists {len(known):,} items, but {ids_dir} holds semantic IDs for {ids.n_items:,}",
                        path=where)
    digest = ids.meta.get("items_sha256")
    if digest is not None and digest != items_digest(known):
        raise DataError(f"its items are not the catalog the semantic IDs in {ids_dir} were made for "
                        "(items_sha256 differs)", path=where)
    return known


def _check_out(out: Path, ids_dir: Path) -> None:
    if out.resolve() == ids_dir.resolve():
        raise ConfigError(f"--out {out} is the folder of the semantic IDs being extended; write the extended IDs "
                          "to another folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} already exists and is not an empty folder; remove it or choose another "
                          "folder")


def _write_extended(out: Path, ids: SemanticIds, tok_dir: Path, item_ids: list[str], report: dict[str, Any]) -> None:
    """Write everything into a temporary sibling folder, then move it onto ``out`` (never half a folder)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        ids.save(tmp)
        for name in TOKENIZER_FILES:
            shutil.copy2(tok_dir / name, tmp / name)
        write_parquet(tmp / ITEMS_FILE, pa.table({"item_idx": pa.array(np.arange(1, len(item_ids) + 1), pa.int64()),
                                                  "item": pa.array(item_ids, pa.string())}))
        write_json(tmp / "report.json", report)
        if out.is_dir():
            out.rmdir()  # empty: checked before anything was computed
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def extend_ids(ids_dir: str | Path, embeddings: str | Path | ItemEmbeddings, out: str | Path | None = None,
               base_embeddings: str | Path | None = None) -> tuple[SemanticIds, dict[str, Any]]:
    """Give new items semantic IDs with the saved tokenizer of a ``genrec tokenize`` folder; nothing is retrained.

    ``ids_dir``: a folder written by :func:`tokenize` (or by this function). ``embeddings``: the new items'
    embedding table or folder (same encoder(s) as the catalog). Items whose raw id already has an ID are skipped
    and keep it; the others are appended in the table's order as dense ids ``n_items + 1 ...`` with
    :meth:`Tokenizer.extend`, so every existing ID stays as it is. New items without content are encoded as the
    catalog's mean content vector. Writes the extended IDs, a copy of the tokenizer, ``items.parquet`` (all
    raw ids in dense-id order) and ``report.json`` to ``out`` (default :func:`default_extended_dir`), which must
    not be ``ids_dir`` nor a non-empty folder; on any error nothing is written.
    """
    ids_dir = Path(ids_dir)
    if not ids_dir.is_dir():
        raise DataError("no such folder; give a folder written by 'genrec tokenize'", path=ids_dir)
    for name in IDS_FILES:
        if not (ids_dir / name).is_file():
            raise DataError(f"not a 'genrec tokenize' output (missing {name})", path=ids_dir)
    ids = SemanticIds.load(ids_dir)
    tok_dir = ids_dir / str(ids.meta.get("tokenizer") or ".")
    for name in TOKENIZER_FILES:
        if not (tok_dir / name).is_file():
            raise DataError(f"not a 'genrec tokenize' output: no tokenizer next to its semantic IDs (missing "
                            f"{name})", path=ids_dir)
    tok = Tokenizer.load(tok_dir)
    if ids.n_levels != tok.config.levels + 1:
        raise DataError(f"its semantic IDs have {ids.n_levels} columns, but its tokenizer makes "
                        f"{tok.config.levels + 1}", path=ids_dir)
    out = default_extended_dir(ids_dir) if out is None else Path(out)
    _check_out(out, ids_dir)
    if isinstance(embeddings, ItemEmbeddings):
        new, new_dir = embeddings, None
    else:
        new_dir = Path(embeddings)
        if not new_dir.is_dir():
            raise DataError("no such folder; give the new items' embedding folder (from 'genrec content encode "
                            "--catalog FILE')", path=new_dir)
        new = ItemEmbeddings.load(new_dir)
    where = new_dir or "new embedding table"
    content_dim = tok.content_map.shape[0] - 1 if tok.content_map is not None else tok.in_dim
    if new.dim != content_dim:
        raise DataError(f"vectors have {new.dim} dimensions, but the tokenizer in {tok_dir} was fitted on "
                        f"{content_dim}; encode the new items with the catalog's encoder(s)", path=where)
    old_enc = ids.meta.get("encoders") or {}
    new_enc = {k: v for k, v in new.meta.items() if k.endswith("model")}
    if old_enc and new_enc and old_enc != new_enc:
        raise DataError(f"encoded with {new_enc}, but the semantic IDs in {ids_dir} were made from {old_enc}; "
                        "encode the new items with the same model(s)", path=where)
    if new.n_items == 0:
        raise DataError("no new items: the embedding table holds no items", path=where)
    known = catalog_item_ids(ids_dir, ids, base_embeddings)
    index = set(known)
    take, skipped, seen, duplicates = [], [], set(), 0
    for row, raw in enumerate(new.item_ids, 1):
        raw = str(raw)
        if raw in index:
            skipped.append(raw)
        elif raw in seen:
            duplicates += 1
        else:
            seen.add(raw)
            take.append(row)
    if not take:
        raise DataError(f"no new items: all {new.n_items:,} of its items already have semantic IDs in {ids_dir}",
                        path=where)
    rows = np.asarray(take, np.int64)
    vectors = new.vectors[rows].copy()
    if not np.isfinite(vectors).all():
        raise DataError("vectors hold NaN or infinite values", path=where)
    vectors = np.asarray(tok.content_vectors(vectors))  # collaborative IDs: fused with the predicted ID embedding
    no_content = np.isin(rows, missing_rows(new))
    if no_content.any():
        vectors[no_content] = tok.mean.numpy()  # the catalog's mean content, as tokenize does for missing items
    ext = tok.extend(ids, vectors)
    n_old = ids.n_items
    dense = np.arange(n_old + 1, ext.n_items + 1)
    all_ids = known + [str(new.item_ids[r - 1]) for r in take]
    ext.meta.update(n_items=ext.n_items, items_sha256=items_digest(all_ids), items=ITEMS_FILE, tokenizer=".",
                    missing=sorted({*map(int, ids.meta.get("missing", [])), *map(int, dense[no_content])}),
                    extended_from=str(ids_dir), new_embeddings=str(new_dir) if new_dir else None)
    suffix = ext.codes[n_old + 1:, -1]
    report = {"kind": "extension", "ids": str(ids_dir), "embeddings": str(new_dir) if new_dir else None,
              "out": str(out), "dataset": ids.meta.get("dataset"), "method": tok.config.method,
              "n_items_before": n_old, "n_items": ext.n_items, "new_items": len(take),
              "new_dense_ids": [int(dense[0]), int(dense[-1])],
              "new_item_examples": all_ids[n_old:n_old + 5], "skipped_known": len(skipped),
              "skipped_known_examples": skipped[:5], "skipped_duplicates": duplicates,
              "uniqueness_suffix_nonzero": int((suffix > 0).sum()), "uniqueness_size_before": int(ids.sizes[-1]),
              "uniqueness_size": int(ext.sizes[-1]), "sizes": [int(s) for s in ext.sizes],
              "unique": ext.is_unique(), "missing_content": int(no_content.sum())}
    _write_extended(out, ext, tok_dir, all_ids, report)
    return ext, report
