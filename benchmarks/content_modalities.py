"""Each content modality's contribution to retrieval quality: content-kNN (no training) on a dataset's leave-one-out
test split, with item embeddings from text only, the cover image only, text + cover, and video frames where a copy
of the videos exists (+ captions of covers joined to the text, with --caption-model).

Every variant is `genrec content encode` with those modalities (default models: all-MiniLM-L6-v2 for text,
EfficientNet-Lite0 for covers and frames; fusion: L2-normalised blocks, equal weights, concatenated), then content-kNN
with its default settings, evaluated on the full catalog with seen items excluded (the protocol of
benchmarks/semantic_ids.py). Recall@K is HR@K (one target per case).

A variant that needs covers or videos runs only when those files exist for at least --min-coverage of the test
targets; otherwise it is listed as not measurable, with the counts, and the time to encode the whole catalog is
estimated from the encoder's measured speed on the files that exist (on this machine, --threads threads).
Writes benchmarks/results/content_modalities.{json,md}.

    GENREC_DATA_DIR=/work/shared/data python benchmarks/content_modalities.py --threads 1
    python benchmarks/content_modalities.py --covers DIR --videos DIR --video-frames 8   # with full copies
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genrec.content import FusionConfig, VideoConfig, VideoEncoder, encode_catalog, image_encoder, sample_frames
from genrec.content.image import decode_image, read_image
from genrec.data import load_dataset, make_split
from genrec.eval import evaluate
from genrec.eval.report import git_commit, machine, subset_summary
from genrec.io import write_json, write_text
from genrec.models.content_knn import ContentKNN

OUT = Path("benchmarks/results/content_modalities")
KS = [10, 20]
SHOWN = ["hr@10", "ndcg@10", "hr@20", "ndcg@20"]
VARIANTS = {"text": ("text",), "image": ("image",), "text+image": ("text", "image"), "video": ("video",),
            "text+video": ("text", "video"), "text+image+video": ("text", "image", "video"),
            "text+captions": ("text", "captions")}
FILES = {"image": "covers", "video": "videos", "captions": "covers"}  # which files a modality reads


def default_folder(dataset: str, kind: str) -> Path | None:
    """The shared data's copy: covers of MicroLens items live in microlens-100k (same video ids)."""
    root = Path(os.environ.get("GENREC_DATA_DIR", "data"))
    for folder in ([root / dataset / kind] + ([root / "microlens-100k" / kind] if "microlens" in dataset else [])):
        if folder.is_dir():
            return folder
    return None


def availability(raw_ids: list[str], folder: Path | None, pattern: str, targets: np.ndarray) -> dict[str, Any]:
    """Which items have a file, and the share of test targets (dense ids) that do."""
    have = np.zeros(len(raw_ids) + 1, bool)
    if folder is not None:
        present = set(os.listdir(folder))
        have[1:] = [pattern.format(item=r) in present for r in raw_ids]
    return {"folder": str(folder) if folder else None, "pattern": pattern, "items": int(have.sum()),
            "catalog_items": len(raw_ids), "test_targets": int(have[targets].sum()), "test_cases": len(targets),
            "test_share": float(have[targets].mean()), "mask": have}


def encode_speed(paths: list[Path], kind: str, frames: int, sample: int = 32) -> dict[str, Any] | None:
    """Seconds per cover (or per video, decoding included) of the default image model on up to ``sample`` files."""
    from PIL import Image

    paths = paths[:sample]
    if not paths:
        return None
    enc = image_encoder("efficientnet-lite0")
    enc.encode([Image.new("RGB", (256, 256))])  # loads the model: not part of the speed
    start = time.perf_counter()
    if kind == "image":
        enc.encode([decode_image(read_image(p)[0])[0] for p in paths])
    else:
        VideoEncoder(enc, VideoConfig(frames=frames)).encode([sample_frames(p, VideoConfig(frames=frames))
                                                              for p in paths])
    return {"files": len(paths), "seconds_per_file": (time.perf_counter() - start) / len(paths)}


