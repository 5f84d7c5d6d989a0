"""``genrec data synth`` and ``genrec data expand``: interaction logs of any size, written as Parquet shards.

Imported at the end of :mod:`genrec.cli`, so these commands follow the other ``data`` commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from genrec.cli.app import data_app, out
from genrec.cli.app import print_json as _print_json

OutOpt = Annotated[Path | None, typer.Option("--out", help="Folder for the Parquet shards and the metadata file.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace the shards of an existing output folder.")]
SeedOpt = Annotated[int, typer.Option(help="Random seed; the same arguments give the same files.")]
ShardOpt = Annotated[int, typer.Option(help="Target events per Parquet shard (shards end at a user boundary).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="No progress bar.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the metadata as JSON.")]


@data_app.command("synth")
def data_synth(
    events: Annotated[int, typer.Option(help="Total number of interactions (exact).")],
    items: Annotated[int, typer.Option(help="Catalog size (item ids 0..items-1).")],
    users: Annotated[int | None, typer.Option(help="Number of users (default events // 50).")] = None,
    out_dir: OutOpt = None, seed: SeedOpt = 0, shard_events: ShardOpt = 1_000_000,
    zipf: Annotated[float, typer.Option(help="Popularity exponent: rank r has weight (r + 1)^-zipf.")] = 1.0,
    min_length: Annotated[int, typer.Option(help="Minimum history length of every user.")] = 3,
    length_sigma: Annotated[float, typer.Option(help="Log-spread of the lognormal history lengths.")] = 1.0,
    gap_median: Annotated[float, typer.Option(help="Median seconds between a user's events.")] = 600.0,
    gap_sigma: Annotated[float, typer.Option(help="Log-spread of the lognormal gaps.")] = 2.0,
    period_days: Annotated[float, typer.Option(help="Users' first events spread over this many days.")] = 365.0,
    seq_prob: Annotated[float, typer.Option(help="Probability that an event steps from the previous item "
                                                 "to a neighbour in a latent order.")] = 0.2,
    seq_window: Annotated[int, typer.Option(help="Largest step in that latent order.")] = 5,
    overwrite: OverwriteOpt = False, quiet: QuietOpt = False, as_json: JsonOpt = False,
) -> None:
    """Write a parametric interaction log (power-law popularity, heavy-tailed history lengths and time gaps)."""
    from genrec.data.synth import synth, synth_config

    cfg = synth_config(events=events, items=items, users=users, seed=seed, shard_events=shard_events, zipf=zipf,
                       min_length=min_length, length_sigma=length_sigma, gap_median=gap_median,
                       gap_sigma=gap_sigma, period_days=period_days, seq_prob=seq_prob, seq_window=seq_window)
    folder = out_dir or Path(f"synth-{events}-{items}")
    meta = synth(cfg, folder, overwrite=overwrite, show_progress=not quiet)
    if as_json:
        return _print_json(meta)
    out.print(f"synth: {meta['users']:,} users, {meta['items']:,} items, {meta['events']:,} events in "
              f"{meta['shards']} shard(s), {meta['seconds']:.1f} s -> {folder}", highlight=False)


@data_app.command("expand")
def data_expand(
    name_or_path: Annotated[str, typer.Argument(help="Built-in dataset name or prepared dataset folder.")],
    factor: Annotated[float, typer.Option(help="Expected growth in events (>= 1); the exact user, item and "
                                               "event factors are reported.")],
    out_dir: OutOpt = None, seed: SeedOpt = 0, shard_events: ShardOpt = 1_000_000,
    user_blocks: Annotated[int | None, typer.Option(help="Rows of the reduced matrix (user growth).")] = None,
    item_blocks: Annotated[int | None, typer.Option(help="Columns of the reduced matrix (item growth).")] = None,
    mode: Annotated[str, typer.Option(
        help="timeline: each expanded user is a sub-sample of one real timeline; kronecker: the same, blocks "
             "independent (events copied across item blocks); shuffled: rows permuted per block, as in the paper.",
    )] = "timeline",
    strata: Annotated[int, typer.Option(help="Modes kronecker / shuffled: shuffles exchange only items of similar "
                                             "popularity, strata per doubling of rank (0 = uniform, as in the "
                                             "paper).")] = 4,
    min_length: Annotated[int, typer.Option(help="Drop expanded users with fewer events.")] = 3,
    overwrite: OverwriteOpt = False, quiet: QuietOpt = False, as_json: JsonOpt = False,
) -> None:
    """Grow a real dataset by fractal expansion (Belletti et al. 2019), keeping its power laws."""
    from genrec.data import load_dataset
    from genrec.data.expand import expand, expand_config

    cfg = expand_config(factor=factor, user_blocks=user_blocks, item_blocks=item_blocks, mode=mode,
                        strata=strata, min_length=min_length, seed=seed, shard_events=shard_events)
    ds = load_dataset(name_or_path)
    folder = out_dir or Path(f"{Path(ds.name).name}-x{factor:g}")
    meta = expand(ds, cfg, folder, overwrite=overwrite, show_progress=not quiet)
    if as_json:
        return _print_json(meta)
    f = meta["factors"]
    out.print(f"expand {ds.name} ({meta['blocks']['users']} x {meta['blocks']['items']} blocks): "
              f"{meta['users']:,} users (x{f['users']:.3g}), {meta['items']:,} items (x{f['items']:.3g}), "
              f"{meta['events']:,} events (x{f['events']:.4g}) in {meta['shards']} shard(s), "
              f"{meta['seconds']:.1f} s -> {folder}", highlight=False)
