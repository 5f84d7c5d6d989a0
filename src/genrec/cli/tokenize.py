"""``genrec tokenize``: semantic IDs for a dataset's items from their content embeddings; ``genrec tokenize-new``: IDs
for new items with a saved tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from genrec.errors import ConfigError


def tokenize_cmd(
    dataset: Annotated[str | None, typer.Option(help="Dataset name: reads runs/content/NAME unless --embeddings "
                                                "is given, and names the default output folder.")] = None,
    method: Annotated[str, typer.Option(help="rqkmeans (residual k-means) or rqvae.")] = "rqkmeans",
    embeddings: Annotated[Path | None, typer.Option(help="Item embedding folder (from 'genrec content encode').")
                          ] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder (default "
                                                 "runs/semantic_ids/DATASET/METHOD).")] = None,
    levels: Annotated[int, typer.Option(help="Content codes per item.", min=1)] = 3,
    codebook_size: Annotated[int, typer.Option(help="Codes per level.", min=2)] = 256,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    epochs: Annotated[int | None, typer.Option(help="RQ-VAE training epochs (default 200).", min=1)] = None,
    normalize: Annotated[bool, typer.Option("--normalize/--no-normalize",
                                            help="L2-normalise content vectors first.")] = True,
    id_model: Annotated[Path | None, typer.Option(help="Collaborative IDs: run folder of a trained ID model "
                                                  "(sasrec/hstu, item_repr id) whose item embeddings are fused "
                                                  "with the content vectors; items it never trained get theirs "
                                                  "predicted from content.")] = None,
    id_weight: Annotated[float, typer.Option(help="With --id-model: weight of the normalised ID embedding next "
                                             "to the normalised content vector.", min=0.0)] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress output.")] = False,
) -> None:
    """Fit RQ-KMeans or RQ-VAE on item content embeddings; write unique semantic IDs, the tokenizer (encodes new
    items without retraining) and a quality report."""
    from genrec.cli import _print_json, out
    from genrec.semantic_ids.collaborative import CollaborativeConfig
    from genrec.semantic_ids.pipeline import default_out_dir, tokenize
    from genrec.semantic_ids.report import format_report
    from genrec.semantic_ids.rqvae import RQVAEConfig
    from genrec.semantic_ids.tokenizer import TokenizerConfig
    from genrec.train.allocator import tune_glibc_malloc

    if method not in ("rqkmeans", "rqvae"):
        raise ConfigError(f"--method must be 'rqkmeans' or 'rqvae', got {method!r}")
    if dataset is None and embeddings is None:
        raise ConfigError("give --dataset NAME (embeddings from runs/content/NAME) or --embeddings DIR")
    tune_glibc_malloc()  # k-means and RQ-VAE steps allocate large temporaries
    if id_model is not None and id_weight <= 0:
        raise ConfigError(f"--id-weight must be above 0, got {id_weight}")
    collab = CollaborativeConfig(id_model=id_model, weight=id_weight) if id_model is not None else None
    config = TokenizerConfig(normalize=normalize, rqvae=RQVAEConfig(**({"epochs": epochs} if epochs else {})),
                             collaborative=collab)
    source = embeddings if embeddings is not None else dataset
    folder = out_dir
    if folder is None:
        from genrec.semantic_ids.pipeline import resolve_embeddings

        _, name, path = resolve_embeddings(source)
        folder, source = default_out_dir(dataset or name, method), path
    ids, report = tokenize(source, method=method, levels=levels, codebook_size=codebook_size, seed=seed,
                           out=folder, config=config, show_progress=not quiet and not as_json)
    if as_json:
        return _print_json({"out": str(folder), **report})
    for line in format_report(report):
        out.print(line, highlight=False)
    out.print(f"semantic IDs, tokenizer and report.json -> {folder}", highlight=False)


def tokenize_new_cmd(
    ids_dir: Annotated[Path, typer.Option("--ids", help="Folder written by 'genrec tokenize' (semantic IDs and "
                                          "tokenizer).")],
    embeddings: Annotated[Path, typer.Option(help="Embedding folder of the new items (from 'genrec content encode "
                                             "--catalog FILE', same encoder(s) as the catalog).")],
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder (default: the --ids folder plus "
                                                 "'-extended'); must not exist or be empty.")] = None,
    base_embeddings: Annotated[Path | None, typer.Option(help="The embedding folder the --ids were made from, if "
                                                         "it has moved (only its item ids are read).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Give new items semantic IDs with a saved tokenizer, without retraining: existing IDs stay as they are,
    items already in the catalog are skipped, the rest are appended; writes a new folder."""
    from genrec.cli import _print_json, out
    from genrec.semantic_ids.pipeline import extend_ids

    _, report = extend_ids(ids_dir, embeddings, out=out_dir, base_embeddings=base_embeddings)
    if as_json:
        return _print_json(report)
    first, last = report["new_dense_ids"]
    lines = [f"new items: {report['new_items']:,} (dense ids {first:,}..{last:,}; {report['n_items_before']:,} -> "
             f"{report['n_items']:,} items)",
             f"skipped: {report['skipped_known']:,} already had semantic IDs"
             + (f" (e.g. {', '.join(report['skipped_known_examples'])})" if report["skipped_known"] else "")
             + (f", {report['skipped_duplicates']:,} repeated ids" if report["skipped_duplicates"] else ""),
             f"uniqueness suffix > 0: {report['uniqueness_suffix_nonzero']:,} new items",
             f"uniqueness code size: {report['uniqueness_size_before']:,} -> {report['uniqueness_size']:,}"]
    if report["missing_content"]:
        lines.append(f"without content (encoded as the mean item): {report['missing_content']:,}")
    for line in lines:
        out.print(line, highlight=False)
    out.print(f"semantic IDs, tokenizer, items.parquet and report.json -> {report['out']}", highlight=False)