def run_variant(ds: Any, sp: Any, counts: np.ndarray, mods: tuple[str, ...], files: dict[str, dict],
                args: argparse.Namespace) -> dict[str, Any]:
    covers, videos = files["image"], files["video"]
    use_cover = "image" in mods or "captions" in mods  # captions are of the covers
    start = time.perf_counter()
    emb = encode_catalog(
        ds, text_model="all-MiniLM-L6-v2" if "text" in mods else None,
        image_pattern=covers["pattern"] if use_cover else None, image_root=covers["folder"] if use_cover else None,
        video_pattern=videos["pattern"] if "video" in mods else None,
        video_root=videos["folder"] if "video" in mods else None, video=VideoConfig(frames=args.video_frames),
        caption_model=args.caption_model if "captions" in mods else None,
        # text+captions: the covers are read for their captions only (their image block weighs nothing)
        fusion=FusionConfig(weights={"image": 0.0} if "image" not in mods and use_cover else {}),
        show_progress=False)
    encode_s = time.perf_counter() - start
    model = ContentKNN(embeddings=emb).fit(sp.train, ds.n_items)
    ev = evaluate(model, sp.test, ds, ks=KS, item_counts=counts, show_progress=False)
    covered = np.ones(len(sp.test.targets), bool)
    for m in mods:
        if m in FILES:
            covered &= files["image" if m == "captions" else m]["mask"][sp.test.targets]
    return {"modalities": list(mods), "metrics": {k: ev.summary[k] for k in SHOWN},
            "covered_cases": int(covered.sum()),
            "covered_metrics": {k: v for k, v in subset_summary(ev, covered).items() if k in SHOWN},
            "encode_seconds": round(encode_s, 1), "wall_seconds": round(time.perf_counter() - start, 1),
            "items_without_content": int(len(emb.missing)), "dim": emb.dim}


def skip_reason(mods: tuple[str, ...], files: dict[str, dict], args: argparse.Namespace) -> str | None:
    if "captions" in mods and not args.caption_model:
        return "no --caption-model given"
    for m in mods:
        if m in FILES:
            f = files["image" if m == "captions" else m]
            if f["test_share"] < args.min_coverage:
                return (f"{FILES[m]}: {f['items']:,} of {f['catalog_items']:,} items have a file, "
                        f"{f['test_targets']:,} of {f['test_cases']:,} test targets ({f['test_share']:.1%} < "
                        f"--min-coverage {args.min_coverage:.0%})")
    return None


