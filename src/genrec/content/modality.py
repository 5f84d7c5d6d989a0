"""Encoding one modality of a catalog with the embedding cache: each distinct input (by sha256) once, in chunks,
only when it is not cached; file inputs (images, videos) found by a path column or a pattern, with a report of
missing and unreadable files."""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from genrec.content.cache import EmbeddingCache, digest
from genrec.content.image import decode_image, read_image
from genrec.content.text import N_EXAMPLES
from genrec.errors import ConfigError, DataError
from genrec.progress import progress_bar

if TYPE_CHECKING:
    from genrec.content.encode import Catalog

FLUSH_EVERY = 2048  # encoded inputs between cache writes (what an interrupted run keeps)


@dataclass
class ModalityResult:
    vectors: np.ndarray  # [n_items, dim], zeros where there is no input
    present: np.ndarray  # [n_items] bool
    encoded: int
    from_cache: int
    failed: dict[int, str]  # item position -> reason (inputs that could not be decoded)


def encode_modality(label: str, encoder: Any, digests: list[bytes | None],
                     load: Callable[[int], tuple[Any, str | None]], cache: EmbeddingCache, chunk: int,
                     show_progress: bool, size: Callable[[int], int] | None = None) -> ModalityResult:
    """Encode the inputs whose digest is not cached (each distinct input once), in chunks; ``size(i)`` orders the
    misses (e.g. by text length, so batches pad little)."""
    n = len(digests)
    first: dict[bytes, int] = {}
    for i, d in enumerate(digests):
        if d is not None and d not in first:
            first[d] = i
    unique = list(first)
    _, hit = cache.lookup(unique)
    misses = [d for d, h in zip(unique, hit, strict=True) if not h]
    if size is not None:
        misses.sort(key=lambda d: size(first[d]))  # stable: ties keep catalog order
    failed: dict[int, str] = {}
    bad_digests: set[bytes] = set()
    if misses:
        with progress_bar(len(misses), f"{label}: {encoder.key}", enabled=show_progress) as advance:
            pend_d: list[bytes] = []
            pend_v: list[np.ndarray] = []
            for start in range(0, len(misses), chunk):
                batch = misses[start:start + chunk]
                inputs, ok = [], []
                for d in batch:
                    x, reason = load(first[d])
                    if x is None:
                        failed[first[d]] = reason or "unreadable"
                        bad_digests.add(d)
                    else:
                        inputs.append(x)
                        ok.append(d)
                if inputs:
                    vecs = np.asarray(encoder.encode(inputs), dtype=np.float32)
                    if vecs.shape[0] != len(inputs):
                        raise DataError(f"{label} encoder {encoder.key} returned {vecs.shape[0]} vectors for "
                                        f"{len(inputs)} inputs")
                    pend_d += ok
                    pend_v.append(vecs)
                if sum(len(v) for v in pend_v) >= FLUSH_EVERY:
                    cache.put(pend_d, np.concatenate(pend_v))
                    pend_d, pend_v = [], []
                advance(len(batch))
            if pend_v:
                cache.put(pend_d, np.concatenate(pend_v))
    dim = cache.dim if cache.dim is not None else int(encoder.dim)
    rows, hit = cache.lookup([d if d is not None and d not in bad_digests else b"" for d in digests])
    out = np.zeros((n, dim), np.float32)
    if hit.any():
        out[hit] = cache.vectors(rows[hit])
    for i, d in enumerate(digests):  # items sharing the digest of a failed input fail the same way
        if d in bad_digests and i not in failed:
            failed[i] = failed[first[d]]
    return ModalityResult(out, hit, len(misses) - len(bad_digests), len(unique) - len(misses), failed)


def examples(positions: np.ndarray | list[int], ids: list[str]) -> list[str]:
    return [ids[int(i)] for i in list(positions)[:N_EXAMPLES]]


def media_paths(cat: Catalog, col: str | None, pattern: str | None, root: Path | None,
                 kind: str = "image") -> list[Path | None]:
    """The file of each item (None where it has none): from a path column, or a pattern formatted with the row."""
    rows = cat.table
    if col is not None:
        if col not in rows.column_names:
            raise ConfigError(f"{kind} column '{col}' not in the catalog; its columns are "
                              f"{', '.join(rows.column_names)}")
        values = rows.column(col).to_pylist()
    else:
        assert pattern is not None
        try:
            names = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
        except ValueError as e:
            raise ConfigError(f"{kind} pattern {pattern!r} is not a valid format string ({e})") from None
        unknown = [f for f in names if f != "item" and f not in rows.column_names]
        if not names or unknown:
            raise ConfigError(f"{kind} pattern {pattern!r} must name catalog columns in braces, e.g. "
                              f"'{{item}}.{'mp4' if kind == 'video' else 'jpg'}' (columns: "
                              f"{', '.join(['item', *rows.column_names])})")
        values = []
        for item, rec in zip(cat.item_ids, rows.to_pylist(), strict=True):
            fields = {k: v for k, v in rec.items() if v is not None}
            fields.setdefault("item", item)
            try:
                values.append(pattern.format_map(fields))
            except KeyError:  # a named column is empty for this item
                values.append(None)
            except (ValueError, IndexError) as e:
                raise ConfigError(f"{kind} pattern {pattern!r} is not a valid format string ({e})") from None
    base = root if root is not None else cat.folder
    out: list[Path | None] = []
    for v in values:
        s = None if v is None else str(v).strip()
        if not s:
            out.append(None)
            continue
        p = Path(s).expanduser()
        out.append(p if p.is_absolute() or base is None else base / p)
    return out


def image_digest(path: Path) -> tuple[bytes | None, str | None]:
    data, reason = read_image(path)
    return (None, reason) if data is None else (digest(data), None)


def load_image(path: Path) -> tuple[Any, str | None]:
    data, reason = read_image(path)
    return (None, reason) if data is None else decode_image(data)


def encode_files(label: str, encoder: Any, paths: list[Path | None],
                  file_digest: Callable[[Path], tuple[bytes | None, str | None]],
                  load: Callable[[Path], tuple[Any, str | None]], cache: EmbeddingCache, chunk: int,
                  show_progress: bool, ids: list[str]) -> tuple[ModalityResult, dict[str, Any]]:
    """Encode one file per item (images, videos), cached by file content; the result and its report of missing
    paths, missing files and unreadable files (with examples)."""
    no_path = [i for i, p in enumerate(paths) if p is None]
    unreadable: dict[int, str] = {}
    digests: list[bytes | None] = []
    for i, p in enumerate(paths):
        d, reason = (None, None) if p is None else file_digest(p)
        if p is not None and d is None:
            unreadable[i] = reason or "unreadable"
        digests.append(d)
    res = encode_modality(label, encoder, digests, lambda i: load(paths[i]), cache, chunk,  # type: ignore[arg-type]
                           show_progress)
    unreadable.update(res.failed)
    not_found = sorted(i for i, r in unreadable.items() if r == "file not found")
    bad = sorted(i for i, r in unreadable.items() if r != "file not found")

    def described(rows: list[int]) -> list[dict[str, str]]:
        return [{"item": ids[i], "path": str(paths[i]), "reason": unreadable[i]} for i in rows[:N_EXAMPLES]]

    return res, {f"{label}s": int(res.present.sum()), "missing_path": len(no_path),
                 "missing_path_examples": examples(no_path, ids), "missing_file": len(not_found),
                 "missing_file_examples": described(not_found), "unreadable": len(bad),
                 "unreadable_examples": described(bad), "encoded": res.encoded, "from_cache": res.from_cache}
