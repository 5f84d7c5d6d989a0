"""Results pages of online experimentation (experiments.json: A/A, A/B against interleaving, off-policy
estimates, a fresh-content arm, all from `genrec simulate` streams) and of reproduction (reproduce.json)."""

from __future__ import annotations

from typing import Any

from genrec.docs_gen.md import count, fixed, num, page, table
from genrec.docs_gen.results_common import Results, provenance


def _rate(stat: dict[str, Any]) -> str:
    return f"{stat['rate']:.1%} [{stat['low']:.1%}, {stat['high']:.1%}]"


def _ci(stat: dict[str, Any], digits: int = 4) -> str:
    return f"{num(stat['value'], digits)} [{num(stat['low'], digits)}, {num(stat['high'], digits)}]"


def _aa(data: dict[str, Any]) -> list[str]:
    rows = [[count(r["experiments"]), r["looks"], count(r["users"]), _rate(r["fixed_horizon"]),
             _rate(r["naive_peeking"]), _rate(r["always_valid"])] for r in data["aa"].values()]
    return ["## A/A: false positives",
            "Both arms serve the same bundle; one simulated stream hosts many concurrent A/A experiments, one per "
            "salt (arms recomputed from the logged user ids with the server's own assignment). Main metric: "
            "clicks per shown slot, users as the unit, alpha 5%. Naive peeking stops at the first of the looks "
            "whose fixed-horizon interval excludes 0; the always-valid test uses the confidence sequence.",
            table(["experiments", "looks", "users", "fixed horizon", "naive peeking", "always-valid"], rows)]


def _ab(data: dict[str, Any]) -> list[str]:
    r = data["ab_vs_interleaving"]
    ab, il = r["ab"], r["interleaving"]
    rows = [["A/B", count(ab["users"]), _ci(ab["difference"]), count(ab["users_for_80"]),
             count(ab["users_for_80_analytic"])],
            ["team-draft interleaving", count(il["users"]), _ci(il["preference_strong"]), count(il["users_for_80"]),
             count(il["users_for_80_analytic"])]]
    return ["## A/B against interleaving",
            "A weak and a strong bundle; the simulator's expected clicks per slot are "
            f"{num(ab['expected_ctr']['weak'])} and {num(ab['expected_ctr']['strong'])}. Users needed for 80% power "
            f"by resampling users of each stream: interleaving needs {r['ratio_users_needed']:.1f}x fewer (analytic "
            f"{r['ratio_users_needed_analytic']:.1f}x).",
            table(["design", "users", "effect (A/B: difference in clicks per slot; interleaving: preference)",
                   "users for 80% power", "analytic"], rows)]


def _ope(data: dict[str, Any]) -> list[str]:
    r = data["ope"]
    rows = []
    for c in r["candidates"]:
        est = c["estimates"]
        rows.append([c["candidate"], _ci(c["online"]), num(c["online_expected"]), num(c.get("exact_on_logged")),
                     _ci(est["ips"]), _ci(est["snips"]), _ci(est["dr"]),
                     "yes" if est["dr"]["low"] <= c["online_expected"] <= est["dr"]["high"] else "no",
                     count(est["dr"]["ess"])])
    return ["## Off-policy estimates against the simulated truth",
            f"Logging arm: Plackett-Luce at temperature {r['logging_temperature']} ({count(r['logged_slots'])} "
            f"logged slots); estimator: {r.get('estimator', 'IPS')}; DR reward model: {r['reward_model']}. Each "
            "candidate was also served online to its own users: the realised clicks per slot (with click noise) "
            "and the simulator's expected value for those users (the truth the estimates aim at).",
            table(["candidate", "online [95% CI]", "expected (simulator)", "exact on logged requests", "IPS",
                   "SNIPS", "DR", "DR covers expected", "ESS"], rows)]


