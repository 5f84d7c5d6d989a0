"""Encode a whole catalog: item text, images and/or videos -> one fused, cached embedding per item (an ItemEmbeddings
table).

Fusion (:class:`FusionConfig`): each modality's vectors are L2-normalised and multiplied by the modality's weight,
then concatenated ``[text | image | video]`` (the modalities encoded); optionally projected to ``dim`` dimensions;
finally each row is L2-normalised. Captions of covers or frames, when asked for, are part of the text block.
An item without one modality (no text, no readable image or video) gets zeros in that block; an item without any content
gets a zero row and is listed in ``ItemEmbeddings.missing``.

Projections: ``random`` is a fixed random orthogonal map (seeded, data-independent); ``pca`` is *learned* from
this catalog: the principal axes of the fused vectors of the items that have content (unsupervised, fitted once,
deterministic). The learned map (``mean``, ``components``) is written next to the table as ``projection.safetensors``
so new items can be projected the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from genrec.content.cache import EmbeddingCache, digest
from genrec.content.image import DEFAULT_IMAGE_MODEL, ImageEncoder, image_encoder
from genrec.content.modality import encode_files, encode_modality, examples, image_digest, load_image, media_paths
from genrec.content.store import ItemEmbeddings
from genrec.content.text import DEFAULT_TEXT_MODEL, TextEncoder, build_texts, text_encoder
from genrec.content.video import VideoConfig, VideoEncoder, file_digest, load_video
from genrec.errors import ConfigError, DataError


class FusionConfig(BaseModel):
    """How the modalities become one vector per item."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weights: dict[Literal["text", "image", "video"], float] = Field(
        default_factory=dict, description="Weight of each L2-normalised modality block (default 1.0 each).")
    projection: Literal["none", "random", "pca"] = Field(
        "none", description="none; random (seeded orthogonal); pca (learned on this catalog).")
    dim: int | None = Field(None, gt=0, description="Output dimension of the projection (required with one).")
    normalize: bool = Field(True, description="L2-normalise each fused row.")
    seed: int = Field(0, description="Seed of the random projection.")

    @model_validator(mode="after")
    def _check(self) -> FusionConfig:
        if self.projection != "none" and self.dim is None:
            raise ValueError(f"projection '{self.projection}' needs dim")
        if self.projection == "none" and self.dim is not None:
            raise ValueError("dim is only used with a projection (random or pca)")
        if any(w < 0 for w in self.weights.values()):
            raise ValueError("modality weights must be >= 0")
        return self


def fusion_config(**kwargs: Any) -> FusionConfig:
    """A FusionConfig, or a ConfigError naming the bad field."""
    try:
        return FusionConfig(**kwargs)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "fusion"
        raise ConfigError(f"fusion {loc}: {err['msg']}") from None


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


@dataclass
class Projection:
    """``y = (x - mean) @ components``; ``components`` is [in_dim, out_dim] with orthonormal columns."""

    mean: np.ndarray
    components: np.ndarray

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) @ self.components).astype(np.float32)

    def save(self, path: str | Path) -> None:
        import torch
        from safetensors.torch import save_file

        from genrec.io import atomic_write

        tensors = {"mean": torch.from_numpy(np.ascontiguousarray(self.mean, np.float32)),
                   "components": torch.from_numpy(np.ascontiguousarray(self.components, np.float32))}
        atomic_write(path, lambda tmp: save_file(tensors, tmp))


def fit_projection(x: np.ndarray, config: FusionConfig, present: np.ndarray | None = None) -> Projection | None:
    """The projection of ``config`` for fused vectors ``x`` (rows ``present`` are used to fit pca)."""
    if config.projection == "none":
        return None
    d_in, d_out = x.shape[1], int(config.dim)
    if d_out > d_in:
        raise ConfigError(f"fusion dim {d_out} is larger than the fused vectors ({d_in}); choose dim <= {d_in}")
    if config.projection == "random":
        rng = np.random.default_rng(config.seed)
        q, r = np.linalg.qr(rng.standard_normal((d_in, d_out)))
        q = q * np.sign(np.diag(r))[None, :]  # a unique Q for a given seed
        return Projection(np.zeros(d_in, np.float32), q.astype(np.float32))
    rows = x[present] if present is not None else x
    if rows.shape[0] < 2:
        raise DataError("pca projection needs at least 2 items with content")
    mean = rows.mean(axis=0)
    centred = (rows - mean).astype(np.float64)
    evals, evecs = np.linalg.eigh(centred.T @ centred)
    comps = evecs[:, np.argsort(evals)[::-1][:d_out]]
    signs = np.sign(comps[np.abs(comps).argmax(axis=0), np.arange(d_out)])  # deterministic sign per axis
    return Projection(mean.astype(np.float32), (comps * np.where(signs == 0, 1, signs)).astype(np.float32))


