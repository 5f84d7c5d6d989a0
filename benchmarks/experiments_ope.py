"""The off-policy evaluation section of ``benchmarks/experiments.py``: ``genrec ope``'s estimators on the ``ope``
stream's logging arm against each candidate arm's online value and against its exact value on the logged
requests.

The stream (a ``genrec simulate`` run in ``--work``/ope) is reused; run alone, this script recomputes the OPE
section of ``experiments.json`` and ``experiments.md`` (with its own commit and command) and keeps the rest:

    python benchmarks/experiments_ope.py --bundle runs/sim/bundle-q-id --work runs/sim/bench

Each logged request is replayed on its context as the server saw it: the user's seeded past (the response
model's, refitted: deterministic given the data, the bundle's catalog and the seed) then the user's clicks before
the request (the store's engagement log), and the request's ``deny`` filter (the fresh items not yet released at
the request's simulated time). ``events.parquet`` and ``filters.parquet`` are written for ``genrec ope``.

**Exact value on the logged requests**: the simulator's click model is ``rel(user, item) * examine(position)``
(:mod:`genrec.experiment.response`), so a candidate's expected clicks per slot on a request is
``sum over positions j and items i of P(i at j) rel(user, i) examine(j) / k``: the estimand of the position-based
estimators, free of click noise and of the difference between the logging arm's users and the candidate arm's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genrec.eval.report import git_commit, machine
from genrec.experiment.stats import ratio_estimate
from genrec.io import write_json, write_text

RESULTS = Path(__file__).parent / "results"
est = lambda e: {"value": e.value, "low": e.low, "high": e.high, "se": e.se}  # noqa: E731
ci = lambda e, f=".4f": f"{e['value']:{f}} [{e['low']:{f}}, {e['high']:{f}}]"  # noqa: E731


def sim_table(name: str, args) -> dict[str, np.ndarray]:
    t = pq.read_table(args.work / name / "simulation.parquet").to_pydict()
    return {k: np.asarray(v) for k, v in t.items()}


def per_user_arm(sim: dict[str, np.ndarray], mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    users, inv = np.unique(sim["user_id"][mask], return_inverse=True)
    return (np.bincount(inv, weights=sim["clicked"][mask].astype(float), minlength=len(users)),
            np.bincount(inv, minlength=len(users)).astype(float))


def response_model(args):
    from genrec.experiment.response import ResponseConfig, ResponseModel
    from genrec.experiment.simulate import catalog_ids, load_sequences

    return ResponseModel.fit(load_sequences("movielens-1m"), catalog_ids(args.bundle), ResponseConfig(seed=args.seed))


def contexts_files(args, model, sim: dict[str, np.ndarray], max_events: int) -> tuple[Path, Path]:
    """events.parquet (seeded past at times -n..-1, then clicks at their server times) and filters.parquet (each
    logging request's deny list) of the ope stream."""
    from genrec.serve.store import open_store

    work = args.work / "ope"
    store = open_store(str(work / "store.sqlite"), work / "store.sqlite")
    try:
        engaged = store.engagements()
    finally:
        store.close()
    cols: dict[str, list] = {"user_id": [], "item_id": [], "time": []}
    for user in np.unique(sim["user_id"]).tolist():
        past = model.histories[model.row[user]][-max_events:]
        cols["user_id"] += [user] * len(past)
        cols["item_id"] += past
        cols["time"] += [float(j - len(past)) for j in range(len(past))]
    for g in engaged:
        cols["user_id"].append(g.user_id)
        cols["item_id"].append(g.item_id)
        cols["time"].append(g.time)
    pq.write_table(pa.table(cols), work / "events.parquet")
    fresh, release = model.fresh(), np.sort(model.release[model.release > 0])
    days = json.loads((work / "summary.json").read_text())["config"]["days"]
    rid, first = np.unique(sim["request_id"][sim["arm"] == "logging"], return_index=True)
    when = sim["sim_time"][sim["arm"] == "logging"][first] / (days * 86_400)
    deny = [fresh[int(np.searchsorted(release, p, side="right")):] for p in when]
    pq.write_table(pa.table({"request_id": rid.tolist(), "deny": deny}), work / "filters.parquet")
    return work / "events.parquet", work / "filters.parquet"


class Exact:
    """Accumulates a candidate's expected clicks per slot on the logged requests (module docstring) from the
    policy ``genrec ope`` replays on each of them."""

    def __init__(self, model):
        from genrec.experiment.response import examine

        self.model, self.examine, self.clicks, self.slots = model, examine, 0.0, 0

    def __call__(self, ctx, played) -> None:
        m, k = self.model, len(ctx.rows)
        rel = m._scaled[m.ranks[m.row[ctx.user], [m.column[i] for i in played.items]]]
        self.clicks += float((played.probs * rel[:, None] * self.examine(k)[None, :]).sum())
        self.slots += k

    @property
    def value(self) -> float:
        return self.clicks / self.slots


def ope(args) -> dict:
    """``genrec ope``'s estimators on the logging arm against each candidate arm's value (module docstring)."""
    from genrec.experiment.offpolicy import evaluate_candidate, logging_policies
    from genrec.serve.recommender import Recommender

    work = args.work / "ope"
    table = pq.read_table(work / "exposures.parquet")
    pq.write_table(table.filter(pc.equal(table.column("arm"), "logging")), work / "logging.parquet")
    sim = sim_table("ope", args)
    model = response_model(args)
    summary = json.loads((work / "summary.json").read_text())
    events, filters = contexts_files(args, model, sim, summary["config"]["max_events"])
    exp = Path(summary["config"]["experiment"])
    temperature = {a["name"]: a["serving"]["exploration"]["temperature"] for a in
                   __import__("yaml").safe_load(exp.read_text())["arms"]}
    rec = Recommender.load(args.bundle)
    logging = {"logging": logging_policies(exp, rec)["logging"]}
    rows, answers = [], {}  # one bundle: its answer on each request serves every policy
    for arm, t in temperature.items():
        if arm == "logging":
            continue
        t0 = time.perf_counter()
        exact_on = Exact(model)
        res = evaluate_candidate(work / "logging.parquet", rec, t, events, logging=logging, filters=filters,
                                 samples=args.samples, answers=answers, observe=exact_on)
        mask = sim["arm"] == arm
        online = ratio_estimate(*per_user_arm(sim, mask))
        exact = exact_on.value
        e = {x["estimator"]: x for x in res["estimates"]}
        rows.append({"candidate": arm, "temperature": t, "online": est(online),
                     "online_expected": float(sim["p_click"][mask].mean()), "exact_on_logged": exact,
                     "estimates": e, "reproduced": res["reproduced"],
                     "outside_log": res["candidate_mass_outside_log"],
                     "dr_covers_online": e["dr"]["low"] <= online.value <= e["dr"]["high"],
                     "dr_covers_exact": e["dr"]["low"] <= exact <= e["dr"]["high"],
                     "seconds": time.perf_counter() - t0})
        print(f"{arm}: DR {ci(e['dr'])}, online {online.value:.4f}, exact {exact:.4f}", flush=True)
    logged = sim["arm"] == "logging"
    return {"logging_temperature": temperature["logging"], "logged_slots": int(logged.sum()),
            "logging_online": est(ratio_estimate(*per_user_arm(sim, logged))), "estimator": res["estimator"],
            "reward_model": res["reward_model"], "candidates": rows, "samples": args.samples,
            "command": f"genrec ope --exposures {work / 'logging.parquet'} --bundle {args.bundle} --experiment {exp} "
                       f"--events {events} --filters {filters} --temperature T"}


def ope_markdown(o: dict) -> list[str]:
    lines = ["", "## Off-policy evaluation against online values", ""]
    if "commit" in o:
        lines += [f"Recomputed {o['created'][:10]} at commit `{o['commit']}` on the same stream, wall time "
                  f"{o['wall_seconds'] / 60:.1f} min: `{o['script_command']}`.", ""]
    lines += [f"Logging arm: Plackett-Luce at temperature {o['logging_temperature']:g} over the top candidates, "
              f"{o['logged_slots']:,} logged slots (its own online value {ci(o['logging_online'])}). Candidates: "
              "Plackett-Luce at other temperatures over the same bundle, each also served online to its own 20% "
              f"of users. Estimates per shown slot: `{o['command']}`. DR reward model: {o['reward_model']}.", ""]
    if "estimator" not in o:
        lines.append("Weights: the ratio of the candidate's and the logging policy's conditional propensities "
                     "given the logged slots above (a different list from the candidate's: biased).")
    else:
        lines.append(f"Weights: {o['estimator']}, each slot by the candidate's and the logging policy's "
                     "probabilities of its item at its position (Rao-Blackwellised Monte Carlo, "
                     f"{o['samples']:,} lists per request), both replayed on the request's history and deny "
                     "filter; unbiased when a slot's click depends on the user, the item and the position only, "
                     "as in the simulator (rel(user, item) x 1/log2(position + 2), independent slots). \"exact\": "
                     "the candidate's expected clicks per slot on the logging arm's requests under the simulator "
                     "(the estimand); \"online\": its own arm's users (other users, with click noise).")
    lines += ["", "| candidate | online clicks/slot [95% CI] | exact on logged requests | IPS | SNIPS | DR | "
              "DR covers online | DR covers exact | ESS | reproduced |", "|---|---|---:|---|---|---|---|---|---:|---:|"]
    for c in o["candidates"]:
        e, exact, covers = c["estimates"], c.get("exact_on_logged"), c.get("dr_covers_exact")
        shown = lambda v, f: "-" if v is None else f(v)  # noqa: E731 - older results lack the column
        lines.append(f"| {c['candidate']} | {ci(c['online'])} | {shown(exact, lambda x: f'{x:.4f}')} | "
                     + " | ".join(ci(e[k]) for k in ("ips", "snips", "dr"))
                     + f" | {'yes' if c['dr_covers_online'] else 'NO'} | "
                     f"{shown(covers, lambda x: 'yes' if x else 'NO')} | {e['dr']['ess']:,.0f} | "
                     f"{shown(c.get('reproduced'), lambda x: f'{x:.1%}')} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True, help="The bundle the ope stream served.")
    ap.add_argument("--work", type=Path, default=Path("runs/sim/bench"))
    ap.add_argument("--samples", type=int, default=2000, help="Monte Carlo lists per request.")
    ap.add_argument("--seed", type=int, default=0, help="The streams' seed (the response model's).")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    wall = time.perf_counter()
    section = ope(args)
    section.update({"created": dt.datetime.now(dt.UTC).isoformat(), "commit": git_commit(), "machine": machine(),
                    "script_command": " ".join([Path(sys.executable).name, *sys.argv]),
                    "wall_seconds": time.perf_counter() - wall})
    path = args.out / "experiments.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    result["ope"] = section
    write_json(path, result)
    if "streams" in result:
        from experiments import markdown

        write_text(args.out / "experiments.md", markdown(result))
    print("\n".join(ope_markdown(section)))


if __name__ == "__main__":
    sys.exit(main())
