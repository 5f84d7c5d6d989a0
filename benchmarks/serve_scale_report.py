"""The summary rows and the Markdown page (serve_scale.md) of the serving-at-scale results in serve_scale.json.
Used by ``benchmarks/serve_scale.py``."""

from __future__ import annotations

from typing import Any

import numpy as np

TARGET_ITEMS, TARGET_P99_MS, TARGET_RECALL = 10_000_000, 20.0, 0.95


def row(d: dict[str, Any]) -> dict[str, Any]:
    """The flat summary row (also read by benchmarks/scale.py)."""
    ann = d["ann"] or {"kind": "flat"}
    one = d["http"].get("1") or next(iter(d["http"].values()))
    two = d["http"].get("2")

    def per_worker(h: dict | None, key: str) -> float | None:
        return float(np.mean([m[key] for m in h["worker_memory"]])) if h else None

    return {"items": d["items"], "index": ann["kind"],
            "params": (f"nlist {ann['nlist']}, nprobe {ann['nprobe']}" + (f", m {ann['m']}, refine {ann['refine']}"
                                                                        if ann.get("m") else "")
                       if "nlist" in ann else "exact"),
            "build_seconds": d["export"].get("seconds"), "build_peak_gb": _gb(d["export"].get("peak_rss_mb")),
            "bundle_gb": d["bundle_bytes"] / 2**30, "load_seconds": d["measure"]["load_seconds"],
            "recall_at_10": d["measure"]["recall_at_10"], "tuned_recall_at_10": ann.get("recall@10", 1.0),
            "p50_ms_c1": one["c1"]["p50_ms"], "p99_ms_c1": one["c1"]["p99_ms"],
            "p50_ms_c8": one["c8"]["p50_ms"], "p99_ms_c8": one["c8"]["p99_ms"],
            "rss_mb_1w": per_worker(one, "rss_mb"), "pss_mb_1w": per_worker(one, "pss_mb"),
            "rss_mb_2w": per_worker(two, "rss_mb"), "pss_mb_2w": per_worker(two, "pss_mb"),
            "private_mb_2w": per_worker(two, "private_mb")}