def render(res: dict) -> str:
    f = res["files"]
    lines = [f"# Content modalities: content-kNN on {res['dataset']} (leave-one-out, test, full catalog)", "",
             f"- command: `{res['command']}`",
             f"- commit {res['commit']}, {res['created']}; {res['machine']['processor']}, {res['threads']} thread(s), "
             f"torch {res['machine']['torch']}; wall time {res['wall_seconds']:.0f} s",
             "- embeddings: text all-MiniLM-L6-v2 (default template over the titles), covers and video frames "
             f"EfficientNet-Lite0 ({res['video_frames']} frames per video, uniform, mean-pooled); blocks "
             "L2-normalised, equal weights, concatenated; content-kNN defaults (window 5, decay 0.5); seen items "
             "excluded; 95% bootstrap intervals over test users",
             f"- covers: {f['image']['items']:,} of {f['image']['catalog_items']:,} items have one "
             f"({f['image']['folder'] or 'no folder'}); {f['image']['test_targets']:,} of {f['image']['test_cases']:,} "
             "test targets",
             f"- videos: {f['video']['items']:,} items ({f['video']['folder'] or 'no copy of the videos'})", ""]
    lines += ["| variant | " + " | ".join(k.replace("hr", "Recall") for k in SHOWN) +
              " | cases with all its files | encode s |", "|---" * (len(SHOWN) + 3) + "|"]
    for name, r in res["variants"].items():
        if "skipped" in r:
            lines.append(f"| {name} | not measurable: {r['skipped']} |" + " |" * (len(SHOWN) + 1))
            continue
        cells = [f"{r['metrics'][k]['mean']:.4f} [{r['metrics'][k]['ci_low']:.4f}, {r['metrics'][k]['ci_high']:.4f}]"
                 for k in SHOWN]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['covered_cases']:,} | {r['encode_seconds']:.0f} |")
    est = res.get("estimates", {})
    if est:
        lines += ["", "Estimated time to encode the whole catalog with the default image model on this machine "
                  f"({res['threads']} thread(s)), from its measured speed on the files that exist:", ""]
        for kind, e in est.items():
            lines.append(f"- {kind}: at least {e['catalog_minutes']:.0f} min for {e['catalog_items']:,} items "
                         f"({res['video_frames']} frames per video at the measured time per cover; decoding not "
                         "counted)" if e.get("lower_bound") else
                         f"- {kind}: {e['seconds_per_file']:.3f} s per file (measured on {e['files']}) -> about "
                         f"{e['catalog_minutes']:.0f} min for {e['catalog_items']:,} items")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="microlens-50k")
    p.add_argument("--covers", type=Path, help="folder of cover images (default: the shared data's copy)")
    p.add_argument("--cover-pattern", default="{item}.jpg")
    p.add_argument("--videos", type=Path, help="folder of videos (default: <data>/<dataset>/videos if present)")
    p.add_argument("--video-pattern", default="{item}.mp4")
    p.add_argument("--video-frames", type=int, default=8)
    p.add_argument("--caption-model", help="image-to-text model (name or folder) for the text+captions variant")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--min-coverage", type=float, default=0.5, help="share of test targets that must have the files")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    ds = load_dataset(args.dataset)
    sp = make_split(ds, "loo")
    counts = np.bincount(sp.train.values, minlength=ds.n_items + 1)
    raw = [str(x) for x in ds.items.raw.to_pylist()]
    files = {"image": availability(raw, args.covers or default_folder(args.dataset, "covers"), args.cover_pattern,
                                   sp.test.targets),
             "video": availability(raw, args.videos or default_folder(args.dataset, "videos"), args.video_pattern,
                                   sp.test.targets)}
    variants: dict[str, Any] = {}
    for name in args.variants:
        reason = skip_reason(VARIANTS[name], files, args)
        variants[name] = {"skipped": reason} if reason else run_variant(ds, sp, counts, VARIANTS[name], files, args)
        print(name, variants[name].get("skipped") or {k: round(v["mean"], 4)
                                                      for k, v in variants[name]["metrics"].items()}, flush=True)
    estimates = {}
    for kind, f in files.items():
        folder = Path(f["folder"]) if f["folder"] else None
        paths = [folder / f["pattern"].format(item=raw[i - 1]) for i in np.flatnonzero(f["mask"])] if folder else []
        speed = encode_speed(paths, kind, args.video_frames)
        if speed:
            estimates[kind] = {**speed, "catalog_items": len(raw),
                               "catalog_minutes": speed["seconds_per_file"] * len(raw) / 60}
    if "video" not in estimates and "image" in estimates:  # no video to time: frames x the time of one image
        spf = estimates["image"]["seconds_per_file"] * args.video_frames
        estimates["video"] = {"files": 0, "seconds_per_file": spf, "catalog_items": len(raw),
                              "catalog_minutes": spf * len(raw) / 60, "lower_bound": True}
    res = {"command": "python " + " ".join(sys.argv), "commit": git_commit(), "machine": machine(),
           "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "dataset": args.dataset,
           "threads": args.threads, "video_frames": args.video_frames, "min_coverage": args.min_coverage,
           "files": {k: {kk: vv for kk, vv in v.items() if kk != "mask"} for k, v in files.items()},
           "variants": variants, "estimates": estimates, "wall_seconds": time.perf_counter() - t0}
    write_json(OUT.with_suffix(".json"), res)
    write_text(OUT.with_suffix(".md"), render(res))
    print(render(res))


if __name__ == "__main__":
    main()
