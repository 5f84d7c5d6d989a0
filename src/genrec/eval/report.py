"""Evaluations as run folders: config.json, metrics.json, per_user.parquet and report.md.

Per-user values are always saved, so any two runs on the same cases can be compared with a paired test.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genrec.data.dataset import SequenceDataset
from genrec.data.splits import EvalCases
from genrec.errors import GenrecError
from genrec.eval.metrics import DEFAULT_KS
from genrec.eval.retrieval import Scorer, rank_cases
from genrec.eval.stats import bootstrap_ci, paired_test
from genrec.io import read_json, write_json, write_parquet, write_text

HEADLINE = ("hr@10", "ndcg@10", "hr@50", "ndcg@50", "hr@200", "ndcg@200", "mrr")


@dataclass
class Evaluation:
    part: str  # "valid" or "test"
    per_user: pa.Table  # user (raw), target (raw), rank, one column per metric
    summary: dict[str, dict[str, float]]  # metric -> mean, ci_low, ci_high
    aggregate: dict[str, float]  # coverage@K
    info: dict[str, Any] = field(default_factory=dict)

    def mean(self, metric: str) -> float:
        return self.summary[metric]["mean"]


def evaluate(
    scorer: Scorer,
    cases: EvalCases,
    dataset: SequenceDataset,
    *,
    part: str = "test",
    ks: Sequence[int] = DEFAULT_KS,
    exclude_seen: bool = True,
    item_counts: np.ndarray | None = None,
    sampled_negatives: int | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    distributed: bool = False,
    show_progress: bool = True,
) -> Evaluation:
    """Rank every case, compute per-user metrics and their bootstrap 95% intervals.

    ``distributed``: every rank of an initialised torch.distributed group calls this, ranks its share of the cases
    and gets the whole evaluation (see :func:`genrec.eval.retrieval.rank_cases`)."""
    result = rank_cases(scorer, cases, dataset.n_items, ks=ks, exclude_seen=exclude_seen, item_counts=item_counts,
                        sampled_negatives=sampled_negatives, seed=seed, distributed=distributed,
                        show_progress=show_progress)
    columns = {"user": _as_str(dataset.users.decode(cases.users)),
               "target": _as_str(dataset.items.decode(cases.targets)), "rank": result.ranks}
    columns.update(result.per_case)
    summary = bootstrap_ci(result.per_case, n_boot=n_boot, seed=seed)
    info = {**result.info, "part": part, "n_boot": n_boot, "ci": "95% percentile bootstrap over users"}
    return Evaluation(part, pa.table(columns), summary, result.aggregate, info)


def subset_summary(ev: Evaluation, mask: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Each metric of ``ev`` on the cases where ``mask`` is true, with its bootstrap 95% interval."""
    rows = np.flatnonzero(mask)
    per_case = {m: ev.per_user.column(m).to_numpy()[rows] for m in ev.summary}
    return bootstrap_ci(per_case, n_boot=n_boot, seed=seed) if len(rows) else {}


def _as_str(values: list) -> pa.Array:
    return pa.array([str(v) for v in values], pa.string())


def git_commit() -> str | None:
    """Short commit of the genrec checkout, with '-dirty' when tracked files differ from it (None outside git).
    The GENREC_COMMIT environment variable, when set, is returned instead."""
    if os.environ.get("GENREC_COMMIT"):  # set by runners that copy the tree elsewhere (e.g. to a GPU machine)
        return os.environ["GENREC_COMMIT"]
    here = Path(__file__).parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=here)
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "."], capture_output=True, timeout=10,
                               cwd=here.parent.parent.parent).returncode == 1
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return (commit + ("-dirty" if dirty else "")) if commit else None


