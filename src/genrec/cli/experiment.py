"""``genrec experiment ...`` (the exposure log and the experiment report) and ``genrec ope`` (off-policy
evaluation of a candidate bundle from a logged exposure table)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer

from genrec.cli.app import out

experiment_app = typer.Typer(no_args_is_help=True, help="Online experiments: exposure log export and reports.")
StoreOpt = Annotated[str, typer.Option("--store", help="The store genrec serve logged to: a SQLite file or a "
                                       "redis:// URL.")]


@experiment_app.command("export-exposures")
def export_exposures_cmd(
    store: StoreOpt,
    out_file: Annotated[Path, typer.Option("--out", help="Parquet file to write (one row per shown slot).")],
    experiment: Annotated[str | None, typer.Option(help="Only this experiment's exposures.")] = None,
) -> None:
    """Export the exposure log (what every answer showed, with engagements linked by request_id) to Parquet."""
    from genrec.experiment.exposures import export_exposures

    rows = export_exposures(store, out_file, experiment)
    out.print(f"{rows:,} shown slots -> {out_file}", highlight=False)


@experiment_app.command("report")
def report_cmd(
    experiment_file: Annotated[Path, typer.Argument(help="The experiment file the server ran.")],
    store: StoreOpt,
    catalog: Annotated[Path | None, typer.Option(help="Bundle folder or items Parquet file: creator health per "
                                                 "arm when it has --creator-col.")] = None,
    creator_col: Annotated[str, typer.Option(help="Creator column of --catalog.")] = "author_id",
    fresh_column: Annotated[str | None, typer.Option(help="Publish-time column of --catalog that decides which "
                                                     "items are fresh (default: the one the arms name, if any).")
                            ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    plots: Annotated[Path | None, typer.Option(help="Folder to write SVG plots into: the metric per arm and the "
                                               "differences over time with their always-valid bands.")] = None,
    points: Annotated[int, typer.Option(help="Looks (evenly spaced times) the plots show.", min=2, max=1000)] = 40,
) -> None:
    """Per arm: users, exposures, engagements per exposure; differences against the first arm (delta method,
    CUPED, always-valid interval), the sample-ratio check; interleaving preference; creator and content health.
    Fresh items are decided as the server decides them: the catalog's publish column when given, else items the
    model trained on (--catalog: a bundle) are never fresh, else an item's first logged exposure or event in the
    store, from before the experiment too. With --plots, the metrics over time as SVG files
    (genrec.experiment.timeline)."""
    from genrec.cli.app import print_json
    from genrec.errors import ConfigError
    from genrec.experiment.config import load_experiment
    from genrec.experiment.exposures import open_log
    from genrec.experiment.report import build_report, read_catalog, read_creators

    exp = load_experiment(experiment_file)
    named = {a.serving.fresh_column for a in exp.arms if a.serving.fresh_column is not None}
    fresh_column = fresh_column or (named.pop() if len(named) == 1 else None)
    table = read_catalog(catalog)
    if fresh_column is not None and table is None:
        raise ConfigError(f"--fresh-column {fresh_column}: give the catalog that holds it (--catalog)")
    log = open_log(store)
    try:
        exposures, engagements = log.exposures(), log.engagements()
    finally:
        log.close()
    report = build_report(exp, exposures, engagements, read_creators(catalog, creator_col), table, fresh_column)
    if plots is not None:
        from genrec.experiment.plots import write_plots
        from genrec.experiment.timeline import timeline

        report["plots"] = [str(p) for p in write_plots(timeline(exp, exposures, engagements, points), plots)]
    if as_json:
        return print_json(_finite(report))
    _print_report(report)


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _ci(e: dict | None, pct: bool = False) -> str:
    if e is None:
        return "n/a (too few users)"
    f = (lambda x: f"{100 * x:+.2f}%") if pct else (lambda x: f"{x:.4f}")
    return f"{f(e['value'])} [{f(e['low'])}, {f(e['high'])}]"


def _print_report(r: dict[str, Any]) -> None:
    from rich.table import Table

    out.print(f"[bold]{r['experiment']}[/] ({r['mode']}): {r['exposures']:,} exposures, {r['engagements']:,} "
              f"engagements, {r['anonymous_exposures']:,} anonymous exposures (not in the statistics)")
    srm = r.get("srm")
    if srm is not None and srm["mismatch"]:
        out.print(f"[bold white on red] SAMPLE RATIO MISMATCH [/] users per arm {list(srm['observed'])}, expected "
                  f"{[round(x, 1) for x in srm['expected']]} (p = {srm['p_value']:.2g}): assignment or logging is "
                  "broken; do not trust the numbers below.")
    elif srm is not None:
        out.print(f"sample ratio: ok (p = {srm['p_value']:.3f})")
    if "arms" in r and r["mode"] == "ab":
        table = Table(title="arms")
        for col in ("arm", "users", "exposures", "engagements", "engagements / exposure (95% CI)"):
            table.add_column(col)
        for a in r["arms"]:
            table.add_row(a["arm"], f"{a['users']:,}", f"{a['exposures']:,}", f"{a['engagements']:,}",
                          _ci(a["engagements_per_exposure"]))
        out.print(table)
        table = Table(title="against the first arm")
        for col in ("arm", "difference (95% CI)", "relative", "always-valid", "CUPED"):
            table.add_column(col)
        for d in r["differences"]:
            seq = d["sequential"]
            table.add_row(d["arm"], _ci(d["absolute"]), _ci(d["relative"], pct=True),
                          "n/a" if seq is None else f"[{seq['low']:.4f}, {seq['high']:.4f}]",
                          f"yes (variance -{100 * d['variance_reduction']:.0f}%)" if d["cuped"] else "no pre-period")
        out.print(table)
    if "interleave" in r:
        i = r["interleave"]
        out.print(f"interleaving {i['arms'][0]} vs {i['arms'][1]}: {i['impressions']:,} impressions; preference for "
                  f"{i['arms'][1]}: {_ci(i.get('preference_b'))} (> 0: {i['arms'][1]} better)")
    if r["health"]:
        table = Table(title="content health" + (" (with creators)" if r["by_creator"] else ""))
        fields = ("exposures", "fresh_share", "item_gini", "creator_gini", "new_items", "median_time_to_k_s")
        table.add_column("arm")
        for col in fields:
            table.add_column(col)
        for arm, h in r["health"].items():
            table.add_row(arm, *("-" if h[f] is None else f"{h[f]:.3g}" if isinstance(h[f], float) else str(h[f])
                                 for f in fields))
        out.print(table)
    for arm, c in (r.get("creators") or {}).items():
        table = Table(title=f"arm {arm}: {c['creators']:,} creators shown, the most exposed")
        for col in ("creator", "exposures", "items", "fresh_exposures", "share"):
            table.add_column(col)
        for row in c["top"][:5]:
            table.add_row(str(row["creator"]), f"{row['exposures']:,}", str(row["items"]), str(row["fresh_exposures"]),
                          f"{row['share']:.3f}")
        out.print(table)
    for path in r.get("plots", []):
        out.print(f"plot: {path}", highlight=False)


def ope_cmd(
    exposures: Annotated[Path, typer.Option(help="Exposure table (genrec experiment export-exposures).")],
    bundle: Annotated[Path, typer.Option(help="The candidate bundle to evaluate.")],
    experiment: Annotated[Path, typer.Option(help="The experiment file the server ran: each exploring arm's "
                                             "bundle and exploration (the logging policies).")],
    logging_bundle: Annotated[Path | None, typer.Option(help="The bundle the server served by default (arms "
                                                        "without their own bundle; default: --bundle).")] = None,
    events: Annotated[Path | None, typer.Option(help="Parquet of user_id, item_id, time: each user's history "
                                                "before an exposure (default: the log's engaged slots).")] = None,
    filters: Annotated[Path | None, typer.Option(help="Parquet of request_id, deny (a list of item ids): the "
                                                 "requests' deny filters, so both policies are replayed on the "
                                                 "same candidates.")] = None,
    temperature: Annotated[float, typer.Option(help="The candidate's policy: 0 shows its best items in order; "
                                               "> 0 samples them by Plackett-Luce at this temperature.", min=0)
                           ] = 0.0,
    samples: Annotated[int, typer.Option(help="Monte Carlo lists per request for the position probabilities.",
                                         min=100)] = 2000,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Off-policy estimates (IPS, SNIPS, doubly robust; position-based: each slot weighted by the candidate's and
    the logging policy's probabilities of showing its item at its position) of a candidate bundle's engagements
    per slot from logged answers with propensities, with 95% intervals and effective sample sizes. Assumes a
    slot's engagement depends on the request, the item and the position only (no cascade)."""
    from rich.table import Table

    from genrec.cli.app import print_json
    from genrec.experiment.offpolicy import evaluate_candidate, logging_policies
    from genrec.serve.recommender import Recommender

    rec = Recommender.load(bundle)
    default = rec if logging_bundle is None or logging_bundle == bundle else Recommender.load(logging_bundle)
    result = evaluate_candidate(exposures, rec, temperature, events, logging=logging_policies(experiment, default),
                                filters=filters, samples=samples)
    if as_json:
        return print_json(_finite(result))
    table = Table(title=f"{bundle}: {result['slots']:,} logged slots in {result['requests']:,} requests "
                  f"(logged value {result['logged_value']:.4f})")
    for col in ("estimator", "value (95% CI)", "effective sample size"):
        table.add_column(col)
    for e in result["estimates"]:
        table.add_row(e["estimator"], _ci(e), f"{e['ess']:,.1f}")
    out.print(table)
    out.print(f"DR reward model: {result['reward_model']}", highlight=False)
    out.print(f"logged requests whose propensities the replayed logging policy reproduces: "
              f"{result['reproduced']:.1%}; candidate probability on items the logging policy could not show: "
              f"{result['candidate_mass_outside_log']:.1%}", highlight=False)
    if result["reproduced"] < 0.95:
        out.print("[bold]warning[/]: many logged requests are not reproduced (history or filters differ from what "
                  "the server saw): their slots are weighted by the wrong probabilities")
