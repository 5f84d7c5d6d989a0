"""The ``genrec`` command: one verb per stage, each a thin call into a public Python function."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from genrec.cli.app import app, data_app, err, out
from genrec.cli.app import print_json as _print_json
from genrec.cli.content import content_app
from genrec.cli.experiment import experiment_app, ope_cmd
from genrec.cli.serve import serve_cmd
from genrec.cli.simulate import simulate_cmd
from genrec.cli.tokenize import tokenize_cmd, tokenize_new_cmd
from genrec.errors import ConfigError, GenrecError

app.add_typer(content_app, name="content")
app.add_typer(experiment_app, name="experiment")
app.command("tokenize")(tokenize_cmd)
app.command("tokenize-new")(tokenize_new_cmd)
app.command("serve")(serve_cmd)
app.command("ope")(ope_cmd)
app.command("simulate")(simulate_cmd)


def main() -> None:
    """Entry point: genrec errors become one or two lines on stderr and exit status 2, never a traceback."""
    try:
        app()  # standalone mode: usage errors print a message and exit 2 on their own
    except GenrecError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)


# --- shared options ------------------------------------------------------------------------------------

FormatOpt = Annotated[str, typer.Option("--format", help="File format: auto, parquet, csv, tsv, sequences.")]
UserCol = Annotated[str, typer.Option("--user-col", help="User id column of a file.")]
ItemCol = Annotated[str, typer.Option("--item-col", help="Item id column of a file.")]
TimeCol = Annotated[str | None, typer.Option("--time-col", help="Timestamp column of a file.")]
SepOpt = Annotated[str | None, typer.Option("--sep", help="CSV delimiter (default ',' for csv, tab for tsv).")]
SchemaOpt = Annotated[Path | None, typer.Option("--schema", help="YAML file describing the file's columns.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _load(name_or_path: str, fmt: str = "auto", user_col: str = "user_id", item_col: str = "item_id",
          time_col: str | None = None, sep: str | None = None, schema: Path | None = None, dedup: bool = False,
          kcore: int | None = None):
    from genrec.data import InteractionSchema, load_dataset, load_schema

    items_path, item_schema = None, None
    if schema is not None:
        ds_schema = load_schema(schema)
        inter = ds_schema.interactions
        items_path, item_schema = ds_schema.items_path, ds_schema.items
        if ds_schema.interactions_path and name_or_path in ("-", ""):
            name_or_path = ds_schema.interactions_path
    else:
        try:
            inter = InteractionSchema(format=fmt, user=user_col, item=item_col, timestamp=time_col, delimiter=sep)
        except Exception as e:  # pydantic's message names the field
            raise ConfigError(f"bad column options: {e}") from None
    return load_dataset(name_or_path, inter, items_path=items_path, item_schema=item_schema, dedup=dedup,
                        kcore=kcore)


# --- data ----------------------------------------------------------------------------------------------

@data_app.command("list")
def data_list(as_json: JsonOpt = False) -> None:
    """List the built-in datasets and whether a copy is on this machine."""
    from genrec.data import REGISTRY, data_home

    rows = [{"name": d.name, "available": d.available(), "folder": str(d.root()), "description": d.description,
             "licence": d.licence} for d in REGISTRY.values()]
    if as_json:
        return _print_json({"data_dir": str(data_home()), "datasets": rows})
    table = Table(title=f"built-in datasets (data dir: {data_home()})")
    for col in ("name", "here", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], "yes" if r["available"] else "no", r["description"])
    out.print(table)


@data_app.command("stats")
def data_stats(
    name_or_path: Annotated[str, typer.Argument(help="Built-in dataset name, prepared folder, or file.")],
    as_json: JsonOpt = False, fmt: FormatOpt = "auto", user_col: UserCol = "user_id",
    item_col: ItemCol = "item_id", time_col: TimeCol = None, sep: SepOpt = None, schema: SchemaOpt = None,
) -> None:
    """Users, items, interactions and the sequence length distribution."""
    from genrec.data.prepared import PreparedDataset, is_prepared_folder

    if is_prepared_folder(name_or_path):  # the manifest holds them: no need to read the events
        stats = PreparedDataset.open(name_or_path).stats()
    else:
        stats = _load(name_or_path, fmt, user_col, item_col, time_col, sep, schema).stats()
    if as_json:
        return _print_json(stats)
    table = Table(title=f"{stats['name']}", show_header=False)
    for key in ("users", "items", "interactions"):
        table.add_row(key, f"{stats[key]:,}")
    table.add_row("density", f"{stats['density']:.5f}")
    sl = stats["sequence_length"]
    table.add_row("sequence length", "  ".join(f"{k} {v:,.1f}" if isinstance(v, float) else f"{k} {v:,}"
                                               for k, v in sl.items()))
    table.add_row("timestamps", "yes" if stats["has_timestamps"] else "no")
    table.add_row("item catalog", "yes" if stats["has_item_table"] else "no")
    out.print(table)


@data_app.command("download")
def data_download(name: Annotated[str, typer.Argument(help="Built-in dataset name.")]) -> None:
    """Fetch a built-in dataset from its public source into the data dir, verifying checksums."""
    from genrec.data import download, get_builtin

    root = download(get_builtin(name), progress=lambda m: err.print(m, highlight=False))
    out.print(f"{name}: files in {root}")


@data_app.command("verify")
def data_verify(name: Annotated[str, typer.Argument(help="Built-in dataset name.")], as_json: JsonOpt = False) -> None:
    """Check the sha256 of every file of a built-in dataset; exit 2 on a mismatch or a missing required file."""
    from genrec.data import get_builtin, verify

    spec = get_builtin(name)
    status = verify(spec)
    if as_json:
        _print_json(status)
    else:
        for path, s in status.items():
            out.print(f"{s:>9}  {path}", highlight=False)
    required = {f.path for f in spec.files if f.required}
    if any(s == "MISMATCH" or (s == "missing" and p in required) for p, s in status.items()):
        raise GenrecError(f"{name}: some files are missing or do not match their checksum")


@data_app.command("prepare")
def data_prepare(
    inputs: Annotated[list[str], typer.Argument(help="Built-in dataset name, or Parquet / CSV files, folders or "
                                                "globs (quote a glob; files are read in sorted path order).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the prepared dataset to.")],
    dedup: Annotated[bool, typer.Option(help="Keep only the first (user, item) occurrence.")] = False,
    kcore: Annotated[int | None, typer.Option(help="Drop users and items with fewer interactions.", min=1)] = None,
    fmt: FormatOpt = "auto", user_col: UserCol = "user_id", item_col: ItemCol = "item_id", time_col: TimeCol = None,
    sep: SepOpt = None, schema: SchemaOpt = None,
    engine: Annotated[str, typer.Option(help="auto (memory for small inputs, duckdb for large), memory, duckdb "
                                        "or spark.")] = "auto",
    memory_limit: Annotated[str, typer.Option("--memory-limit", help="Memory the engine may use (4GB, 512MB, "
                                              "8GiB); it spills to disk beyond.")] = "4GB",
    shards: Annotated[int | None, typer.Option(help="Event shards (default: about 2-4 million events each).",
                                               min=1)] = None,
    threads: Annotated[int | None, typer.Option(help="Engine threads (default: every core).", min=1)] = None,
    temp_dir: Annotated[Path | None, typer.Option("--temp-dir", help="Folder for staged input and spill files "
                                                  "(default: next to the output).")] = None,
    spark_master: Annotated[str | None, typer.Option("--spark-master", help="Spark master URL (default "
                                                     "local[threads]); with --engine spark.")] = None,
) -> None:
    """Validate, map ids, order chronologically and write the sharded prepared layout (docs/data-layout.md),
    in memory or out of core; every verb loads the folder."""
    from genrec.data import InteractionSchema, PrepareConfig, load_schema, prepare_to_folder

    items_path, item_schema = None, None
    if schema is not None:
        ds_schema = load_schema(schema)
        inter, items_path, item_schema = ds_schema.interactions, ds_schema.items_path, ds_schema.items
        if ds_schema.interactions_path and inputs in (["-"], [""]):
            inputs = [ds_schema.interactions_path]
    else:
        try:
            inter = InteractionSchema(format=fmt, user=user_col, item=item_col, timestamp=time_col, delimiter=sep)
        except Exception as e:  # pydantic's message names the field
            raise ConfigError(f"bad column options: {e}") from None
    config = PrepareConfig.from_options(engine=engine, dedup=dedup, kcore=kcore, shards=shards,
                                        memory_limit=memory_limit, threads=threads, temp_dir=temp_dir,
                                        spark_master=spark_master)
    prepared = prepare_to_folder(inputs, out_dir, schema=inter, items_path=items_path, item_schema=item_schema,
                                 config=config, progress=lambda m: err.print(m, highlight=False))
    m = prepared.manifest
    out.print(f"{m['name']}: {m['users']:,} users, {m['items']:,} items, {m['interactions']:,} interactions in "
              f"{m['shards']} shards ({m['engine']}) -> {out_dir}", highlight=False)


# --- eval / compare ------------------------------------------------------------------------------------

def _parse_ks(text: str) -> list[int]:
    try:
        ks = sorted({int(k) for k in text.split(",") if k.strip()})
    except ValueError:
        raise ConfigError(f"--k expects comma-separated integers, got {text!r}") from None
    if not ks or ks[0] < 1:
        raise ConfigError(f"--k values must be >= 1, got {text!r}")
    return ks


@app.command("eval")
def eval_cmd(
    model: Annotated[str, typer.Option(help="Baseline to fit and evaluate: popularity or itemknn.")],
    dataset: Annotated[str, typer.Option(help="Built-in dataset name, prepared folder, or interaction file.")],
    split: Annotated[str, typer.Option(help="loo (leave-one-out) or temporal (global time cut).")] = "loo",
    on: Annotated[str, typer.Option(help="Evaluate on 'test' (report once) or 'valid' (tuning).")] = "test",
    k: Annotated[str, typer.Option("--k", help="Cut-offs, comma-separated.")] = "5,10,20,50,200",
    exclude_seen: Annotated[bool, typer.Option("--exclude-seen/--include-seen",
                                               help="Exclude items already in the history.")] = True,
    sampled_negatives: Annotated[int | None, typer.Option(
        help="Rank against N sampled negatives instead of the full catalog (labelled SAMPLED).", min=1)] = None,
    param: Annotated[list[str] | None, typer.Option(help="Model setting key=value (repeatable).")] = None,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% intervals.", min=10)] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Run folder (default runs/MODEL-DATASET-PART).")] = None,
    as_json: JsonOpt = False, fmt: FormatOpt = "auto", user_col: UserCol = "user_id", item_col: ItemCol = "item_id",
    time_col: TimeCol = None, sep: SepOpt = None, schema: SchemaOpt = None,
) -> None:
    """Fit a baseline on the training split and rank the whole catalog for every evaluation case."""
    from genrec.train import parse_params, run_baseline

    if on not in ("test", "valid"):
        raise ConfigError(f"--on must be 'test' or 'valid', got {on!r}")
    ks = _parse_ks(k)
    params = parse_params(param or [])
    ds = _load(dataset, fmt, user_col, item_col, time_col, sep, schema)
    folder = out_dir or Path("runs") / f"{model}-{ds.name}-{on}"
    run = run_baseline(model, ds, params=params, split=split, part=on, ks=ks, exclude_seen=exclude_seen,
                       sampled_negatives=sampled_negatives, n_boot=bootstrap, seed=seed, out=folder,
                       show_progress=not as_json)
    ev = run.evaluation
    if as_json:
        return _print_json({"run": str(folder), "config": run.config, "metrics": ev.summary,
                            "aggregate": ev.aggregate, "info": ev.info})
    title = f"{model} on {ds.name}: {on} split, {ev.info['protocol']}, {ev.info['cases']:,} users"
    if sampled_negatives:
        title = "SAMPLED METRICS (not full-catalog) - " + title
    table = Table(title=title)
    for col in ("metric", "mean", "95% CI"):
        table.add_column(col, justify="right" if col != "metric" else "left")
    for name, v in ev.summary.items():
        table.add_row(name, f"{v['mean']:.4f}", f"[{v['ci_low']:.4f}, {v['ci_high']:.4f}]")
    for name, v in ev.aggregate.items():
        table.add_row(name, f"{v:.4f}", "")
    out.print(table)
    out.print(f"run folder: {folder}", highlight=False)


@app.command("compare")
def compare_cmd(
    run_a: Annotated[Path, typer.Argument(help="Run folder A (the reference).")],
    run_b: Annotated[Path, typer.Argument(help="Run folder B.")],
    metric: Annotated[list[str] | None, typer.Option(help="Metric(s) to compare (default: all).")] = None,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples.", min=10)] = 1000,
    as_json: JsonOpt = False,
) -> None:
    """Paired test of B against A on the same users: difference, 95% interval, p-value."""
    from genrec.eval import compare_runs

    res = compare_runs(run_a, run_b, metric, n_boot=bootstrap)
    if as_json:
        return _print_json(res)
    table = Table(title=f"B - A on {res['users']:,} paired users ({res['part']} split)\nA = {run_a}\nB = {run_b}")
    for col in ("metric", "A", "B", "B - A", "95% CI", "p (t-test)", "p (Wilcoxon)"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for name, r in res["metrics"].items():
        table.add_row(name, f"{r['mean_a']:.4f}", f"{r['mean_b']:.4f}", f"{r['diff']:+.4f}",
                      f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]", _p(r["p_value"]), _p(r["p_wilcoxon"]))
    out.print(table)
    if res["sampled_runs"]:
        out.print(f"[bold yellow]warning:[/] run(s) {', '.join(res['sampled_runs'])} used SAMPLED metrics")


def _ranking_table(cfg, result, folder: Path) -> None:
    res = result.test
    rows = next(iter(res["tasks"].values()))["rows"]
    table = Table(title=f"{cfg.model.name} on {cfg.dataset}: test impressions ({rows:,} rows, best epoch "
                  f"{result.best_epoch}, valid {cfg.eval.select_metric} {result.best_valid:.4f})")
    for col in ("task", "AUC", "GAUC [95% CI]", "NE", "ECE", "MSE"):
        table.add_column(col, justify="right" if col != "task" else "left")
    for task, r in res["tasks"].items():
        m = r["metrics"]
        if r["kind"] == "binary":
            g = m["gauc"]
            table.add_row(task, f"{m['auc']['value']:.4f}", f"{g['value']:.4f} [{g['ci_low']:.4f}, {g['ci_high']:.4f}]",
                          f"{m['normalized_entropy']['value']:.4f}", f"{m['ece']['value']:.4f}", "")
        else:
            table.add_row(task, "", "", "", "", f"{m['mse']['value']:.4f}")
    out.print(table)
    out.print(f"run folder: {folder}", highlight=False)


def _p(p: float) -> str:
    return "<1e-4" if p < 1e-4 else f"{p:.4f}"


@app.command("train")
def train_cmd(
    config: Annotated[Path, typer.Option(help="Run config YAML (configs/<dataset>/<model>.yaml).")],
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config field, e.g. "
                                                   "train.epochs=5 (repeatable).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Run folder (default: the config's `out`, "
                                                 "else runs/<config stem>).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress output.")] = False,
) -> None:
    """Train a retrieval model (sasrec, hstu, tiger) or a ranking model (ranker, dcn, din, gbdt) with validation-based
    early stopping; evaluate the test split once."""
    from genrec.train import parse_params, trainer_class
    from genrec.train.config import load_config

    cfg = load_config(config, parse_params(set_ or []))
    folder = out_dir or Path(cfg.out or Path("runs") / config.stem)
    result = trainer_class(cfg)(cfg, folder, show_progress=not quiet).fit(resume=resume)
    if result.test is None:  # a non-zero rank under torchrun
        return
    if isinstance(result.test, dict):  # a ranking model: per-task metrics on the test impressions
        _ranking_table(cfg, result, folder)
        return
    ev = result.test
    table = Table(title=f"{cfg.model.name} on {cfg.dataset}: test split, full catalog, {ev.info['cases']:,} users "
                  f"(best epoch {result.best_epoch}, valid {cfg.eval.select_metric} {result.best_valid:.4f})")
    for col in ("metric", "mean", "95% CI"):
        table.add_column(col, justify="right" if col != "metric" else "left")
    for name in ("hr@10", "ndcg@10", "hr@50", "ndcg@50", "hr@200", "ndcg@200", "mrr"):
        if name in ev.summary:
            v = ev.summary[name]
            table.add_row(name, f"{v['mean']:.4f}", f"[{v['ci_low']:.4f}, {v['ci_high']:.4f}]")
    out.print(table)
    out.print(f"run folder: {folder}", highlight=False)


@app.command("export")
def export_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A finished training run folder.")],
    bundle: Annotated[Path, typer.Option("--out", help="New bundle folder (must not exist).")],
    content: Annotated[Path | None, typer.Option(help="Item embedding folder ('genrec content encode') to ship "
                                                 "with the bundle: lets a text query steer recommendations.")
                       ] = None,
    ann: Annotated[str, typer.Option(help="Approximate top-k index: auto (exact up to --ann-threshold items, "
                                     "then IVF-flat while it fits --ann-memory-mb, else IVF-PQ), flat (exact), "
                                     "ivf, ivfpq. Needs the ann extra (faiss-cpu).")] = "auto",
    ann_memory_mb: Annotated[float, typer.Option(min=1.0, help="Memory budget of the index (MB) that ann=auto "
                                                 "chooses the index kind by.")] = 1024.0,
    ann_threshold: Annotated[int, typer.Option(min=1, help="Catalog size above which ann=auto builds an index.")
                             ] = 100_000,
    ann_recall: Annotated[float, typer.Option(min=0.01, max=1.0, help="Recall@10 against exact top-10 that the "
                                              "index's nprobe is tuned to reach.")] = 0.95,
    ranker: Annotated[Path | None, typer.Option(help="A finished ranking run (ranker, dcn, din) to serve as the "
                                                "second stage: it reorders retrieval's top candidates and every "
                                                "answer carries per-task predictions.")] = None,
    ranker_candidates: Annotated[int, typer.Option(min=1, help="Retrieval candidates the ranker reorders.")] = 200,
    ranker_weight: Annotated[str, typer.Option(help="final = z(retrieval) + W * z(ranker score) over the "
                                               "candidates; 'none' = the ranker alone. Take the W that "
                                               "benchmarks/two_stage.py chose on validation.")] = "1.0",
    ranker_blend: Annotated[str | None, typer.Option(help="Ranker score = sum of weight x task logit, as "
                                                     "task=weight,... (default: the click / rate logit).")] = None,
    ranker_time_scale: Annotated[float, typer.Option(min=1e-9, help="Event timestamps x this = the ranker's "
                                                     "unix ms (1000 when events carry seconds).")] = 1.0,
    generator: Annotated[Path | None, typer.Option(help="A finished semantic-ID generator run (tiger, hstu-gen) over "
                                                   "the same items to serve next to the ID model: requests choose it "
                                                   "with retriever=generator (the web page has a switch); a tiger "
                                                   "trained with model.query decodes conditioned on the request's "
                                                   "query.")
                         ] = None,
) -> None:
    """Write an immutable, checksummed bundle that `genrec.serve.Recommender.load` can serve."""
    from genrec.serve import export_bundle, load_manifest

    options = None
    if ranker is not None:
        options = {"candidates": ranker_candidates, "time_scale": ranker_time_scale,
                   "weight": _optional_float(ranker_weight, "--ranker-weight"),
                   "blend": _weights(ranker_blend, "--ranker-blend") if ranker_blend else None}
    path = export_bundle(run_dir, bundle, content=content, ann=ann, ann_threshold=ann_threshold,
                         ann_recall=ann_recall, ranker=ranker, ranker_options=options, ann_memory_mb=ann_memory_mb,
                         generator=generator)
    m = load_manifest(path)
    out.print(f"bundle {m['version']} ({m['model']} on {m['dataset']}) -> {path}", highlight=False)
    if m.get("ranker"):
        r = m["ranker"]
        out.print(f"ranking stage: {r['model']} on {r['dataset']} ({', '.join(r['tasks'])}); reorders the top "
                  f"{r['candidates']} (weight {r['weight']}, blend {r['blend']}); knows "
                  f"{r['retrieval_items_known']:,} of the retrieval catalog's items", highlight=False)
    if m.get("ann"):
        a = m["ann"]
        out.print(f"approximate index: {a['kind']}, nlist {a['nlist']}, nprobe {a['nprobe']}: recall@10 "
                  f"{a['recall@10']:.3f}, recall@100 {a['recall@100']:.3f} against exact ({a['queries']} "
                  "sample queries)", highlight=False)


def _optional_float(text: str, flag: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise typer.BadParameter(f"{flag}: a number or 'none', got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise typer.BadParameter(f"{flag}: must be finite, got {text!r}")
    return value


def _weights(text: str, flag: str) -> dict[str, float]:
    """'a=1,b=0.5' -> {'a': 1.0, 'b': 0.5}."""
    out = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"{flag}: expected task=weight[,task=weight...], got {text!r}")
        out[name.strip()] = _optional_float(value, flag) or 0.0
    return out


@app.command("quickstart")
def quickstart_cmd(
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("runs/quickstart"),
    config: Annotated[Path | None, typer.Option(help="Run config YAML instead of the embedded defaults.")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress output.")] = False,
) -> None:
    """The main job: baselines + HSTU on MovieLens-1M under a time budget, a bundle, and sample recommendations."""
    from genrec.quickstart import PUBLISHED, run_quickstart
    from genrec.train.config import load_config

    res = run_quickstart(out_dir, load_config(config) if config else None, show_progress=not quiet)
    cols = ("hr@10", "ndcg@10", "hr@50", "ndcg@50", "hr@200", "ndcg@200")
    table = Table(title=f"MovieLens-1M, test split, full catalog ({res.test.info['cases']:,} users, seen items "
                  "excluded); genrec rows: mean [95% bootstrap CI]")
    table.add_column("model")
    for c in cols:
        table.add_column(c.upper().replace("HR", "HR").replace("NDCG", "NDCG"), justify="right")
    name = f"genrec {res.config.model.name.upper()} (best epoch {res.best_epoch}, {res.train_seconds / 60:.1f} min)"
    for label, ev in [*((f"genrec {k}", v) for k, v in res.baselines.items()), (name, res.test)]:
        table.add_row(label, *(f"{ev.mean(c):.4f} [{ev.summary[c]['ci_low']:.3f}, {ev.summary[c]['ci_high']:.3f}]"
                               for c in cols))
    for label, row in PUBLISHED.items():
        table.add_row(label, *(f"{row[c]:.4f}" for c in cols))
    out.print(table)
    out.print("Published rows: generative-recommenders README (3,706 items, test read each epoch, no validation "
              "split); genrec: 3,416 items (SASRec form), model chosen on validation, test read once.")
    for s in res.samples:
        out.print(f"\n[bold]user {s['user']}[/] recently watched: {'; '.join(s['history'])}", highlight=False)
        out.print(f"  recommended: {'; '.join(s['recommended'])}", highlight=False)
        out.print(f"  actually watched next: {s['next']} ({'in' if s['hit'] else 'not in'} the top 5)",
                  highlight=False)
    out.print(f"\nbundle: {res.bundle}   run: {res.bundle.parent / res.config.model.name}", highlight=False)


@app.command("version")
def version() -> None:
    """Print the genrec version."""
    from genrec import __version__

    out.print(__version__)


from genrec.cli import data_gen as _data_gen  # noqa: E402,F401  registers data synth / data expand after the rest
