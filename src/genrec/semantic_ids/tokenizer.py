"""The semantic-ID tokenizer: content vectors in, ``levels`` content codes plus one uniqueness code out.

``Tokenizer(config).fit(vectors)`` learns a residual quantiser (RQ-KMeans or RQ-VAE) on preprocessed item
vectors (optional L2 normalisation, then centring and one global scale, all stored). ``encode`` gives the
content codes of any vectors, ``tokenize`` the :class:`SemanticIds` of a whole catalog, and ``extend`` the IDs
of new items next to existing ones, without retraining anything: a new item gets the next free uniqueness
code of its prefix.

On disk (one folder): ``tokenizer.json`` (format, config, input size) and ``tokenizer.safetensors``
(preprocessing statistics and the quantiser's tensors). No pickle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load_file, save_file

from genrec.errors import ConfigError, DataError
from genrec.io import atomic_write, read_json, write_json
from genrec.semantic_ids.codes import SemanticIds
from genrec.semantic_ids.collaborative import CollaborativeConfig, apply_content_map, fuse
from genrec.semantic_ids.rqkmeans import ResidualKMeans
from genrec.semantic_ids.rqvae import RQVAE, RQVAEConfig

FORMAT = "genrec-semantic-id-tokenizer"
FORMAT_VERSION = 1
FILES = ("tokenizer.json", "tokenizer.safetensors")


class TokenizerConfig(BaseModel):
    """How item vectors become semantic IDs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["rqkmeans", "rqvae"] = Field("rqkmeans", description="Residual k-means or RQ-VAE.")
    levels: int = Field(3, ge=1, description="Content codes per item (L).")
    codebook_size: int = Field(256, ge=2, description="Codes per level (K).")
    seed: int = Field(0, description="Seed of k-means initialisation and RQ-VAE training.")
    normalize: bool = Field(True, description="L2-normalise each content vector first (cosine geometry).")
    kmeans_iters: int = Field(50, ge=1, description="Lloyd iterations per k-means run.")
    kmeans_init: Literal["kmeans++", "random"] = Field("kmeans++", description="k-means seeding.")
    rqvae: RQVAEConfig = Field(RQVAEConfig(), description="RQ-VAE settings (method 'rqvae' only).")
    collaborative: CollaborativeConfig | None = Field(None, description="Collaborative IDs: quantise content vectors "
                                                      "fused with a trained ID model's item embeddings "
                                                      "(genrec.semantic_ids.collaborative); None = content only.")


def _as_tensor(vectors: np.ndarray | torch.Tensor, what: str = "vectors") -> torch.Tensor:
    t = torch.as_tensor(np.asarray(vectors) if not torch.is_tensor(vectors) else vectors).to(torch.float32)
    if t.ndim != 2:
        raise DataError(f"{what} must be a [n, dim] matrix, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise DataError(f"{what} hold NaN or infinite values")
    return t


def assign_unique(prefix: np.ndarray, existing: np.ndarray | None = None) -> np.ndarray:
    """Append the uniqueness code to content codes ``prefix`` [n, L].

    Items that share a prefix get 0, 1, 2, ... in row order. With ``existing`` ([m, L + 1], full IDs already
    handed out), each new item gets the next code its prefix has free, so no ID is ever reused or changed.
    """
    prefix = np.asarray(prefix, dtype=np.int64)
    if prefix.ndim != 2:
        raise DataError(f"content codes must be an [n, levels] matrix, got shape {prefix.shape}")
    n, levels = prefix.shape
    old = np.zeros((0, levels + 1), np.int64) if existing is None else np.asarray(existing, np.int64)
    if old.shape[1] != levels + 1:
        raise DataError(f"existing IDs have {old.shape[1]} columns, expected {levels + 1}")
    both = np.concatenate([old[:, :levels], prefix])
    if len(both) == 0:
        return np.zeros((0, levels + 1), np.int64)
    _, group = np.unique(both, axis=0, return_inverse=True)
    group = group.reshape(-1)
    n_groups = int(group.max()) + 1
    start = np.zeros(n_groups, np.int64)
    if len(old):
        np.maximum.at(start, group[:len(old)], old[:, levels] + 1)
    g_new = group[len(old):]
    order = np.argsort(g_new, kind="stable")
    sorted_g = g_new[order]
    first = np.searchsorted(sorted_g, sorted_g, side="left")
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n) - first
    return np.concatenate([prefix, (start[g_new] + rank)[:, None]], axis=1)


