"""``genrec tokenize``: semantic IDs for a dataset's items from their content embeddings."""

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
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress output.")] = False,
) -> None:
    """Fit RQ-KMeans or RQ-VAE on item content embeddings; write unique semantic IDs, the tokenizer (encodes new
    items without retraining) and a quality report."""
    from genrec.cli import _print_json, out
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
    config = TokenizerConfig(normalize=normalize, rqvae=RQVAEConfig(**({"epochs": epochs} if epochs else {})))
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
