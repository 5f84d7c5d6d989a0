"""The filters of a request (allow and deny lists, excluded items), its argument checks, and the popularity list
that answers when the model cannot."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from genrec.serve.catalog import Catalog

MAX_ID_WARNINGS = 10  # per list (history, allow, deny); the rest are counted in one line
FALLBACK_BLOCK = 4096  # popularity-ordered items checked against the filters per step


def allowed_mask(catalog: Catalog, allow: list[Any] | None, deny: list[Any] | None,
                 warnings: list[str], deny_dense: np.ndarray | None = None) -> torch.Tensor:
    """[n_items + 1] bool: the items that may be returned (padding never); unknown ids are warned about.
    ``deny_dense``: ``catalog.lookup(deny)`` when the caller already has it."""
    if allow is None:
        mask = torch.ones(catalog.n_items + 1, dtype=torch.bool)
    else:
        mask = torch.zeros(catalog.n_items + 1, dtype=torch.bool)
        dense = catalog.lookup(allow)
        mask[torch.from_numpy(dense[dense > 0])] = True
        note_unknown(warnings, [a for a, i in zip(allow, dense.tolist(), strict=True) if not i], " in allow")
    if deny is not None:
        dense = catalog.lookup(deny) if deny_dense is None else deny_dense
        mask[torch.from_numpy(dense[dense > 0])] = False
        note_unknown(warnings, [d for d, i in zip(deny, dense.tolist(), strict=True) if not i], " in deny")
    mask[0] = False
    return mask


def popular_top(order: np.ndarray, mask: torch.Tensor, k: int) -> np.ndarray:
    """The ``k`` first items of the popularity ``order`` that ``mask`` allows."""
    allowed, top = mask.numpy(), np.zeros(0, np.int64)
    for lo in range(0, len(order), FALLBACK_BLOCK):  # most answers are found in the first block
        block = np.asarray(order[lo:lo + FALLBACK_BLOCK])
        top = np.concatenate([top, block[allowed[block]][:k - len(top)]])
        if len(top) >= k:
            break
    return top


def popularity_order(catalog: Catalog, popular: list[str] | None) -> np.ndarray:
    """Dense ids for the popularity fallback: the bundle's precomputed list first, then everything else by
    training count (the catalog's own order, shared and not copied, when the list is its head)."""
    order = catalog.by_count
    if not popular:
        return order
    head = catalog.lookup(popular)
    head = head[head > 0]
    head = head[np.sort(np.unique(head, return_index=True)[1])]  # first occurrence of each, in list order
    if np.array_equal(head, order[:len(head)]):
        return order
    rest = np.ones(catalog.n_items + 1, dtype=bool)
    rest[head] = False
    return np.concatenate([head, order[rest[order]]])


def check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return int(k)


def id_list(values: Iterable[Any], what: str) -> list[Any]:
    if isinstance(values, str | bytes):
        raise ValueError(f"{what} must be a list, not one string")
    try:
        return list(values)
    except TypeError:
        raise ValueError(f"{what} must be a list, got {type(values).__name__}") from None


def per_event(values: Iterable[Any] | None, history: list[Any], what: str, kind: str) -> list[dict | None]:
    """One object or None per history item (all None when ``values`` is None); ValueError otherwise."""
    if values is None:
        return [None] * len(history)
    values = id_list(values, what)
    if len(values) != len(history):
        raise ValueError(f"{what} has {len(values)} entries for a history of {len(history)} items")
    if any(v is not None and not isinstance(v, dict) for v in values):
        raise ValueError(f"{what} must hold one object {kind} or null per history item")
    return values


def note_unknown(warnings: list[str], ids: list[Any], where: str) -> None:
    warnings.extend(f"unknown item id {h!r}{where} ignored" for h in ids[:MAX_ID_WARNINGS])
    if len(ids) > MAX_ID_WARNINGS:
        warnings.append(f"... and {len(ids) - MAX_ID_WARNINGS} more unknown item ids{where} ignored")
