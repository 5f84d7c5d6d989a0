"""Experiments proven by simulation: A/A false positives (fixed horizon, naive peeking, always-valid intervals),
A/B power against team-draft interleaving, off-policy estimates against online values, and a fresh-content arm.

Every stream is one ``genrec simulate`` run (:mod:`genrec.experiment.simulate`): simulated MovieLens-1M users drive
the real ``genrec serve --experiment`` on loopback. Streams:

- ``aa``: both arms serve the same bundle. The server assigns by hash(salt, user), and experiments with different
  salts split users independently, so the one stream hosts many concurrent A/A experiments: each salt's arms are
  recomputed from the logged user ids with the project's assignment function (``assign_many``).
- ``ab`` / ``il``: the weaker bundle against the stronger one, as an A/B test and as team-draft interleaving, each
  with the same traffic. "Better" is known exactly: the simulator logs each shown slot's click probability.
- ``ope``: a logging arm that samples its lists by Plackett-Luce (propensities logged) beside three candidate
  policies served online; ``genrec ope``'s estimators on the logging arm's slots against each candidate's online
  value.
- ``fresh``: an arm with ``fresh_share`` (slots reserved for new items) against control, when the server has it.

    python benchmarks/experiments.py --bundle runs/sim/bundle-q-id --weak-bundle runs/sim/bundle-q-sid --work W
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from experiments_ope import ci, est, ope, ope_markdown, per_user_arm, sim_table
from genrec.eval.report import git_commit, machine
from genrec.experiment import assign_many, credit, difference, parse_experiment, preference
from genrec.experiment.stats import mixture_halfwidth, ratio_estimate, tau_for
from genrec.io import read_json, write_json, write_text

RESULTS = Path(__file__).parent / "results"
WINDOW = {"start": "2000-01-01T00:00:00Z", "end": "2100-01-01T00:00:00Z"}
Z80 = NormalDist().inv_cdf(0.975) + NormalDist().inv_cdf(0.8)


def experiment_files(work: Path, weak: Path, args) -> dict[str, dict]:
    pl = lambda t: {"exploration": {"kind": "plackett_luce", "temperature": t}}  # noqa: E731
    files = {
        "aa": {"name": "aa", "salt": "aa-stream", "arms": [{"name": "a"}, {"name": "b"}]},
        "ab": {"name": "ab", "salt": "ab-stream", "arms": [{"name": "weak", "bundle": str(weak)},
                                                          {"name": "strong"}]},
        "il": {"name": "il", "salt": "il-stream", "mode": "interleave",
               "arms": [{"name": "weak", "bundle": str(weak)}, {"name": "strong"}]},
        "ope": {"name": "ope", "salt": "ope-stream", "arms": [
            {"name": "logging", "share": 0.4, "serving": pl(args.log_temperature)},
            *({"name": f"pl-{t:g}", "share": 0.2, "serving": pl(t)} for t in args.candidates)]},
        "fresh": {"name": "fresh", "salt": "fresh-stream", "arms": [
            {"name": "control"}, {"name": "fresh", "serving": {"fresh_share": args.fresh_share}}]},
    }
    out = {}
    for name, body in files.items():
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**body, **WINDOW}, sort_keys=False))
        out[name] = {"file": path, "body": body}
    return out


def fresh_bundle(args) -> Path:
    """``--fresh-run``'s bundle with the held-back items marked never trained on (``train_count`` 0): the server
    treats them as fresh once first shown (genrec.experiment.fresh). The model's weights are unchanged."""
    import shutil

    from genrec.experiment.response import ResponseConfig, ResponseModel
    from genrec.experiment.simulate import load_sequences
    from genrec.serve import export_bundle

    out = args.work / "fresh-bundle"
    if out.is_dir():
        return out
    run = args.work / "fresh-run"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(args.fresh_run, run, ignore=shutil.ignore_patterns("checkpoint"))
    items = pq.read_table(run / "items.parquet")
    cat = [str(x) for x in items.column("raw_id").to_pylist()]
    fresh = set(ResponseModel.fit(load_sequences("movielens-1m"), cat, ResponseConfig(seed=args.seed)).fresh())
    counts = [0 if i in fresh else c for i, c in zip(cat, items.column("train_count").to_pylist(), strict=True)]
    items = items.set_column(items.schema.get_field_index("train_count"), "train_count", pa.array(counts, pa.int64()))
    pq.write_table(items, run / "items.parquet")
    return export_bundle(run, out)


