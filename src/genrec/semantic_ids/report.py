"""How good are the semantic IDs? Codebook use per level, collisions before the uniqueness code, how well the
codes reconstruct the content vectors, and how well shared prefixes group items with similar content.

Every function takes plain arrays, so each number can be checked on a hand-made case.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def code_report(codes: np.ndarray, codebook_size: int) -> dict[str, Any]:
    """Statistics of content codes [n, L] (no padding row, no uniqueness code).

    - ``utilisation[l]``: share of level l's ``codebook_size`` codes used by at least one item;
    - ``perplexity[l]``: exp(entropy) of level l's code distribution (``codebook_size`` = perfectly even);
    - ``distinct_prefixes[d]``: distinct length-(d+1) prefixes;
    - ``collision_rate``: 1 - distinct full prefixes / n (the share of items that need a uniqueness code > 0);
    - ``items_in_collision``: share of items whose full prefix is shared with another item;
    - ``max_collisions``: the largest group of items with one prefix (= size of the uniqueness code).
    """
    codes = np.asarray(codes, dtype=np.int64)
    n, levels = codes.shape
    util, perp = [], []
    for level in range(levels):
        counts = np.bincount(codes[:, level], minlength=codebook_size)
        util.append(float((counts > 0).sum() / codebook_size))
        p = counts[counts > 0] / max(n, 1)
        perp.append(float(np.exp(-(p * np.log(p)).sum())) if n else 0.0)
    distinct = []
    group_sizes = np.zeros(0, np.int64)
    for depth in range(1, levels + 1):
        _, _, group_sizes = np.unique(codes[:, :depth], axis=0, return_inverse=True, return_counts=True)
        distinct.append(len(group_sizes))
    n_unique = distinct[-1] if distinct else n
    return {
        "items": n,
        "utilisation": util,
        "perplexity": perp,
        "distinct_prefixes": distinct,
        "collision_rate": float(1 - n_unique / n) if n else 0.0,
        "items_in_collision": float(group_sizes[group_sizes > 1].sum() / n) if n else 0.0,
        "max_collisions": int(group_sizes.max()) if len(group_sizes) else 0,
    }


def reconstruction_report(x: torch.Tensor, recon: torch.Tensor,
                          level_residuals: torch.Tensor | None = None, latent: torch.Tensor | None = None
                          ) -> dict[str, Any]:
    """``mse``: mean squared error per dimension; ``unexplained_variance``: sum ||x - recon||^2 over
    sum ||x - mean(x)||^2 (0 = perfect, 1 = no better than the mean vector). With the quantiser's latent
    [n, d'] and its residual after each level [L, n, d'], also the unexplained latent variance after each
    level."""
    x, recon = x.to(torch.float64), recon.to(torch.float64)
    err = ((x - recon) ** 2).sum()
    total = ((x - x.mean(0)) ** 2).sum().clamp_min(1e-30)
    out: dict[str, Any] = {"mse": float(err / x.numel()), "unexplained_variance": float(err / total)}
    if level_residuals is not None and latent is not None:
        lat = latent.to(torch.float64)
        lat_total = ((lat - lat.mean(0)) ** 2).sum().clamp_min(1e-30)
        out["latent_unexplained_variance_by_level"] = [float((r.to(torch.float64) ** 2).sum() / lat_total)
                                                       for r in level_residuals]
    return out


def grouping_report(vectors: np.ndarray | torch.Tensor, codes: np.ndarray, sample: int = 2000,
                    seed: int = 0) -> dict[str, Any]:
    """Do items that share a code prefix have similar content? For each prefix depth d = 1..L:

    - ``same_prefix_cosine[d-1]``: mean cosine similarity over all pairs of distinct items sharing the prefix;
    - ``random_pair_cosine``: mean cosine over all pairs of distinct items (the baseline);
    - ``nn_shares_prefix[d-1]``: share of (up to ``sample``) items whose nearest neighbour by cosine shares
      their prefix, next to ``chance_shares_prefix[d-1]``, the same share for a random other item.

    Pair means are exact: the sum of pairwise cosines in a group is (||sum of unit vectors||^2 - size) / 2.
    """
    u = torch.nn.functional.normalize(torch.as_tensor(np.asarray(vectors), dtype=torch.float64), dim=1)
    codes = np.asarray(codes, dtype=np.int64)
    n, levels = codes.shape
    pairs_all = n * (n - 1)
    total = u.sum(0)
    random_cos = float(((total @ total) - n) / pairs_all) if pairs_all else float("nan")
    rng = np.random.default_rng(seed)
    queries = np.sort(rng.choice(n, size=min(sample, n), replace=False)) if n > 1 else np.zeros(0, np.int64)
    nn_idx = _nearest_other(u, queries)
    same_cos, nn_share, chance = [], [], []
    for depth in range(1, levels + 1):
        _, group, sizes = np.unique(codes[:, :depth], axis=0, return_inverse=True, return_counts=True)
        group = group.reshape(-1)
        sums = torch.zeros(len(sizes), u.shape[1], dtype=torch.float64).index_add_(0, torch.from_numpy(group), u)
        pair_cos = float((sums * sums).sum() - n)
        pairs = float((sizes * (sizes - 1)).sum())
        same_cos.append(pair_cos / pairs if pairs else float("nan"))
        chance.append(pairs / pairs_all if pairs_all else float("nan"))
        nn_share.append(float((group[queries] == group[nn_idx]).mean()) if len(queries) else float("nan"))
    return {"random_pair_cosine": random_cos, "same_prefix_cosine": same_cos, "nn_shares_prefix": nn_share,
            "chance_shares_prefix": chance, "nn_queries": int(len(queries))}


def _nearest_other(u: torch.Tensor, queries: np.ndarray, block: int = 512) -> np.ndarray:
    u32 = u.to(torch.float32)
    out = np.empty(len(queries), np.int64)
    for start in range(0, len(queries), block):
        q = torch.from_numpy(queries[start:start + block])
        sim = u32[q] @ u32.T
        sim[torch.arange(len(q)), q] = -torch.inf
        out[start:start + block] = sim.argmax(1).numpy()
    return out


def format_report(report: dict[str, Any]) -> list[str]:
    """The report as a few human-readable lines."""
    c, r, g = report["codes"], report["reconstruction"], report["grouping"]
    lines = [f"{report['method']}: {c['items']:,} items, {report['levels']} levels x {report['codebook_size']} codes"
             f" + uniqueness code of size {report['sizes'][-1]}; unique IDs: {report['unique']}",
             "utilisation per level: " + ", ".join(f"{v:.1%}" for v in c["utilisation"])
             + "   perplexity: " + ", ".join(f"{v:.0f}" for v in c["perplexity"]),
             f"collisions before the final code: {c['collision_rate']:.2%} of items need a suffix > 0, "
             f"{c['items_in_collision']:.2%} share their prefix, largest group {c['max_collisions']}",
             f"reconstruction: mse {r['mse']:.4f}, unexplained variance {r['unexplained_variance']:.3f}"]
    if "latent_unexplained_variance_by_level" in r:
        lines.append("  unexplained (latent) variance after each level: "
                     + ", ".join(f"{v:.3f}" for v in r["latent_unexplained_variance_by_level"]))
    lines.append(f"prefix grouping: mean cosine of random pairs {g['random_pair_cosine']:.3f}; same prefix by depth "
                 + ", ".join(f"{v:.3f}" for v in g["same_prefix_cosine"]))
    lines.append("  nearest neighbour shares the prefix: " + ", ".join(
        f"depth {d + 1} {a:.1%} (chance {b:.2%})" for d, (a, b) in
        enumerate(zip(g["nn_shares_prefix"], g["chance_shares_prefix"], strict=True))))
    if report.get("missing_items"):
        lines.append(f"{report['missing_items']:,} items without content got the ID of the mean vector "
                     "(excluded from these statistics)")
    if "fit_seconds" in report:
        lines.append(f"fit {report['fit_seconds']:.1f} s, encode {report['encode_seconds']:.1f} s")
    return lines
