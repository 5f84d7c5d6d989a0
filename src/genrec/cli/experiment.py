"""``genrec experiment ...`` (the exposure log and the experiment report) and ``genrec ope`` (off-policy
evaluation of a candidate bundle from a logged exposure table)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
