"""The fresh-content experiment on KuaiRand-Pure, with creators: simulated KuaiRand users (response model fitted on
the real click sequences of ``kuairand-pure-clicks``: :mod:`genrec.experiment.response`) drive the real
``genrec serve --experiment`` on loopback; arm ``fresh`` reserves ``--fresh-share`` of the slots for new items,
arm ``control`` does not.

The served bundle is ``--run`` (a KuaiRand retrieval run) exported with two catalog changes, its weights unchanged:
each item's ``author_id`` from KuaiRand's video table (so every shown slot has a creator), and the response
model's held-back items (released during the run) marked never trained on (``train_count`` 0), which makes them
the server's fresh items once first shown. Results: engagement (clicks per shown slot, users as the unit) with its
interval, the share of slots on new items, content and creator health per arm (fresh share, item and creator Gini
over the whole catalog, coverage, time to the k-th exposure of new items) and each arm's most exposed creators.

Writes benchmarks/results/experiments_kuairand.{json,md} and regenerates experiments.md from experiments.json
(benchmarks/experiments.py) with this section added.

    GENREC_DATA_DIR=../shared/data python benchmarks/experiments_kuairand.py --run runs/kuairand/hstu-retrieval \
        --work runs/sim/kuairand [--requests 12000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import yaml

from experiments import fresh_effect, stream_args
from experiments_ope import ci
from genrec.eval.report import git_commit, machine
from genrec.io import read_json, write_json, write_text

DATA = "kuairand-pure-clicks"
WINDOW = {"start": "2000-01-01T00:00:00Z", "end": "2100-01-01T00:00:00Z"}
TOP = 10


def authors() -> dict[str, str]:
    """video id -> author id, from KuaiRand-Pure's video table (either layout genrec reads)."""
    from genrec.data.builtin import data_home
    from genrec.data.impression_readers import _kuairand_files

    found = _kuairand_files(data_home())
    if found is None:
        raise SystemExit("KuaiRand-Pure is not under GENREC_DATA_DIR")
    t = pacsv.read_csv(found[3], convert_options=pacsv.ConvertOptions(include_columns=["video_id", "author_id"]))
    return dict(zip(map(str, t.column(0).to_pylist()), map(str, t.column(1).to_pylist()), strict=True))


def build_bundle(args) -> tuple[Path, dict[str, float]]:
    """The served bundle (module docstring) and the fresh items' release times (share of the run)."""
    from genrec.experiment.response import ResponseConfig, ResponseModel
    from genrec.experiment.simulate import load_sequences
    from genrec.serve import export_bundle

    run, out = args.work / "run", args.work / "bundle"
    items = pq.read_table(args.run / "items.parquet")
    cat = [str(x) for x in items.column("raw_id").to_pylist()]
    model = ResponseModel.fit(load_sequences(DATA), cat, ResponseConfig(seed=args.seed))
    release = {i: float(r) for i, r in zip(model.items, model.release, strict=True) if r > 0}
    del model
    if out.is_dir():
        return out, release
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(args.run, run, ignore=shutil.ignore_patterns("checkpoint", "per_user.parquet"))
    by_video = authors()
    missing = [i for i in cat if i not in by_video]
    if missing:
        raise SystemExit(f"{len(missing)} catalog items have no author in the video table, e.g. {missing[:3]}")
    counts = [0 if i in release else c for i, c in zip(cat, items.column("train_count").to_pylist(), strict=True)]
    items = items.set_column(items.schema.get_field_index("train_count"), "train_count", pa.array(counts, pa.int64()))
    pq.write_table(items.append_column("author_id", pa.array([by_video[i] for i in cat])), run / "items.parquet")
    return export_bundle(run, out, ann="off"), release


def run_stream(args, bundle: Path) -> dict:
    from genrec.experiment.response import ResponseConfig
    from genrec.experiment.simulate import SimulateConfig, simulate

    exp = args.work / "fresh.yaml"
    exp.write_text(yaml.safe_dump({"name": "fresh-kuairand", "salt": "fresh-kuairand", **WINDOW, "arms": [
        {"name": "control"}, {"name": "fresh", "serving": {"fresh_share": args.fresh_share}}]}, sort_keys=False))
    out = args.work / "stream"
    cmd = (f"genrec simulate {bundle} --experiment {exp} --out {out} --data {DATA} --requests {args.requests} "
           f"--days {args.days} --concurrency {args.concurrency} --seed {args.seed}")
    shutil.rmtree(out, ignore_errors=True)
    load = os.getloadavg()
    s = simulate(SimulateConfig(bundle=bundle, experiment=exp, out=out, data=DATA, requests=args.requests,
                                days=args.days, concurrency=args.concurrency, seed=args.seed,
                                response=ResponseConfig(seed=args.seed)))
    print(f"stream: {s['answered']} answers, {s['requests_per_s']:.0f}/s", flush=True)
    return {"command": cmd, "load_before": load, "load_after": os.getloadavg(), **s}


