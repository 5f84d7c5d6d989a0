"""``genrec simulate``: simulated users drive the real server through an experiment (genrec.experiment.simulate)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from genrec.cli.app import out


def simulate_cmd(
    bundle: Annotated[Path, typer.Argument(help="The bundle the server serves by default.")],
    experiment: Annotated[Path, typer.Option(help="The experiment file the server runs (genrec serve "
                                             "--experiment).")],
    out_dir: Annotated[Path, typer.Option("--out", help="New (or empty) folder for the store, the exposure log, "
                                          "the simulation log and the summary.")],
    data: Annotated[str, typer.Option(help="Dataset the response model is fitted on: each user's real past is "
                                      "the history, the real future calibrates the clicks.")] = "movielens-1m",
    requests: Annotated[int | None, typer.Option(help="Stop after this many recommendation requests.", min=1)
                        ] = None,
    minutes: Annotated[float | None, typer.Option(help="Stop after this many minutes.", min=0.01)] = None,
    days: Annotated[int, typer.Option(help="Simulated days the run spans; fresh items arrive over them.", min=1)
                    ] = 7,
    concurrency: Annotated[int, typer.Option(help="Concurrent simulated clients.", min=1, max=512)] = 16,
    workers: Annotated[int, typer.Option(help="Server worker processes (genrec serve --workers): more answer "
                                         "more requests per second where cores are free.", min=1, max=64)] = 1,
    k: Annotated[int, typer.Option("--k", help="Items per answer.", min=1, max=100)] = 10,
    pages: Annotated[float, typer.Option(help="Mean requests per visit (geometric).", min=1.0)] = 3.0,
    max_users: Annotated[int | None, typer.Option(help="Simulate a random subset of this many users.", min=2)
                         ] = None,
    max_events: Annotated[int, typer.Option(help="Events the server keeps per user (the history the model "
                                            "reads).", min=1)] = 200,
    fresh_fraction: Annotated[float, typer.Option(help="Share of the catalog held back and released during the "
                                                  "run.", min=0.0, max=0.99)] = 0.05,
    ctr_scale: Annotated[float, typer.Option(help="Multiplies the fitted click probabilities (1: as fitted).",
                                             min=1e-6)] = 1.0,
    creator_col: Annotated[str, typer.Option(help="Creator column of the bundle's items.parquet (e.g. KuaiRand's "
                                             "author_id): each shown item's creator goes into simulation.parquet "
                                             "when the column is there.")] = "author_id",
    seed: Annotated[int, typer.Option(help="Random seed (users, clicks, fresh items).")] = 0,
) -> None:
    """Simulated users drive `genrec serve --experiment` on loopback: visits by returning users over simulated
    days, clicks drawn from a response model fitted on real data (truncated SVD truth, click probability
    calibrated on each user's real future, position bias), clicks posted to /v1/events with the answer's
    request_id. Bounded by --requests and/or --minutes. Then run `genrec experiment report EXPERIMENT --store
    OUT/store.sqlite`."""
    from genrec.errors import ConfigError
    from genrec.experiment.response import ResponseConfig
    from genrec.experiment.simulate import SimulateConfig, simulate

    if requests is None and minutes is None:
        raise ConfigError("give --requests or --minutes (or both): a simulation must be bounded")
    cfg = SimulateConfig(bundle=bundle, experiment=experiment, out=out_dir, data=data, requests=requests,
                         minutes=minutes, days=days, concurrency=concurrency, workers=workers, k=k, pages=pages,
                         max_users=max_users,
                         max_events=max_events, creator_col=creator_col, seed=seed,
                         response=ResponseConfig(fresh_fraction=fresh_fraction, ctr_scale=ctr_scale, seed=seed))
    s = simulate(cfg)
    out.print(f"{s['experiment']}: {s['answered']:,} answers ({s['errors']} errors) to {s['users_seen']:,} users in "
              f"{s['run_s']:.1f} s ({s['requests_per_s']:.0f} requests/s, p50 {s['latency_ms']['p50']:.1f} ms, "
              f"p99 {s['latency_ms']['p99']:.1f} ms); {s['clicks']:,} clicks on {s['shown_slots']:,} shown slots "
              f"-> {out_dir}", highlight=False)
    out.print(f"report: genrec experiment report {experiment} --store {out_dir / 'store.sqlite'}", highlight=False)