def _gb(mb: float | None) -> float | None:
    return None if mb is None else mb / 1024


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    dirty = f" (**uncommitted changes** in {', '.join(result['dirty_files'])})" if result.get("dirty") else ""
    lines = ["# Serving at catalog scale", "",
             f"- command: `{result['command']}`",
             f"- commit {result['commit']}{dirty}, {m['cpus']} CPUs ({m['processor']}), torch {m['torch']}, "
             f"Python {m['python']}; created {result['created']}, wall {result['wall_seconds']:.0f} s for this "
             "invocation",
             "- " + result["contention"], "",
             "Synthetic catalogs (see the script's docstring): an untrained HSTU with a mixture-of-Gaussians item "
             "table, D 64; exported through `export_bundle(ann='auto', ann_memory_mb=1024)`; queries are the model's "
             "states after 20-item histories drawn by training popularity (held out: another seed). Latency: explicit "
             "history of 20 items, k 10, no deadline; client threads on the same 2 cores as the server; "
             f"OMP_WAIT_POLICY={result.get('omp_wait_policy')}.", "",
             "| items | index | parameters | build s | build peak GB | bundle GB | load s | recall@10 held-out (tuned) "
             "| HTTP p50 / p99 ms, c1 | c8 | RSS / PSS MB per worker, 1 worker | 2 workers (private) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(result["rows"], key=lambda r: r["items"]):
        lines.append(
            f"| {r['items']:,} | {r['index']} | {r['params']} | {_f(r['build_seconds'])} | {_f(r['build_peak_gb'])} "
            f"| {r['bundle_gb']:.2f} | {r['load_seconds']:.1f} | {r['recall_at_10']:.3f} "
            f"({r['tuned_recall_at_10']:.3f}) | {r['p50_ms_c1']:.1f} / {r['p99_ms_c1']:.1f} "
            f"| {r['p50_ms_c8']:.1f} / {r['p99_ms_c8']:.1f} "
            f"| {_f(r['rss_mb_1w'])} / {_f(r['pss_mb_1w'])} | {_f(r['rss_mb_2w'])} / {_f(r['pss_mb_2w'])} "
            f"({_f(r['private_mb_2w'])}) |")
    lines += ["", "## Details", ""]
    for d in sorted(result["details"], key=lambda d: d["items"]):
        meas, files = d["measure"], d["bundle_files"]
        big = ", ".join(f"{k} {v / 2**20:,.0f} MB" for k, v in files.items() if v > 2**20)
        lines += [f"### {d['items']:,} items", "",
                  f"- generate {_f(d['generate'].get('seconds'))} s; export {_f(d['export'].get('seconds'))} s, "
                  f"peak RSS {_f(d['export'].get('peak_rss_mb'))} MB (file-backed pages of the mapped table "
                  "included); load average " + " -> ".join(f"{x[0]:.1f}" for x in
                                                           (d["load_average_at_start"], d["load_average_at_end"])),
                  f"- bundle files: {big}",
                  f"- load {meas['load_seconds']:.2f} s, of which checksums {meas['verify_seconds']:.2f} s (a "
                  f"separate pass just before); exact search of {meas['heldout_queries']} held-out queries "
                  f"{meas['exact_search_seconds']:.1f} s; served mode {meas['mode']}",
                  f"- in-process `Recommender.recommend`: c1 p50 {meas['inprocess_c1']['p50_ms']:.2f} / p99 "
                  f"{meas['inprocess_c1']['p99_ms']:.2f} ms; c8 p50 {meas['inprocess_c8']['p50_ms']:.2f} / p99 "
                  f"{meas['inprocess_c8']['p99_ms']:.2f} ms; memory after load RSS "
                  f"{meas['memory_after_load']['rss_mb']:,.0f} MB (anonymous "
                  f"{meas['memory_after_load']['pss_anon_mb']:,.0f}), after requests RSS "
                  f"{meas['memory_after_requests']['rss_mb']:,.0f} MB"]
        for w, h in d["http"].items():
            mem = "; ".join(f"RSS {x['rss_mb']:,.0f}, PSS {x['pss_mb']:,.0f} (anon {x['pss_anon_mb']:,.0f}, file "
                            f"{x['pss_file_mb']:,.0f}), private {x['private_mb']:,.0f}" for x in h["worker_memory"])
            lat = "; ".join(f"c{c[1:]} p50 {h[c]['p50_ms']:.1f} / p99 {h[c]['p99_ms']:.1f} ms ({h[c]['per_s']:.0f} "
                            "req/s)" for c in h if c.startswith("c") and c[1:].isdigit())
            lines.append(f"- HTTP, {w} worker(s): ready in {h['ready_seconds']:.1f} s; {lat}; fallbacks "
                         f"{h['fallbacks']}; per worker (MB): {mem}")
        lines.append("")
    lines += ["## Target", ""]
    hit = [r for r in result["rows"] if r["items"] == TARGET_ITEMS]
    if hit:
        r = hit[0]
        ok_p99, ok_recall = r["p99_ms_c1"] <= TARGET_P99_MS, r["recall_at_10"] >= TARGET_RECALL
        lines.append(f"- 10^7 items, p99 <= {TARGET_P99_MS:g} ms at concurrency 1 (HTTP, 1 worker): "
                     f"{r['p99_ms_c1']:.1f} ms, " + ("met" if ok_p99 else
                                                     f"missed by {r['p99_ms_c1'] - TARGET_P99_MS:.1f} ms"))
        lines.append(f"- 10^7 items, recall@10 >= {TARGET_RECALL}: {r['recall_at_10']:.3f} held out, " +
                     ("met" if ok_recall else f"missed by {TARGET_RECALL - r['recall_at_10']:.3f}"))
    else:
        lines.append("- 10^7 items: not measured yet")
    return "\n".join(lines) + "\n"


def _f(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"