def analyse(args, bundle: Path, release: dict[str, float]) -> dict:
    from genrec.experiment.creators import Exposures, per_creator
    from genrec.experiment.simulate import DAY

    t = pq.read_table(args.work / "stream" / "simulation.parquet").to_pydict()
    sim = {k: np.asarray(v) for k, v in t.items()}
    arms = ("control", "fresh")
    items = pq.read_table(bundle / "items.parquet", columns=["raw_id", "author_id"]).to_pydict()
    n_creators = len(set(items["author_id"]))
    # items there from the start were first seen long before the run; fresh ones at their release
    first_seen = {i: release[i] * args.days * DAY if i in release else -365 * DAY for i in items["raw_id"]}
    ex = Exposures.of(sim["item_id"], sim["sim_time"], sim["creator"])
    out = fresh_effect(sim, ex, first_seen, args.fresh_k, len(items["raw_id"]), n_creators)
    out["creators"] = {}
    for a in arms:
        table = per_creator(ex.subset(sim["arm"] == a), fresh_days=1.0, first_seen=first_seen)
        rows = table.rows()
        out["creators"][a] = {"shown": len(rows), "top": rows[:TOP],
                              "top_share": float(sum(r["share"] for r in rows[:TOP]))}
    out["catalog"] = {"items": len(items["raw_id"]), "creators": n_creators, "fresh_items": len(release)}
    return out


def markdown(r: dict) -> list[str]:
    """The KuaiRand section of experiments.md."""
    s, f = r["stream"], r["fresh"]
    c = f["catalog"]
    lines = ["", "## Fresh-content arm on KuaiRand-Pure, with creators", "",
             f"Commit `{r['commit']}`, {r['created'][:10]}, {r['machine'].get('cpus')} CPUs (load average "
             f"{s['load_before'][0]:.1f} -> {s['load_after'][0]:.1f}), wall time {r['wall_seconds'] / 60:.1f} min. "
             "Command:", "", f"    {r['command']}", "",
             f"Simulated KuaiRand-Pure users (response model fitted on the real click sequences of `{DATA}`, "
             f"{s['response']['users']:,} users) against `{r['run']}` served with each item's KuaiRand `author_id` "
             f"({c['items']:,} items by {c['creators']:,} creators; {c['fresh_items']} items held back and released "
             "over the run, marked never trained on). Stream: "
             f"`{s['command']}`: {s['answered']:,} answers to {s['users_seen']:,} users, {s['clicks']:,} clicks, "
             f"{s['requests_per_s']:.0f} requests/s.", "",
             f"Arm `fresh` reserves {r['fresh_share']:.0%} of the slots for new items. Clicks per slot: control "
             f"{f['ctr']['control']:.4f}, fresh {f['ctr']['fresh']:.4f}, difference {ci(f['ctr']['difference'])} "
             f"(relative {ci(f['ctr']['relative'], '+.3f')}); share of slots on items released during the run: "
             f"control {f['new_item_share']['control']:.4f}, fresh {f['new_item_share']['fresh']:.4f}, difference "
             f"{ci(f['new_item_share']['difference'])}.", "",
             "| arm | exposures | fresh share (1 day) | item Gini | creator Gini | coverage | creators shown | "
             f"new items | reached k={r['fresh_k']} | median time to k (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for arm, h in f["health"].items():
        lines.append(f"| {arm} | {h['exposures']:,} | {h['fresh_share']:.4f} | {h['item_gini']:.3f} | "
                     f"{h['creator_gini']:.3f} | {h['coverage']:.3f} | {f['creators'][arm]['shown']:,} | "
                     f"{h['new_items']} | {h['new_reached_k']:.2f} | {h['median_time_to_k_s']:.0f} |")
    lines += ["", "Gini over the whole catalog (never-shown items and creators count as zeros). The most exposed "
              f"creators per arm ({TOP} shown; share of the arm's exposures):", "",
              "| arm | creator | exposures | items | fresh exposures | share |", "|---|---|---:|---:|---:|---:|"]
    for arm, x in f["creators"].items():
        lines += [f"| {arm} | {t['creator']} | {t['exposures']:,} | {t['items']} | {t['fresh_exposures']:,} | "
                  f"{t['share']:.4f} |" for t in x["top"]]
        lines.append(f"| {arm} | top {TOP} together | | | | {x['top_share']:.4f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=Path("runs/kuairand/hstu-retrieval"),
                    help="KuaiRand retrieval run (trained on kuairand-pure-clicks) to serve.")
    ap.add_argument("--work", type=Path, default=Path("runs/sim/kuairand"))
    ap.add_argument("--requests", type=int, default=12000)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--concurrency", type=int, default=16)
    stream_args(ap)
    args = ap.parse_args()
    wall = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    bundle, release = build_bundle(args)
    stream = run_stream(args, bundle)
    result = {"benchmark": "experiments_kuairand", "created": dt.datetime.now(dt.UTC).isoformat(),
              "commit": git_commit(), "machine": machine(), "command": " ".join([Path(sys.executable).name,
                                                                                 *sys.argv]),
              "run": str(args.run), "fresh_share": args.fresh_share, "fresh_k": args.fresh_k, "stream": stream,
              "fresh": analyse(args, bundle, release)}
    result["wall_seconds"] = time.perf_counter() - wall
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "experiments_kuairand.json", result)
    write_text(args.out / "experiments_kuairand.md", "\n".join(markdown(result)[1:]) + "\n")
    if (args.out / "experiments.json").is_file():  # experiments.md: its own results, then this section
        from experiments import markdown as main_markdown

        write_text(args.out / "experiments.md", main_markdown(read_json(args.out / "experiments.json"), result))
    print("\n".join(markdown(result)))


if __name__ == "__main__":
    main()
