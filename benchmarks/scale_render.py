"""Rendering of the scaling results: scale.md (table, growth exponents, targets), scale.png (the curves) and the
measured block of docs/scaling.md, all from scale.json's rows. Used by ``benchmarks/scale.py``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from genrec.io import write_text

# Single-row targets: name -> (quantity, comparison, bound, the row it is read from).
TARGETS = {
    "prepare 1e8 events <= 10 min": ("prepare_seconds", "<=", 600.0, {"stage": "data", "source": "synth",
                                                                      "nominal_events": 1e8}),
    "prepare 1e8 events, peak <= 4 GB": ("prepare_peak_gb", "<=", 4.0, {"stage": "data", "source": "synth",
                                                                        "nominal_events": 1e8}),
    "prepare 1e9 events, peak <= 4 GB": ("prepare_peak_gb", "<=", 4.0, {"stage": "data", "source": "synth",
                                                                        "nominal_events": 1e9}),
    "popularity evaluation of 1e7 events < 60 s": ("popularity_eval_seconds", "<", 60.0,
                                                   {"stage": "eval", "nominal_events": 1e7}),
    "1e7-item catalog: p99 <= 20 ms at concurrency 1": ("p99_ms_c1", "<=", 20.0, {"stage": "serve", "items": 10**7}),
    "1e7-item catalog: recall@10 >= .95": ("recall_at_10", ">=", 0.95, {"stage": "serve", "items": 10**7}),
}


def _find(rows: list[dict], where: dict) -> dict | None:
    for r in rows:
        if all(r.get(k) == v or (isinstance(v, float) and abs((r.get(k) or 0) - v) < 1e-6 * v)
               for k, v in where.items()):
            return r
    return None


def target_lines(rows: list[dict]) -> list[str]:
    """One table row per target: the measured value and met, or missed by how much."""
    out = []
    for name, (q, op, bound, where) in TARGETS.items():
        r = _find(rows, where)
        if r is None or r.get(q) is None:
            out.append(f"| {name} | not measured | - |")
            continue
        v = r[q]
        ok = {"<=": v <= bound, "<": v < bound, ">=": v >= bound}[op]
        out.append(f"| {name} | {_fmt(v)} | {'met' if ok else f'missed by {_fmt(abs(v - bound))}'} |")
    # ratios between rows
    a = _find(rows, {"stage": "train", "source": "synth1m", "processes": 1, "nominal_events": 1e7})
    b = _find(rows, {"stage": "train", "source": "synth1m", "processes": 1, "nominal_events": 1e8})
    if a and b:
        ratio = b["train_peak_gb"] / a["train_peak_gb"]
        out.append(f"| training peak memory at 1e8 events within 10% of 1e7 | {ratio:.3f}x "
                   f"({b['train_peak_gb']:.2f} / {a['train_peak_gb']:.2f} GiB) | "
                   f"{'met' if abs(ratio - 1) <= 0.1 else f'missed by {abs(ratio - 1) - 0.1:.1%}'} |")
    m = _find(rows, {"stage": "train", "source": "ml1m", "data": "memory"})
    st = _find(rows, {"stage": "train", "source": "ml1m", "data": "stream"})
    if m and st:
        ratio = st["tokens_per_s"] / m["tokens_per_s"]
        out.append(f"| streamed tokens/s within 10% of in-memory (MovieLens-1M HSTU) | {ratio:.3f}x "
                   f"({st['tokens_per_s']:,.0f} / {m['tokens_per_s']:,.0f}) | "
                   f"{'met' if ratio >= 0.9 else f'missed by {0.9 - ratio:.1%}'} |")
    return out


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log y against log x (the growth exponent); None with fewer than two points."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x and y and x > 0 and y > 0]
    if len(pts) < 2:
        return None
    a = np.array(pts)
    return float(np.polyfit(a[:, 0], a[:, 1], 1)[0])


# Growth exponents per stage: (x key, y key, rows filter).
EXPONENTS = {
    "train": [("events", "train_peak_gb", {"source": "synth1m", "processes": 1}),
              ("events", "tokens_per_s", {"source": "synth1m", "processes": 1}),
              ("events", "train_peak_gb", {"source": "synth1m", "processes": 2})],
    "eval": [("events", "popularity_eval_seconds", {}), ("events", "eval_peak_gb", {})],
    "serve": [("items", "p99_ms_c1", {}), ("items", "load_seconds", {}), ("items", "pss_mb_2w", {}),
              ("items", "bundle_gb", {})],
}


def exponent_lines(stage: str, rows: list[dict]) -> list[str]:
    out = []
    for x, y, where in EXPONENTS.get(stage, []):
        sub = sorted((r for r in rows if all(r.get(k) == v for k, v in where.items())), key=lambda r: r[x])
        e = slope([r[x] for r in sub], [r.get(y) for r in sub])
        if e is not None:
            cond = ", ".join(f"{k} {v}" for k, v in where.items())
            out.append(f"- {y} grows as {x}^{e:.2f}" + (f" ({cond})" if cond else ""))
    return out


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def render(result: dict) -> str:
    """scale.md: each stage's rows and growth exponents, the targets and the notes."""
    rows = result["rows"]
    lines = ["# Scaling curves", "",
             f"Commit `{result.get('commit')}`, machine: {result.get('machine', {}).get('processor')} "
             f"({result.get('machine', {}).get('cpus')} cores), updated {result.get('created')}.", "",
             "Produced by `benchmarks/scale.py` (each row's command is in `scale.json`).", ""]
    data = [r for r in rows if r["stage"] == "data"]
    if data:
        lines += ["## Preparation (`genrec data prepare`, out of core)", "",
                  "| source | events | users | items | prepare s | peak GiB | generate s | engine, memory limit |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in sorted(data, key=lambda r: (r["source"], r["events"])):
            lines.append(f"| {r['source']} | {r['events']:,} | {r['users']:,} | {r['items']:,} | "
                         f"{_fmt(r['prepare_seconds'])} | {_fmt(r['prepare_peak_gb'])} | {_fmt(r['generate_seconds'])}"
                         f" | {r['engine']}, {r['memory_limit']} |")
        lines.append("")
        for source in sorted({r["source"] for r in data}):
            sub = [r for r in data if r["source"] == source]
            ev = [r["events"] for r in sub]
            t_exp = slope(ev, [r["prepare_seconds"] for r in sub])
            m_exp = slope(ev, [r["prepare_peak_gb"] for r in sub])
            lines.append(f"- {source}: prepare time grows as events^{_fmt(t_exp)}, peak memory as events^{_fmt(m_exp)}")
        lines.append("")
    for title, stage in (("Training (streaming)", "train"), ("Evaluation (full catalog)", "eval"),
                         ("Serving", "serve")):
        sub = [r for r in rows if r["stage"] == stage]
        if not sub:
            continue
        keys = [k for k in sub[0] if k not in ("stage", "command", "from", "commit", "created", "steps")]
        lines += [f"## {title}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in sub]
        lines += ["", *exponent_lines(stage, sub), ""]
    lines += ["## Targets", "", "| target | measured | status |", "|---|---|---|", *target_lines(rows), ""]
    if result.get("notes"):
        lines += ["## Notes", ""] + [f"- {n['date']}: {n['text']}" for n in result["notes"]] + [""]
    lines.append("")
    return "\n".join(lines)


DOCS = Path("docs/scaling.md")
DOCS_BEGIN, DOCS_END = "<!-- scale-results:begin -->", "<!-- scale-results:end -->"


def docs_block(result: dict) -> str:
    """The measured figures of docs/scaling.md, from scale.json and the serving / evaluation results it cites."""
    rows = result["rows"]
    lines = [f"Generated by `python benchmarks/scale.py --render` from `benchmarks/results/scale.json` (commit "
             f"`{result.get('commit')}`, {result.get('machine', {}).get('cpus')} CPU cores, "
             f"{str(result.get('created', ''))[:10]}) and the files named per row. Sources: `synth`, `genrec data "
             "synth` with a catalog growing with the log (events / 10 items); `synth1m`, the same with 1M items at "
             "every size (the training rows, prepared with equal shard sizes); `ml1m`, `genrec data expand "
             "movielens-1m`. The synth1m training rows ran 90 s of HSTU (configs/synthetic/hstu-stream.yaml) plus "
             "the shard survey, validation and test on 2,000-user samples; the MovieLens-1M rows train one epoch of "
             "configs/movielens-1m/hstu.yaml. Evaluating a baseline loads the log in memory.", "",
             "| stage | size | wall time | peak memory | detail |", "|---|---|---|---|---|"]
    for r in sorted((r for r in rows if r["stage"] == "data"), key=lambda r: (r["source"], r["events"])):
        lines.append(f"| prepare ({r['source']}, {r['engine']}, limit {r['memory_limit']}) | {r['events']:,} events | "
                     f"{r['prepare_seconds']:.0f} s | {r['prepare_peak_gb']:.2f} GiB | {r['users']:,} users, "
                     f"{r['items']:,} items; generated in {r['generate_seconds']:.0f} s |")
    for r in sorted((r for r in rows if r["stage"] == "train"), key=lambda r: (r["source"], r["events"])):
        lines.append(f"| train HSTU ({r['source']}, {r['data']}, {r['processes']} process"
                     f"{'es' if r['processes'] > 1 else ''}) | {r['events']:,} events | {r['run_seconds']:.0f} s "
                     f"(run) | {r['train_peak_gb']:.2f} GiB | {r['tokens_per_s']:,.0f} tokens/s over "
                     f"{r['trained_seconds']:.0f} s of training |")
    for r in sorted((r for r in rows if r["stage"] == "eval"), key=lambda r: r["events"]):
        lines.append(f"| evaluate popularity, full catalog | {r['events']:,} events, {r['cases']:,} users x "
                     f"{r['items']:,} items | {r['popularity_eval_seconds']:.0f} s | {r['eval_peak_gb']:.2f} GiB | "
                     "`genrec eval` end to end (load, split, rank, bootstrap) |")
    for r in (r for r in rows if r["stage"] == "serve"):
        lines.append(f"| serve ({r['index']}, {r['params']}) | {r['items']:,} items | load {r['load_seconds']:.1f} s "
                     f"| {r['pss_mb_2w']:,.0f} MB PSS per worker (2 workers) | p50 / p99 {r['p50_ms_c1']:.1f} / "
                     f"{r['p99_ms_c1']:.1f} ms at concurrency 1, recall@10 {r['recall_at_10']:.3f} "
                     f"(`{r['from']}`, commit `{str(r['from_commit'])[:7]}`) |")
    return "\n".join(lines)


def render_docs(result: dict) -> None:
    if not DOCS.exists():
        return
    text = DOCS.read_text(encoding="utf-8")
    if DOCS_BEGIN not in text or DOCS_END not in text:
        raise SystemExit(f"{DOCS} lacks the {DOCS_BEGIN} / {DOCS_END} markers")
    head, rest = text.split(DOCS_BEGIN, 1)
    tail = rest.split(DOCS_END, 1)[1]
    write_text(DOCS, f"{head}{DOCS_BEGIN}\n{docs_block(result)}\n{DOCS_END}{tail}")


def plot(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = result["rows"]
    data = [r for r in rows if r["stage"] == "data"]
    if not data:
        return False
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for source in sorted({r["source"] for r in data}):
        sub = sorted((r for r in data if r["source"] == source), key=lambda r: r["events"])
        x = [r["events"] for r in sub]
        axes[0, 0].loglog(x, [r["prepare_seconds"] for r in sub], "o-", label=f"prepare, {source}")
        axes[0, 1].loglog(x, [r["prepare_peak_gb"] for r in sub], "o-", label=f"prepare, {source}")
    for p in (1, 2):
        sub = sorted((r for r in rows if r["stage"] == "train" and r.get("source") == "synth1m"
                      and r["processes"] == p), key=lambda r: r["events"])
        if sub:
            axes[0, 1].loglog([r["events"] for r in sub], [r["train_peak_gb"] for r in sub], "s--",
                              label=f"train, {p} process{'es' if p > 1 else ''}")
    ev = sorted((r for r in rows if r["stage"] == "eval"), key=lambda r: r["events"])
    if ev:
        axes[0, 0].loglog([r["events"] for r in ev], [r["popularity_eval_seconds"] for r in ev], "^-",
                          label="evaluate popularity")
    sv = sorted((r for r in rows if r["stage"] == "serve"), key=lambda r: r["items"])
    if sv:
        x = [r["items"] for r in sv]
        axes[1, 0].loglog(x, [r["p50_ms_c1"] for r in sv], "o-", label="p50, concurrency 1")
        axes[1, 0].loglog(x, [r["p99_ms_c1"] for r in sv], "o-", label="p99, concurrency 1")
        axes[1, 1].loglog(x, [r["pss_mb_2w"] for r in sv], "o-", label="PSS per worker, 2 workers")
        axes[1, 1].loglog(x, [r["bundle_gb"] * 1024 for r in sv], "o--", label="bundle on disk")
    axes[0, 0].set(xlabel="events", ylabel="wall time (s)", title="time")
    axes[0, 1].set(xlabel="events", ylabel="peak memory (GiB)", title="peak memory")
    axes[1, 0].set(xlabel="catalog items", ylabel="latency (ms)", title="serving latency")
    axes[1, 1].set(xlabel="catalog items", ylabel="MB", title="serving memory")
    for ax in axes.flat:
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True