def run_stream(name: str, exp: Path, args, requests: int, bundle: Path | None = None) -> dict:
    from genrec.experiment.response import ResponseConfig
    from genrec.experiment.simulate import SimulateConfig, simulate

    out = args.work / name
    bundle = bundle or args.bundle
    cmd = (f"genrec simulate {bundle} --experiment {exp} --out {out} --requests {requests} --days {args.days} "
           f"--concurrency {args.concurrency} --seed {args.seed}")
    if (out / "summary.json").is_file():
        import json
        return {"command": cmd, **json.loads((out / "summary.json").read_text())}
    load = os.getloadavg()
    s = simulate(SimulateConfig(bundle=bundle, experiment=exp, out=out, requests=requests, days=args.days,
                                concurrency=args.concurrency, seed=args.seed,
                                response=ResponseConfig(seed=args.seed)))
    print(f"{name}: {s['answered']} answers, {s['requests_per_s']:.0f}/s", flush=True)
    return {"command": cmd, "load_before": load, "load_after": os.getloadavg(), **s}


def per_user(sim: dict[str, np.ndarray], looks: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Users (by first request), their clicks and shown slots after each of ``looks`` evenly spaced times
    (users x looks), and the look times."""
    users, inv = np.unique(sim["user_id"], return_inverse=True)
    t = sim["wall_time"]
    times = np.linspace(t.min(), t.max(), looks + 1)[1:]
    look = np.minimum(np.searchsorted(times, t, side="left"), looks - 1)
    clicks = np.zeros((len(users), looks))
    shown = np.zeros((len(users), looks))
    np.add.at(clicks, (inv, look), sim["clicked"].astype(float))
    np.add.at(shown, (inv, look), 1.0)
    return users, np.cumsum(clicks, 1), np.cumsum(shown, 1), times


def aa(args) -> dict:
    """False positives of many concurrent A/A experiments on one stream (module docstring)."""
    sim = sim_table("aa", args)
    users, clicks, shown, _ = per_user(sim, args.looks)
    out = {}
    for n_salts in (args.salts, args.salts_wide):
        est, se = np.full((n_salts, args.looks), np.nan), np.full((n_salts, args.looks), np.nan)
        for s in range(n_salts):
            exp = parse_experiment({"name": "aa", "salt": f"aa-{s}", **WINDOW, "arms": [{"name": "a"}, {"name": "b"}]})
            treated = assign_many(exp, users) == 1
            for j in range(args.looks):
                active = shown[:, j] > 0
                a, b = active & ~treated, active & treated
                if min(a.sum(), b.sum()) < args.burn_in:
                    continue
                d = difference(clicks[a, j], clicks[b, j], den_a=shown[a, j], den_b=shown[b, j])
                est[s, j], se[s, j] = d.absolute.value, d.absolute.se
        z = NormalDist().inv_cdf(0.975)
        final = np.abs(est[:, -1]) > z * se[:, -1]
        naive = np.nanmax(np.abs(est) / se, axis=1) > z
        tau = tau_for(float(np.median(se[:, -1])))  # one planned mixing sd for all: the horizon's typical se
        w = mixture_halfwidth(np.where(np.isnan(se), np.inf, se), tau)
        low = np.maximum.accumulate(np.where(np.isnan(est), -np.inf, est - w), axis=1)
        high = np.minimum.accumulate(np.where(np.isnan(est), np.inf, est + w), axis=1)
        seq = (low[:, -1] > 0) | (high[:, -1] < 0) | (low[:, -1] > high[:, -1])
        out[str(n_salts)] = {"experiments": n_salts, "fixed_horizon": rate(final), "naive_peeking": rate(naive),
                             "always_valid": rate(seq), "tau": tau, "looks": args.looks,
                             "users": int(len(users)), "median_final_se": float(np.median(se[:, -1]))}
    return out


def rate(hits: np.ndarray) -> dict:
    """A rejection rate with its Wilson 95% interval."""
    n, k = len(hits), int(np.sum(hits))
    z = NormalDist().inv_cdf(0.975)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"rejections": k, "rate": p, "low": float(centre - half), "high": float(centre + half)}


def power_curve(test, n_users: int, grid: list[int], reps: int, rng) -> dict[str, float]:
    """Share of ``reps`` resamples of n users (with replacement) where ``test(rows)`` rejects, for n in grid."""
    return {str(n): float(np.mean([test(rng.integers(0, n_users, n)) for _ in range(reps)])) for n in grid}


def users_for_80(curve: dict[str, float]) -> float | None:
    """Smallest n of the grid (log-interpolated) with power >= 0.8."""
    pts = sorted((int(n), p) for n, p in curve.items())
    for (n0, p0), (n1, p1) in zip(pts, pts[1:], strict=False):
        if p0 < 0.8 <= p1:
            return float(np.exp(np.log(n0) + (0.8 - p0) / (p1 - p0) * (np.log(n1) - np.log(n0))))
    return float(pts[0][0]) if pts and pts[0][1] >= 0.8 else None


def ab_vs_interleaving(args) -> dict:
    rng = np.random.default_rng(args.seed)
    z = NormalDist().inv_cdf(0.975)
    sim = sim_table("ab", args)
    users, clicks, shown, _ = per_user(sim, 1)
    c, n = clicks[:, 0], shown[:, 0]
    arm_of = dict(zip(sim["user_id"], sim["arm"], strict=True))
    strong = np.array([arm_of[u] == "strong" for u in users])
    d = difference(c[~strong], c[strong], den_a=n[~strong], den_b=n[strong])
    expected = {a: float(sim["p_click"][sim["arm"] == a].mean()) for a in ("weak", "strong")}

    def ab_test(rows):
        s = strong[rows]
        if min(s.sum(), (~s).sum()) < 2:
            return False
        r = difference(c[rows][~s], c[rows][s], den_a=n[rows][~s], den_b=n[rows][s]).absolute
        return r.value > z * r.se  # the known better arm detected (one direction of the two-sided test)

    # interleaving: per user, the preference's numerator (win +1/2, loss -1/2) and engaged impressions
    log = pq.read_table(args.work / "il" / "exposures.parquet").to_pydict()
    by_req: dict[str, dict] = {}
    for rid, user, team, eng in zip(log["request_id"], log["user_id"], log["team"], log["engaged"], strict=True):
        r = by_req.setdefault(rid, {"user": user, "teams": [], "engaged": []})
        r["engaged"].append(len(r["teams"])) if eng else None
        r["teams"].append(team)
    credits = [credit(r["teams"], r["engaged"]) for r in by_req.values()]
    units = [r["user"] for r in by_req.values()]
    pref = preference(credits, units)
    il_users, inv = np.unique(units, return_inverse=True)
    outcome = np.array([cr.outcome for cr in credits])
    score = np.select([outcome == "win", outcome == "loss"], [0.5, -0.5], 0.0)
    num = np.bincount(inv, weights=score, minlength=len(il_users))
    den = np.bincount(inv, weights=(outcome != "none").astype(float), minlength=len(il_users))

    def il_test(rows):
        if den[rows].sum() <= 0:
            return False
        e = ratio_estimate(num[rows], den[rows])
        return e.value > z * e.se

    ab_needed = len(users) * (Z80 * d.absolute.se / d.absolute.value) ** 2
    il_needed = len(il_users) * (Z80 * pref.delta.se / pref.delta.value) ** 2
    grid_ab = sorted({int(x) for x in np.geomspace(max(50, ab_needed / 4), ab_needed * 3, 9)})
    grid_il = sorted({int(x) for x in np.geomspace(max(20, il_needed / 4), il_needed * 3, 9)})
    ab_curve = power_curve(ab_test, len(users), grid_ab, args.reps, rng)
    il_curve = power_curve(il_test, len(il_users), grid_il, args.reps, rng)
    ab80, il80 = users_for_80(ab_curve), users_for_80(il_curve)
    return {
        "ab": {"users": int(len(users)), "ctr": {"weak": d.control.value, "strong": d.treatment.value},
               "expected_ctr": expected, "difference": est(d.absolute), "relative": est(d.relative),
               "users_for_80_analytic": ab_needed, "power": ab_curve, "users_for_80": ab80},
        "interleaving": {"users": int(len(il_users)), "impressions": len(credits), "wins_strong": pref.wins,
                         "losses_strong": pref.losses, "ties": pref.ties, "no_engagement": pref.none,
                         "preference_strong": est(pref.delta), "users_for_80_analytic": il_needed,
                         "power": il_curve, "users_for_80": il80,
                         "expected_ctr_merged": float(sim_table("il", args)["p_click"].mean())},
        "ratio_users_needed": (ab80 / il80) if ab80 and il80 else None,
        "ratio_users_needed_analytic": ab_needed / il_needed,
    }


def fresh_supported() -> bool:
    """Whether this checkout's server acts on ``fresh_share`` (the field alone is accepted and ignored)."""
    import genrec.experiment.serving as serving

    return "fresh_share" in Path(serving.__file__).read_text(encoding="utf-8")


def fresh(args) -> dict:
    """The fresh-content arm against control: engagement, the share of slots on new items, health per arm."""
    from genrec.experiment.creators import Exposures
    from genrec.experiment.simulate import DAY

    sim = sim_table("fresh", args)
    release = release_times(args)  # items there from the start were first seen long before the run
    first_seen = {i: release[i] * args.days * DAY if i in release else -365 * DAY for i in args.catalog}
    return fresh_effect(sim, Exposures.of(sim["item_id"], sim["sim_time"], None), first_seen, args.fresh_k,
                        int(args.catalog_size))


def fresh_effect(sim: dict[str, np.ndarray], ex, first_seen: dict, fresh_k: int, catalog_size: int,
                 creator_count: int | None = None) -> dict:
    """Control against the fresh arm of one simulated stream: clicks per slot and the share of slots on new items
    (users as the unit), and content and creator health per arm (``ex``: the stream's exposures)."""
    from genrec.experiment.creators import health_by_arm

    arms = ("control", "fresh")
    parts = {a: per_user_arm(sim, sim["arm"] == a) for a in arms}
    d = difference(parts["control"][0], parts["fresh"][0], den_a=parts["control"][1], den_b=parts["fresh"][1])
    out = {"ctr": {"control": d.control.value, "fresh": d.treatment.value, "difference": est(d.absolute),
                   "relative": est(d.relative)}}
    slots = {a: per_user_fresh(sim, sim["arm"] == a) for a in arms}
    f = difference(slots["control"][0], slots["fresh"][0], den_a=slots["control"][1], den_b=slots["fresh"][1])
    out["new_item_share"] = {"control": f.control.value, "fresh": f.treatment.value, "difference": est(f.absolute)}
    h = health_by_arm(ex, sim["arm"], first_seen=first_seen, fresh_days=1.0, k=fresh_k, catalog_size=catalog_size,
                      creator_count=creator_count)
    out["health"] = {a: vars(v) for a, v in h.items()}
    return out


def per_user_fresh(sim: dict[str, np.ndarray], mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    users, inv = np.unique(sim["user_id"][mask], return_inverse=True)
    return (np.bincount(inv, weights=sim["fresh"][mask].astype(float), minlength=len(users)),
            np.bincount(inv, minlength=len(users)).astype(float))


def release_times(args) -> dict[str, float]:
    """The fresh items' release times (share of the run) of the fresh stream's response model (refitted: it is
    deterministic given the data, the bundle's catalog and the seed)."""
    from genrec.experiment.response import ResponseConfig, ResponseModel
    from genrec.experiment.simulate import catalog_ids, load_sequences

    cat = catalog_ids(args.work / "fresh-bundle")
    args.catalog, args.catalog_size = cat, len(cat)
    m = ResponseModel.fit(load_sequences("movielens-1m"), cat, ResponseConfig(seed=args.seed))
    return {i: float(r) for i, r in zip(m.items, m.release, strict=True) if r > 0}


pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731


def markdown(r: dict, kuairand: dict | None = None) -> str:
    """experiments.md; ``kuairand``: the result of benchmarks/experiments_kuairand.py, added as its own section."""
    s = r["streams"]
    lines = [f"# Experiments proven by simulation ({r['created'][:10]})", "",
             f"Commit `{r['commit']}`, {r['machine'].get('cpus')} CPUs (shared with other jobs: load averages per "
             f"stream below), wall time {r['wall_seconds'] / 60:.1f} min. Command:", "", f"    {r['command']}", "",
             "Simulated MovieLens-1M users (real past as history, response model fitted on each user's real "
             "future: `genrec.experiment.response`) drive the real `genrec serve --experiment` on loopback. "
             f"Served bundles: strong `{r['bundle']}`, weak `{r['weak_bundle']}`.", "",
             "| stream | command | answers | users | clicks | requests/s | p50 / p99 ms | load before -> after |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for name, x in s.items():
        load = (f"{x['load_before'][0]:.1f} -> {x['load_after'][0]:.1f}" if "load_before" in x else "-")
        lines.append(f"| {name} | `{x['command']}` | {x['answered']:,} | {x['users_seen']:,} | {x['clicks']:,} | "
                     f"{x['requests_per_s']:.0f} | {x['latency_ms']['p50']:.0f} / {x['latency_ms']['p99']:.0f} | "
                     f"{load} |")
    a = r["aa"]
    lines += ["", "## A/A: false positives of the main metric (clicks per shown slot, users as the unit)", "",
              "Design: one stream in which both arms serve the same bundle. The server assigns by hash(salt, user) "
              "and experiments with different salts split users independently, so the stream hosts many "
              "concurrent A/A experiments: each salt's arms are recomputed from the logged user ids with "
              "`genrec.experiment.assign_many`. Looks: the data at evenly spaced times; naive peeking stops at "
              "the first look whose fixed-horizon 95% interval excludes 0; the always-valid test at the first "
              "look whose normal-mixture confidence sequence (running intersection; one tau planned from the "
              "typical standard error at the horizon) excludes 0. alpha = 5%; rates with Wilson 95% intervals.", "",
              "| experiments | looks | users | fixed horizon | naive peeking | always-valid (sequential) |",
              "|---:|---:|---:|---|---|---|"]
    for x in a.values():
        lines.append(f"| {x['experiments']} | {x['looks']} | {x['users']:,} | " + " | ".join(
            f"{pct(x[k]['rate'])} [{pct(x[k]['low'])}, {pct(x[k]['high'])}]"
            for k in ("fixed_horizon", "naive_peeking", "always_valid")) + " |")
    b = r["ab_vs_interleaving"]
    ab, il = b["ab"], b["interleaving"]
    lines += ["", "## A/B against team-draft interleaving (weak bundle vs strong bundle)", "",
              f"Known better arm: the simulator's exact expected clicks per slot are {ab['expected_ctr']['strong']:.4f}"
              f" (strong) against {ab['expected_ctr']['weak']:.4f} (weak).", "",
              f"- A/B ({ab['users']:,} users): clicks per slot {ab['ctr']['weak']:.4f} (weak) vs "
              f"{ab['ctr']['strong']:.4f} (strong); difference {ci(ab['difference'])}, relative "
              f"{ci(ab['relative'], '+.3f')}.",
              f"- Interleaving ({il['users']:,} users, {il['impressions']:,} impressions): strong wins "
              f"{il['wins_strong']:,}, loses {il['losses_strong']:,}, ties {il['ties']:,}, no engagement "
              f"{il['no_engagement']:,}; preference for strong {ci(il['preference_strong'])}.", "",
              "Power (alpha 5% two-sided, detecting the better arm) from resampling users of each stream "
              f"({r['reps']} resamples per size):", "", "| design | users | power |", "|---|---:|---:|"]
    for design, x in (("A/B", ab), ("interleaving", il)):
        lines += [f"| {design} | {int(n):,} | {p:.2f} |" for n, p in x["power"].items()]
    fmt = lambda v: "n/a (outside the grid)" if v is None else f"{v:,.0f}"  # noqa: E731
    ratio = b["ratio_users_needed"]
    lines += ["", f"Users for 80% power: A/B {fmt(ab['users_for_80'])} (analytic {ab['users_for_80_analytic']:,.0f}), "
              f"interleaving {fmt(il['users_for_80'])} (analytic {il['users_for_80_analytic']:,.0f}); measured ratio "
              f"{'n/a' if ratio is None else f'{ratio:.1f}x'} (analytic {b['ratio_users_needed_analytic']:.1f}x)."]
    lines += ope_markdown(r["ope"])
    lines += ["", "## Fresh-content arm", ""]
    f = r.get("fresh")
    if f is None or "pending" in f:
        lines.append(f"Pending: {f['pending'] if f else 'not run'}. Command once the server serves `fresh_share`: "
                     f"`{r['fresh_command']}`.")
    else:
        lines += [f"Arm `fresh` reserves {r['fresh_share']:.0%} of the slots for new items. Clicks per slot: control "
                  f"{f['ctr']['control']:.4f}, fresh {f['ctr']['fresh']:.4f}, difference {ci(f['ctr']['difference'])}"
                  f"; share of slots on items released during the run (the server's fresh items: the bundle of "
                  f"`{r['fresh_run']}` with them marked as never trained on): control "
                  f"{f['new_item_share']['control']:.4f}, "
                  f"fresh {f['new_item_share']['fresh']:.4f}, difference {ci(f['new_item_share']['difference'])}.",
                  "", "| arm | exposures | fresh share (1 day) | item Gini | coverage | new items | reached k | "
                  "median time to k (s) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for arm, h in f["health"].items():
            lines.append(f"| {arm} | {h['exposures']:,} | {h['fresh_share']:.4f} | {h['item_gini']:.3f} | "
                         f"{h['coverage']:.3f} | {h['new_items']} | {h['new_reached_k']:.2f} | "
                         f"{h['median_time_to_k_s']:.0f} |")
        lines.append("MovieLens-1M has no creators: creator Gini needs a catalog with one (KuaiRand `author_id`"
                     + (": the next section)." if kuairand else ")."))
    if kuairand:
        from experiments_kuairand import markdown as kuairand_markdown

        lines += kuairand_markdown(kuairand)
    return "\n".join(lines) + "\n"


def stream_args(ap: argparse.ArgumentParser) -> None:
    """The options the experiment benchmarks share: the fresh arm's share and neighbours, the seed, the output."""
    ap.add_argument("--fresh-share", type=float, default=0.2)
    ap.add_argument("--fresh-k", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True, help="The stronger bundle (served by default).")
    ap.add_argument("--weak-bundle", type=Path, required=True, help="The weaker bundle of the A/B and interleaving.")
    ap.add_argument("--work", type=Path, default=Path("runs/sim/bench"))
    ap.add_argument("--requests", type=int, nargs=5, default=[24000, 12000, 12000, 24000, 12000],
                    metavar=("AA", "AB", "IL", "OPE", "FRESH"))
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--salts", type=int, default=200)
    ap.add_argument("--salts-wide", type=int, default=2000, help="A second, larger count of concurrent A/A salts.")
    ap.add_argument("--looks", type=int, default=20)
    ap.add_argument("--burn-in", type=int, default=30)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--log-temperature", type=float, default=0.3)
    ap.add_argument("--candidates", type=float, nargs=3, default=[0.15, 0.6, 1.2])
    ap.add_argument("--samples", type=int, default=2000, help="OPE: Monte Carlo lists per request.")
    ap.add_argument("--fresh-run", type=Path, default=Path("runs/q-sid"), help="Training run (with semantic IDs) "
                    "whose bundle serves the fresh stream, its held-back items marked as never trained on.")
    stream_args(ap)
    args = ap.parse_args()
    wall = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    files = experiment_files(args.work, args.weak_bundle.absolute(), args)
    names = ["aa", "ab", "il", "ope"] + (["fresh"] if fresh_supported() else [])
    streams = {n: run_stream(n, files[n]["file"], args, args.requests[["aa", "ab", "il", "ope", "fresh"].index(n)],
                             fresh_bundle(args) if n == "fresh" else None) for n in names}
    result = {"benchmark": "experiments", "created": dt.datetime.now(dt.UTC).isoformat(), "commit": git_commit(),
              "machine": machine(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "bundle": str(args.bundle), "weak_bundle": str(args.weak_bundle), "reps": args.reps,
              "fresh_share": args.fresh_share, "fresh_run": str(args.fresh_run), "streams": streams,
              "experiment_files": {n: f["body"] for n, f in files.items()},
              "fresh_command": f"python benchmarks/experiments.py --bundle {args.bundle} --weak-bundle "
                               f"{args.weak_bundle} --work {args.work} (adds the fresh stream when the server "
                               "acts on fresh_share)"}
    result["aa"] = aa(args)
    result["ab_vs_interleaving"] = ab_vs_interleaving(args)
    result["ope"] = ope(args)
    result["fresh"] = fresh(args) if "fresh" in names else {"pending": "the server does not act on fresh_share at "
                                                                      "this commit"}
    result["wall_seconds"] = time.perf_counter() - wall
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "experiments.json", result)
    kuairand = args.out / "experiments_kuairand.json"  # benchmarks/experiments_kuairand.py, kept in the page
    text = markdown(result, read_json(kuairand) if kuairand.is_file() else None)
    write_text(args.out / "experiments.md", text)
    print(text)


if __name__ == "__main__":
    main()
