"""``genrec content ...``: item content embeddings (a thin layer over :func:`genrec.content.encode_catalog`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from genrec.errors import ConfigError

content_app = typer.Typer(no_args_is_help=True, help="Item content: text and image embeddings.")
out = Console(width=None if sys.stdout.isatty() else 160)


@content_app.command("encode")
def encode_cmd(
    dataset: Annotated[str | None, typer.Option(help="Built-in dataset name or prepared dataset folder.")] = None,
    catalog: Annotated[Path | None, typer.Option(help="Item catalog file (Parquet/CSV/TSV) with an item id column; "
                                                 "alone, its rows are the items.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder (default runs/content/<name>).")] = None,
    item_col: Annotated[str | None, typer.Option(help="Item id column of --catalog (default item or item_id).")] = None,
    field: Annotated[list[str] | None, typer.Option(help="Text field (repeatable; default: every text column).")
                     ] = None,
    template: Annotated[str | None, typer.Option(help="Text template over columns, e.g. '{title}. Tags: {tags}'.")
                        ] = None,
    text_model: Annotated[str, typer.Option(help="sentence-transformers model name or folder; 'none' for no text.")
                          ] = "all-MiniLM-L6-v2",
    image_model: Annotated[str | None, typer.Option(help="efficientnet-lite0 (default with images or videos), "
                                                    "timm:<name>[@weights] or open_clip:<arch>@<pretrained>.")] = None,
    image_col: Annotated[str | None, typer.Option(help="Catalog column holding each item's image path.")] = None,
    image_pattern: Annotated[str | None, typer.Option(help="Image path built from the row, e.g. '{item}.jpg'.")
                             ] = None,
    image_root: Annotated[Path | None, typer.Option(help="Folder that relative image paths are under.")] = None,
    video_col: Annotated[str | None, typer.Option(help="Catalog column holding each item's video path; frames go "
                                                  "through the image model and are mean-pooled.")] = None,
    video_pattern: Annotated[str | None, typer.Option(help="Video path built from the row, e.g. "
                                                      "'videos/{item_id}.mp4'.")] = None,
    video_root: Annotated[Path | None, typer.Option(help="Folder that relative video paths are under.")] = None,
    video_frames: Annotated[int, typer.Option(help="Frames sampled per video (shots: at most this many).", min=1,
                                              max=256)] = 8,
    video_sampling: Annotated[str, typer.Option(help="uniform (evenly in time) or shots (first frame after each "
                                                "cut, by frame difference).")] = "uniform",
    caption_model: Annotated[str | None, typer.Option(help="Image-to-text transformers model (name or folder): "
                                                      "captions of covers, else of a video frame, join the text.")
                             ] = None,
    projection: Annotated[str, typer.Option(help="Fusion projection: none, random or pca (learned).")] = "none",
    dim: Annotated[int | None, typer.Option(help="Output dimension of the projection.", min=1)] = None,
    text_weight: Annotated[float, typer.Option(help="Weight of the normalised text block.", min=0)] = 1.0,
    image_weight: Annotated[float, typer.Option(help="Weight of the normalised image block.", min=0)] = 1.0,
    video_weight: Annotated[float, typer.Option(help="Weight of the normalised video block.", min=0)] = 1.0,
    batch_size: Annotated[int, typer.Option(help="Inputs per encoder batch.", min=1)] = 64,
    device: Annotated[str, typer.Option(help="torch device: cpu, cuda, mps.")] = "cpu",
    cache_dir: Annotated[Path | None, typer.Option(help="Embedding cache root (default $GENREC_CACHE_DIR/embeddings "
                                                   "or ~/.cache/genrec/embeddings).")] = None,
    use_cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Reuse and extend the embedding cache.")
                         ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Encode every item's text, image and/or video into one embedding table (cached: re-runs encode only what
    changed)."""
    from genrec.content import encode_catalog, fusion_config
    from genrec.content.video import video_config

    if dataset is None and catalog is None:
        raise ConfigError("give --dataset NAME (or a prepared folder) or --catalog FILE")
    images = image_col is not None or image_pattern is not None
    weights = {"text": text_weight} if text_model != "none" else {}
    if images:
        weights["image"] = image_weight
    if video_col is not None or video_pattern is not None:
        weights["video"] = video_weight
    fusion = fusion_config(projection=projection, dim=dim, weights=weights)
    name = Path(dataset).name if dataset else catalog.stem  # type: ignore[union-attr]
    folder = out_dir or Path("runs") / "content" / name
    emb = encode_catalog(dataset, catalog=catalog, item_col=item_col, text_fields=field or None, template=template,
                         text_model=None if text_model == "none" else text_model, image_model=image_model,
                         image_col=image_col, image_pattern=image_pattern, image_root=image_root, video_col=video_col,
                         video_pattern=video_pattern, video_root=video_root, caption_model=caption_model,
                         video=video_config(frames=video_frames, sampling=video_sampling), fusion=fusion,
                         batch_size=batch_size, device=device, cache=use_cache, cache_dir=cache_dir, out=folder,
                         show_progress=not (quiet or as_json))
    report = emb.meta["report"]
    if as_json:
        sys.stdout.write(json.dumps({"out": str(folder), "n_items": emb.n_items, "dim": emb.dim,
                                     "modalities": emb.meta["modalities"], "report": report}, indent=2) + "\n")
        return
    dims = " + ".join(f"{m} {emb.meta[f'{m}_dim']}" for m in emb.meta["modalities"])
    out.print(f"{emb.meta['dataset']}: {emb.n_items:,} items -> {emb.dim}-d ({dims}) in {report['seconds']:.1f} s "
              f"-> {folder}", highlight=False)
    if "text" in report:
        t = report["text"]
        out.print(f"  text: {t['encoded']:,} encoded, {t['from_cache']:,} from cache; fields "
                  f"{', '.join(t['fields'])}; {t['items_without_text']:,} items without text", highlight=False)
        for f, k in t["missing_by_field"].items():
            if k:
                out.print(f"    field {f!r} missing for {k:,} items (e.g. {', '.join(t['examples_by_field'][f])})",
                          highlight=False)
    for kind in ("image", "video"):
        if kind in report:
            r = report[kind]
            out.print(f"  {kind}: {r[kind + 's']:,} items with {'an' if kind == 'image' else 'a'} {kind} "
                      f"({r['encoded']:,} encoded, {r['from_cache']:,} from cache); {r['missing_path']:,} without a "
                      f"path, {r['missing_file']:,} files not found, {r['unreadable']:,} unreadable", highlight=False)
            for ex in r["missing_file_examples"][:2] + r["unreadable_examples"]:
                out.print(f"    item {ex['item']}: {ex['path']}: {ex['reason']}", highlight=False)
    if "captions" in report:
        c = report["captions"]
        out.print(f"  captions: {c['items_with_caption']:,} items ({c['captioned']:,} captioned, {c['from_cache']:,} "
                  f"from cache, {c['failed']:,} failed)", highlight=False)
    if report["items_without_content"]:
        out.print(f"  {report['items_without_content']:,} items have no content (zero rows), e.g. "
                  f"{', '.join(report['items_without_content_examples'])}", highlight=False)
