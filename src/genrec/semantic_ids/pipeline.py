"""``tokenize``: an item embedding table in, semantic IDs, a saved tokenizer and a quality report out.

Default places: embeddings in ``runs/content/<dataset>/`` (what ``genrec content encode`` writes), semantic IDs
in ``runs/semantic_ids/<dataset>/<method>/``. The output folder holds ``semantic_ids.safetensors`` and
``semantic_ids.json`` (read by the generator and by ID models' semantic-ID features), ``tokenizer.json`` and
``tokenizer.safetensors`` (encode new items without retraining) and ``report.json``.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genrec.content.store import FILES as EMBEDDING_FILES
from genrec.content.store import ItemEmbeddings
from genrec.errors import DataError
from genrec.io import write_json
from genrec.progress import progress_bar
from genrec.semantic_ids.codes import SemanticIds
from genrec.semantic_ids.report import code_report, grouping_report, reconstruction_report
from genrec.semantic_ids.rqkmeans import residual_encode
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
    t0 = time.perf_counter()
    with progress_bar(tok.fit_steps(), f"{tok.config.method}", enabled=show_progress) as advance:
        tok.fit(emb.vectors[has], progress=advance)
    fit_seconds = time.perf_counter() - t0
    vectors = emb.vectors.copy()
    if len(missing):
        vectors[missing] = vectors[has].mean(0)
    t0 = time.perf_counter()
    meta = {"dataset": dataset, "n_items": emb.n_items, "items_sha256": items_digest(emb.item_ids),
            "embeddings": str(emb_dir) if emb_dir else None, "missing": [int(i) for i in missing],
            "encoders": {k: v for k, v in emb.meta.items() if k.endswith("model")}}
    ids = tok.tokenize(vectors, meta=meta)
    encode_seconds = time.perf_counter() - t0
    report = quality_report(tok, emb.vectors[has], ids.codes[has])
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