def _fresh(data: dict[str, Any]) -> list[str]:
    r = data.get("fresh")
    if not r:
        return []
    health = r["health"]
    rows = [[arm, count(h["exposures"]), num(h["fresh_share"]), num(h["item_gini"], 3), num(h["coverage"], 3),
             count(h["new_items"]), num(h["new_reached_k"], 2)] for arm, h in health.items()]
    return ["## A fresh-content arm",
            f"An arm reserving {data['fresh_share']:.0%} of the slots for new items (semantic-ID neighbours of the "
            f"history first). Clicks per slot, fresh minus control: {_ci(r['ctr']['difference'])}; share of slots "
            f"on items released during the run: {_ci(r['new_item_share']['difference'])}.",
            table(["arm", "exposures", "fresh share", "item Gini", "coverage", "new items", "new items reaching k"],
                  rows)]


def experiments_page(res: Results) -> str:
    if not res.has("experiments"):
        return page("Online experiments", "No experiments result file yet: run `python benchmarks/experiments.py`.")
    data = res.load("experiments")
    streams = [[name, count(s["answered"]), count(s["users_seen"]), count(s["clicks"]), fixed(s["requests_per_s"], 0),
                f"{fixed(s['latency_ms']['p50'], 0)} / {fixed(s['latency_ms']['p99'], 0)}"]
               for name, s in data["streams"].items()]
    return page("Online experiments",
                "Simulated MovieLens-1M users (their real past as history, a response model fitted on their real "
                "future) drive `genrec serve --experiment` over HTTP (`genrec simulate`); the statistics of "
                "`genrec experiment report` and `genrec ope` are checked against what the simulator knows. See "
                "the [experiments tutorial](../experiments.md).",
                provenance(data, "experiments") + f" Command: `{data['command']}`",
                table(["stream", "answers", "users", "clicks", "requests/s", "p50 / p99 ms"], streams),
                *_aa(data), *_ab(data), *_ope(data), *_fresh(data), *_speed(res))


def _speed(res: Results) -> list[str]:
    """How fast the simulator drives a server, and what serving an experiment adds to a request."""
    out = []
    if res.has("simulate_speed"):
        data = res.load("simulate_speed")
        rows = [[str(r["workers"]), count(r["requests"]), fixed(r["requests_per_s"], 0),
                 f"{fixed(r['p50_ms'], 0)} / {fixed(r['p99_ms'], 0)}"] for r in data["runs"]]
        out += ["## Simulator speed", f"`python benchmarks/simulate_speed.py`, {data['concurrency']} simulated "
                "clients and the server on the same cores.", provenance(data, "simulate_speed"),
                table(["server workers", "requests", "requests/s", "p50 / p99 ms"], rows)]
    if res.has("experiment_overhead"):
        data = res.load("experiment_overhead")
        rows = [[stat.removesuffix("_ms"), fixed(v["plain"], 2), fixed(v["experiment"], 2), f"{v['difference']:+.2f}",
                 f"[{v['low']:+.2f}, {v['high']:+.2f}]"] for stat, v in data["summary"].items()]
        out += ["## Cost of an experiment per request",
                f"`python benchmarks/experiment_overhead.py`: {len(data['rounds'])} rounds, each a plain server and "
                "one serving an A/A experiment with its durable exposure log, side by side; one client sends every "
                f"history to both in random order ({count(data['requests'])} requests per server).",
                provenance(data, "experiment_overhead"),
                table(["latency (ms)", "plain", "experiment", "difference", "95% interval"], rows)]
    return out


def reproduction_block(res: Results) -> list[str]:
    """The reproduction check (benchmarks/reproduce.py): committed metrics beside a fresh retraining."""
    if not res.has("reproduce"):
        return []
    data = res.load("reproduce")
    rows = []
    for part in data["parts"]:
        for r in part["rows"]:
            c, n = r["committed"], r["rerun"]
            rows.append([f"`{part['config']}`", r["metric"], f"{num(c['value'])} [{num(c['ci_low'])}, "
                         f"{num(c['ci_high'])}]", f"{num(n['value'])} [{num(n['ci_low'])}, {num(n['ci_high'])}]",
                         "yes" if r["reproduces"] else "no"])
    return ["## Reproduction",
            "One retrieval and one ranking config retrained from scratch on today's code (`python "
            "benchmarks/reproduce.py`); a metric reproduces when each value lies inside the other run's 95% "
            "interval.", provenance(data, "reproduce"),
            table(["config", "metric", "committed [95% CI]", "rerun [95% CI]", "reproduces"], rows)]