def fuse(blocks: dict[str, np.ndarray], config: FusionConfig | None = None,
         present: np.ndarray | None = None) -> tuple[np.ndarray, Projection | None]:
    """L2-normalise and weight each modality, concatenate, project (optional), normalise rows."""
    config = config or FusionConfig()
    unknown = set(config.weights) - set(blocks)
    if unknown:
        raise ConfigError(f"fusion weights name {', '.join(sorted(unknown))}, which are not encoded here")
    parts = [l2_normalize(v) * np.float32(config.weights.get(name, 1.0)) for name, v in blocks.items()]
    x = np.concatenate(parts, axis=1).astype(np.float32)
    proj = fit_projection(x, config, present)
    if proj is not None:
        x = proj(x)
        if present is not None:
            x[~present] = 0.0
    if config.normalize:
        x = l2_normalize(x)
    return x, proj


# --- the catalog ---------------------------------------------------------------------------------------


@dataclass
class Catalog:
    """Catalog rows aligned with dense item ids: row i is dense item i + 1 (all-null where the item has no row)."""

    name: str
    item_ids: list[str]
    table: pa.Table
    no_row: np.ndarray  # dense ids without a catalog row
    folder: Path | None = None  # where relative image paths are looked up by default
    id_col: str = "item"  # the catalog's item id column (never used as text by default)


def _id_column(table: pa.Table, item_col: str | None, where: object) -> str:
    if item_col is not None:
        if item_col not in table.column_names:
            raise DataError(f"no item id column '{item_col}'; the catalog has {', '.join(table.column_names)}",
                            path=where)
        return item_col
    for name in ("item", "item_id"):
        if name in table.column_names:
            return name
    raise DataError(f"no item id column (item or item_id); the catalog has {', '.join(table.column_names)}; "
                    "name it with --item-col", path=where)