class Tokenizer:
    """Learned state is set by :meth:`fit` (or :meth:`load`); nothing is computed in ``__init__``."""

    def __init__(self, config: TokenizerConfig | None = None, **overrides: Any):
        try:
            self.config = TokenizerConfig.model_validate({**(config.model_dump() if config else {}), **overrides})
        except ValidationError as e:
            err = e.errors()[0]
            raise ConfigError(f"bad tokenizer setting {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        self.quantizer: ResidualKMeans | RQVAE | None = None
        self.in_dim: int | None = None
        self.mean: torch.Tensor | None = None
        self.scale: float = 1.0
        self.content_map: torch.Tensor | None = None  # collaborative: content -> ID-embedding map [dim + 1, D]

    def content_vectors(self, content: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """What :meth:`encode` takes for items known by their content alone: for collaborative IDs the content
        fused with the ID embedding the saved map predicts from it; otherwise the content itself."""
        if self.content_map is None or self.config.collaborative is None:
            return content
        x = _as_tensor(content, "content vectors").numpy()
        if x.shape[1] != self.content_map.shape[0] - 1:
            raise DataError(f"content vectors have {x.shape[1]} dimensions; this tokenizer's content map expects "
                            f"{self.content_map.shape[0] - 1}")
        return fuse(x, apply_content_map(x, self.content_map.numpy()), self.config.collaborative.weight)

    # --- preprocessing ------------------------------------------------------------------------------------

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x, dim=1) if self.config.normalize else x

    def preprocess(self, vectors: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The space the quantiser works in: normalised, centred and scaled to unit mean variance per dim."""
        self._check_fitted()
        x = _as_tensor(vectors)
        if x.shape[1] != self.in_dim:
            raise DataError(f"vectors have {x.shape[1]} dimensions; this tokenizer was fitted on {self.in_dim}")
        return (self._normalize(x) - self.mean) / self.scale

    # --- learning and encoding ----------------------------------------------------------------------------

    def fit(self, vectors: np.ndarray | torch.Tensor, progress=None) -> Tokenizer:
        """Learn preprocessing statistics and the quantiser from ``vectors`` [n, dim] (no padding row)."""
        x = _as_tensor(vectors)
        if len(x) < 2:
            raise DataError(f"need at least 2 item vectors to fit a tokenizer, got {len(x)}")
        cfg = self.config
        x = self._normalize(x)
        self.in_dim = x.shape[1]
        self.mean = x.mean(0)
        self.scale = float(((x - self.mean) ** 2).mean().sqrt().clamp_min(1e-12))
        z = (x - self.mean) / self.scale
        if cfg.method == "rqkmeans":
            self.quantizer = ResidualKMeans(cfg.levels, cfg.codebook_size, cfg.kmeans_iters, cfg.kmeans_init, cfg.seed)
        else:
            self.quantizer = RQVAE(cfg.levels, cfg.codebook_size, cfg.rqvae, cfg.seed, cfg.kmeans_iters)
        self.quantizer.fit(z, progress)
        return self

    def fit_steps(self) -> int:
        """How many progress steps :meth:`fit` reports (for a progress bar)."""
        return self.config.levels if self.config.method == "rqkmeans" else self.config.rqvae.epochs

    def encode(self, vectors: np.ndarray | torch.Tensor) -> np.ndarray:
        """Content codes [n, levels] of any vectors, known items or new ones; nothing is trained."""
        x = self.preprocess(vectors)
        return self.quantizer.encode(x).numpy()

    def reconstruct(self, codes: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The vector [n, dim] (in the preprocessed space) that content codes [n, levels] stand for."""
        self._check_fitted()
        return self.quantizer.decode(torch.as_tensor(np.asarray(codes)[:, :self.config.levels], dtype=torch.int64))

    def tokenize(self, vectors: np.ndarray | torch.Tensor, meta: dict[str, Any] | None = None) -> SemanticIds:
        """Semantic IDs of a whole catalog: ``vectors`` [n_items + 1, dim] with row 0 the padding row."""
        x = _as_tensor(vectors)
        codes = assign_unique(self.encode(x[1:]))
        return self._ids(codes, meta or {})

    def extend(self, ids: SemanticIds, vectors: np.ndarray | torch.Tensor) -> SemanticIds:
        """Append new items (``vectors`` [m, dim], no padding row) to existing IDs: existing rows stay as they
        are; new items are dense ids ``n_items + 1 ...``, each with the next free uniqueness code."""
        self._check_fitted()
        if ids.n_levels != self.config.levels + 1:
            raise DataError(f"semantic IDs have {ids.n_levels} columns; this tokenizer makes "
                            f"{self.config.levels + 1}")
        new = assign_unique(self.encode(vectors), existing=ids.codes[1:])
        codes = np.concatenate([ids.codes[1:], new])
        sizes = [*ids.sizes[:-1], max(ids.sizes[-1], int(codes[:, -1].max()) + 1 if len(codes) else 1)]
        meta = {**ids.meta, "n_extended": int(ids.meta.get("n_extended", 0)) + len(new)}
        out = SemanticIds(codes=np.concatenate([np.full((1, ids.n_levels), -1, np.int64), codes]), sizes=sizes,
                          meta=meta)
        return out

    def _ids(self, codes: np.ndarray, meta: dict[str, Any]) -> SemanticIds:
        last = int(codes[:, -1].max()) + 1 if len(codes) else 1
        sizes = [self.config.codebook_size] * self.config.levels + [last]
        padded = np.concatenate([np.full((1, self.config.levels + 1), -1, np.int64), codes])
        return SemanticIds(codes=padded, sizes=sizes, meta={"method": self.config.method, "levels":
                                                            self.config.levels, **meta})

    def _check_fitted(self) -> None:
        if self.quantizer is None:
            raise ConfigError("the tokenizer is not fitted yet; call fit() or Tokenizer.load()")

    # --- persistence --------------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        self._check_fitted()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"pre.mean": self.mean, **{f"q.{k}": v for k, v in self.quantizer.tensors().items()}}
        if self.content_map is not None:
            tensors["collab.map"] = self.content_map
        atomic_write(folder / FILES[1], lambda tmp: save_file({k: v.detach().contiguous().cpu()
                                                               for k, v in tensors.items()}, tmp))
        write_json(folder / FILES[0], {"format": FORMAT, "format_version": FORMAT_VERSION,
                                       "config": self.config.model_dump(mode="json"), "in_dim": self.in_dim,
                                       "scale": self.scale})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Tokenizer:
        folder = Path(folder)
        for name in FILES:
            if not (folder / name).is_file():
                raise DataError(f"{folder}: not a semantic-ID tokenizer (missing {name}); make one with "
                                "'genrec tokenize'")
        spec = read_json(folder / FILES[0])
        if spec.get("format") != FORMAT or spec.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{folder / FILES[0]}: unsupported tokenizer format {spec.get('format')} "
                            f"v{spec.get('format_version')}")
        try:
            config = TokenizerConfig.model_validate(spec["config"])
        except ValidationError as e:
            raise ConfigError(f"{folder / FILES[0]}: bad config: {e.errors()[0]['loc']}: "
                              f"{e.errors()[0]['msg']}") from None
        tok = cls(config)
        tensors = load_file(folder / FILES[1])
        tok.in_dim, tok.scale, tok.mean = int(spec["in_dim"]), float(spec["scale"]), tensors["pre.mean"]
        tok.content_map = tensors.get("collab.map")
        q = {k[2:]: v for k, v in tensors.items() if k.startswith("q.")}
        if config.method == "rqkmeans":
            tok.quantizer = ResidualKMeans(config.levels, config.codebook_size, config.kmeans_iters,
                                           config.kmeans_init, config.seed).load_tensors(q)
        else:
            tok.quantizer = RQVAE(config.levels, config.codebook_size, config.rqvae, config.seed,
                                  config.kmeans_iters).load_tensors(q, tok.in_dim)
        return tok