def machine() -> dict[str, Any]:
    import torch

    gpu = {"gpu": torch.cuda.get_device_name()} if torch.cuda.is_available() else {}
    return {**gpu, "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}


def write_run(folder: str | Path, config: dict[str, Any], evaluation: Evaluation, dataset: SequenceDataset,
              wall_seconds: float | None = None) -> Path:
    """Write a run folder; every file is written atomically."""
    folder = Path(folder)
    from genrec import __version__

    meta = {"genrec": __version__, "commit": git_commit(), "created": dt.datetime.now(dt.UTC).isoformat(),
            "machine": machine(), "wall_seconds": wall_seconds}
    write_json(folder / "config.json", {**config, "run": meta})
    metrics = {"dataset": dataset.stats(), "part": evaluation.part, "metrics": evaluation.summary,
               "aggregate": evaluation.aggregate, "info": evaluation.info, "run": meta}
    write_parquet(folder / "per_user.parquet", evaluation.per_user)
    write_json(folder / "metrics.json", metrics)
    write_text(folder / "report.md", render_report(config, evaluation, dataset, meta))
    return folder


def render_report(config: dict[str, Any], ev: Evaluation, dataset: SequenceDataset, meta: dict[str, Any]) -> str:
    s = dataset.stats()
    lines = [f"# {config.get('model', 'model')} on {dataset.name} ({ev.part} split)", ""]
    if "sampled" in ev.info.get("protocol", ""):
        lines += [f"> **WARNING: SAMPLED METRICS ({ev.info['protocol']}).** They are not comparable to "
                  "full-catalog numbers and overstate quality.", ""]
    lines += [
        f"- dataset: {s['users']:,} users, {s['items']:,} items, {s['interactions']:,} interactions",
        f"- protocol: {ev.info.get('protocol')}, split {config.get('split')}, {ev.info.get('cases'):,} cases, "
        f"seen items {'excluded' if ev.info.get('exclude_seen') else 'kept'}, ties broken by item id",
        f"- intervals: {ev.info.get('ci')} ({ev.info.get('n_boot')} resamples)",
        f"- commit {meta.get('commit')}, genrec {meta.get('genrec')}, {meta['machine']['cpus']} CPUs, "
        f"wall {meta.get('wall_seconds') or 0:.1f} s",
        "", "| metric | mean | 95% CI |", "|---|---|---|",
    ]
    for name, v in ev.summary.items():
        lines.append(f"| {name} | {v['mean']:.4f} | [{v['ci_low']:.4f}, {v['ci_high']:.4f}] |")
    for name, v in ev.aggregate.items():
        lines.append(f"| {name} | {v:.4f} | |")
    return "\n".join(lines) + "\n"


def load_run(folder: str | Path) -> tuple[dict[str, Any], pa.Table]:
    folder = Path(folder)
    for name in ("metrics.json", "per_user.parquet"):
        if not (folder / name).is_file():
            raise GenrecError(f"{folder}: not a genrec run folder (no {name})")
    return read_json(folder / "metrics.json"), pq.read_table(folder / "per_user.parquet")


def compare_runs(run_a: str | Path, run_b: str | Path, metrics: Sequence[str] | None = None,
                 n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Paired comparison of B against A on the users both evaluated (same dataset and split part)."""
    info_a, users_a = load_run(run_a)
    info_b, users_b = load_run(run_b)
    for key in ("part",):
        if info_a.get(key) != info_b.get(key):
            raise GenrecError(f"runs differ in {key}: {info_a.get(key)} vs {info_b.get(key)}")
    if info_a["dataset"]["name"] != info_b["dataset"]["name"]:
        raise GenrecError(f"runs are on different datasets: {info_a['dataset']['name']} vs {info_b['dataset']['name']}")
    a_users = users_a.column("user").to_pylist()
    b_index = {u: i for i, u in enumerate(users_b.column("user").to_pylist())}
    pairs = np.array([(i, b_index[u]) for i, u in enumerate(a_users) if u in b_index], dtype=np.int64).reshape(-1, 2)
    if len(pairs) == 0:
        raise GenrecError("the two runs share no evaluated users")
    targets_a = np.array(users_a.column("target").to_pylist(), dtype=object)[pairs[:, 0]]
    targets_b = np.array(users_b.column("target").to_pylist(), dtype=object)[pairs[:, 1]]
    if np.any(targets_a != targets_b):
        raise GenrecError(f"the runs predict different targets for {int((targets_a != targets_b).sum())} users "
                          "(different splits?); a paired test needs the same cases")
    common = [c for c in users_a.column_names if c in users_b.column_names and c not in ("user", "target", "rank")]
    chosen = list(metrics) if metrics else common
    unknown = [m for m in chosen if m not in common]
    if unknown:
        raise GenrecError(f"unknown metric(s) {', '.join(unknown)}; available: {', '.join(common)}")
    rows = {}
    for m in chosen:
        a = users_a.column(m).to_numpy()[pairs[:, 0]]
        b = users_b.column(m).to_numpy()[pairs[:, 1]]
        rows[m] = paired_test(a, b, n_boot=n_boot, seed=seed)
    warn = [p for p, i in (("A", info_a), ("B", info_b)) if "sampled" in i.get("info", {}).get("protocol", "")]
    return {"run_a": str(run_a), "run_b": str(run_b), "part": info_a.get("part"), "users": len(pairs),
            "sampled_runs": warn, "metrics": rows}