def load_catalog(source: Any = None, catalog: str | Path | pa.Table | None = None,
                 item_col: str | None = None) -> Catalog:
    """Align catalog rows with dense item ids.

    ``source``: a SequenceDataset, a built-in dataset name or a prepared dataset folder (its items define the dense
    ids; its item table is the catalog unless ``catalog`` is given), or None. ``catalog``: a Parquet/CSV/TSV file
    or an Arrow table with an item id column; alone, its rows define the dense ids in order of first appearance.
    """
    from genrec.data import SequenceDataset, load_dataset
    from genrec.data.readers import read_table

    folder = None
    if isinstance(source, str | Path):
        from genrec.data import REGISTRY

        path = Path(source)
        if str(source) not in REGISTRY and path.is_file() and catalog is None:
            source, catalog = None, path  # a catalog file given where a dataset was expected
        elif str(source) not in REGISTRY and not path.exists() and (path.suffix or "/" in str(source)):
            raise DataError("file or folder not found", path=path)
        else:
            source = load_dataset(source)
    if isinstance(catalog, str | Path):
        folder = Path(catalog).parent
        where: object = catalog
        table = read_table(catalog)
    else:
        where, table = "<catalog table>", catalog
    if source is None:
        if table is None:
            raise ConfigError("nothing to encode: give a dataset (--dataset) or a catalog file (--catalog)")
        col = _id_column(table, item_col, where)
        ids = table.column(col).combine_chunks()
        if ids.null_count:
            bad = int(np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError("empty item id", path=where, line=bad + 2 if where != "<catalog table>" else None,
                            column=col)
        if table.num_rows == 0:
            raise DataError("the catalog is empty", path=where)
        str_ids = pc.cast(ids, pa.string()).to_pylist()
        _, first = np.unique(np.array(str_ids, dtype=object), return_index=True)
        first = np.sort(first)
        table = table.take(pa.array(first))
        name = Path(str(catalog)).stem if isinstance(catalog, str | Path) else "catalog"
        return Catalog(name, [str_ids[i] for i in first], table, np.zeros(0, np.int64), folder, col)
    if not isinstance(source, SequenceDataset):
        raise ConfigError(f"cannot encode a {type(source).__name__}: give a dataset, its name or folder")
    item_ids = [str(x) for x in source.items.raw.to_pylist()]
    n = len(item_ids)
    if table is not None:
        col = _id_column(table, item_col, where)
        dense = source.items.encode(table.column(col).combine_chunks())
    elif source.item_table is not None:
        table, col = source.item_table, "item"
        dense = table.column("item_idx").to_numpy()
    else:
        raise DataError(f"dataset '{source.name}' has no item catalog; give one with --catalog FILE")
    pos = np.full(n + 1, -1, dtype=np.int64)
    for row in range(len(dense) - 1, -1, -1):  # first row of each item wins
        if dense[row] > 0:
            pos[dense[row]] = row
    pos = pos[1:]
    aligned = table.take(pa.array(pos, mask=pos < 0))
    return Catalog(source.name, item_ids, aligned, np.flatnonzero(pos < 0) + 1, folder, col)


# --- the public entry point ----------------------------------------------------------------------------


def encode_catalog(
    source: Any = None,
    *,
    catalog: str | Path | pa.Table | None = None,
    item_col: str | None = None,
    text_fields: list[str] | None = None,
    template: str | None = None,
    text_model: str | TextEncoder | None = DEFAULT_TEXT_MODEL,
    image_model: str | ImageEncoder | None = None,
    image_col: str | None = None,
    image_pattern: str | None = None,
    image_root: str | Path | None = None,
    video_col: str | None = None,
    video_pattern: str | None = None,
    video_root: str | Path | None = None,
    video: VideoConfig | None = None,
    caption_model: Any = None,
    fusion: FusionConfig | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    cache: bool = True,
    cache_dir: str | Path | None = None,
    out: str | Path | None = None,
    show_progress: bool = True,
) -> ItemEmbeddings:
    """Encode every item of a dataset or catalog into one vector; write the table to ``out`` if given.

    Text is built from ``text_fields`` by the documented template (see :mod:`genrec.content.text`), or from a
    custom ``template``; ``text_model=None`` turns text off. Images come from the path column ``image_col``, or
    from ``image_pattern`` (e.g. ``"{item}.jpg"``, formatted with the catalog row), relative to ``image_root``
    (default: the catalog file's folder); naming either turns images on with ``image_model`` (default
    EfficientNet-Lite0). Videos come from ``video_col`` / ``video_pattern`` / ``video_root`` alike; their frames,
    sampled by ``video`` (:mod:`genrec.content.video`), go through the same image model and are mean-pooled.
    ``caption_model`` (:mod:`genrec.content.caption`) captions each item's cover (else a frame of its video) and
    the caption joins the item's text. Inputs are encoded in batches of ``batch_size``, only when their sha256 is
    not in the cache of that model (``cache_dir``, default ``$GENREC_CACHE_DIR/embeddings``). Missing fields,
    missing or unreadable files are counted in ``result.meta["report"]`` with examples, never fatal.
    """
    t0 = time.perf_counter()
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    fusion = fusion or FusionConfig()
    want = {kind: col is not None or pattern is not None for kind, col, pattern in
            (("image", image_col, image_pattern), ("video", video_col, video_pattern))}
    for kind, col, pattern, root in (("image", image_col, image_pattern, image_root),
                                     ("video", video_col, video_pattern, video_root)):
        if col is not None and pattern is not None:
            raise ConfigError(f"give either {'an' if kind == 'image' else 'a'} {kind} column or a {kind} pattern, "
                              "not both")
        if root is not None and not Path(root).is_dir():
            raise DataError(f"{kind} folder not found", path=root)
    if image_model is not None and not any(want.values()):
        raise ConfigError(f"image model {image_model if isinstance(image_model, str) else image_model.key!r} given "
                          "but no images: name the image path column (--image-col) or a pattern (--image-pattern)")
    if text_model is None and not any(want.values()):
        raise ConfigError("nothing to encode: text is off (text model 'none') and no images or videos are named")
    if caption_model is not None and (text_model is None or not any(want.values())):
        raise ConfigError("captions join the item text: they need a text model and images or videos to caption")
    spec = image_model if image_model is not None else DEFAULT_IMAGE_MODEL
    enc_i = image_encoder(spec, device=device, batch_size=max(1, min(batch_size, 32))) if any(want.values()) else None
    cat = load_catalog(source, catalog, item_col)
    n = len(cat.item_ids)
    # resolve paths first: a bad pattern fails before any encoding
    paths = {kind: media_paths(cat, col, pattern, Path(root) if root is not None else None, kind)
             for kind, col, pattern, root in (("image", image_col, image_pattern, image_root),
                                              ("video", video_col, video_pattern, video_root)) if want[kind]}
    report: dict[str, Any] = {"items": n, "items_without_catalog_row": int(len(cat.no_row)),
                              "items_without_catalog_row_examples": [cat.item_ids[i - 1] for i in cat.no_row[:5]]}
    if isinstance(source, str | Path):
        src = str(source)
    elif source is not None:
        src = str(getattr(source, "name", type(source).__name__))
    else:
        src = str(catalog) if isinstance(catalog, str | Path) else "<catalog table>"
    meta: dict[str, Any] = {"dataset": cat.name, "source": src}
    if source is not None and catalog is not None:
        meta["catalog"] = str(catalog) if isinstance(catalog, str | Path) else "<catalog table>"
    blocks: dict[str, np.ndarray] = {}
    present = np.zeros(n, dtype=bool)

    def make_cache(key: str) -> EmbeddingCache:
        return EmbeddingCache(key, cache_dir, persist=cache)

    if text_model is not None:
        texts, text_report = build_texts(cat.table, text_fields, template, ids=cat.item_ids,
                                         exclude=(cat.id_col, *(c for c in (image_col, video_col) if c)))
        if caption_model is not None:
            from genrec.content.caption import caption_items, join_captions

            captions, report["captions"] = caption_items(
                caption_model, paths.get("image"), paths.get("video"), video=video, device=device,
                cache_dir=cache_dir, cache=cache, show_progress=show_progress, ids=cat.item_ids)
            texts = join_captions(texts, captions)
        enc = text_encoder(text_model, device=device, batch_size=batch_size)
        digests = [None if t is None else digest(t) for t in texts]
        res = encode_modality("text", enc, digests, lambda i: (texts[i], None), make_cache(enc.key),
                               batch_size * 4, show_progress, size=lambda i: len(texts[i] or ""))
        blocks["text"] = res.vectors
        present |= res.present
        report["text"] = {**text_report.to_dict(), "unique_texts": res.encoded + res.from_cache,
                          "encoded": res.encoded, "from_cache": res.from_cache}
        meta.update(text_model=text_model if isinstance(text_model, str) else enc.key, text_key=enc.key,
                    text_dim=int(res.vectors.shape[1]), text_fields=text_report.fields, template=template or "default")
        if res.present.any():
            meta["text_example"] = texts[int(np.flatnonzero(res.present)[0])]
    if enc_i is not None:
        meta.update(image_model=spec if isinstance(spec, str) else enc_i.key, image_key=enc_i.key)
    chunk = max(1, min(batch_size, 32)) * 4
    if want["image"]:
        res_i, report["image"] = encode_files("image", enc_i, paths["image"], image_digest, load_image,
                                               make_cache(enc_i.key), chunk, show_progress, cat.item_ids)
        blocks["image"] = res_i.vectors
        present |= res_i.present
        meta.update(image_dim=int(res_i.vectors.shape[1]), image_source=image_col or image_pattern,
                    image_root=str(image_root) if image_root is not None else None)
    if want["video"]:
        enc_v = VideoEncoder(enc_i, video or VideoConfig())
        res_v, report["video"] = encode_files("video", enc_v, paths["video"], file_digest,
                                               lambda p: load_video(p, enc_v.config), make_cache(enc_v.key),
                                               max(1, chunk // enc_v.config.frames), show_progress, cat.item_ids)
        blocks["video"] = res_v.vectors
        present |= res_v.present
        meta.update(video_key=enc_v.key, video_dim=int(res_v.vectors.shape[1]), video=enc_v.config.model_dump(),
                    video_source=video_col or video_pattern,
                    video_root=str(video_root) if video_root is not None else None)
    fused, proj = fuse(blocks, fusion, present)
    fused[~present] = 0.0
    none = np.flatnonzero(~present)
    report["items_without_content"] = int(len(none))
    report["items_without_content_examples"] = examples(none, cat.item_ids)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    meta["modalities"] = list(blocks)
    meta["fusion"] = fusion.model_dump()
    meta["report"] = report
    vectors = np.zeros((n + 1, fused.shape[1]), np.float32)
    vectors[1:] = fused
    emb = ItemEmbeddings(vectors=vectors, item_ids=cat.item_ids, meta=meta, missing=(none + 1).astype(np.int64))
    if out is not None:
        emb.save(out)
        proj_file = Path(out) / "projection.safetensors"
        if proj is not None:
            proj.save(proj_file)
        elif proj_file.is_file():
            proj_file.unlink()
    return emb
