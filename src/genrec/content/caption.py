"""Captions: an image-to-text model describes an item's cover, or frames of its video, and the caption joins the
item's text before text encoding (``title: ...; caption: a dog on a beach``), so text search and semantic IDs see
what the picture shows.

Captioner specs (:func:`captioner`):

- a model name or local folder: a transformers model that writes text from an image alone (BLIP, ViT-GPT2 and other
  VisionEncoderDecoder models), loaded with its image processor and tokenizer through the Auto classes; greedy
  decoding of at most ``max_new_tokens`` tokens. Names resolve in the local Hugging Face cache (set
  ``HF_HUB_OFFLINE=1`` to forbid downloads);
- a callable such as a transformers image-to-text ``pipeline``: called on a list of PIL images; each result is a
  string, ``{"generated_text": ...}`` or a list of those; cached under its model's ``name_or_path`` (a pipeline)
  or its qualified name;
- any object with a ``key`` and ``caption(images) -> list[str]``.

Which picture: the item's cover when it has a readable one, else ``video_frames`` of its video's sampled frames
(picked evenly; by default the middle one), their distinct captions joined by ``"; "``. Captions are cached per
model by the sha256 of the source (the image bytes; the video file plus its sampling), as Parquet shards in
``<cache root>/<captioner key>/``.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genrec.content.cache import cache_root
from genrec.content.modality import image_digest, load_image
from genrec.content.text import N_EXAMPLES, _quiet_transformers, _slug, missing_extra
from genrec.content.video import VideoConfig, file_digest, load_video
from genrec.errors import ConfigError, DataError
from genrec.io import write_parquet
from genrec.progress import progress_bar

CHUNK = 32  # sources captioned between cache writes


@runtime_checkable
class ImageCaptioner(Protocol):
    key: str

    def caption(self, images: list[Any]) -> list[str]: ...


@dataclass
class TransformersCaptioner:
    """An image-to-text transformers model (folder or name in the local cache), loaded on first use."""

    model: str
    device: str = "cpu"
    batch_size: int = 8
    max_new_tokens: int = 30
    _parts: Any = field(default=None, init=False, repr=False)

    @property
    def key(self) -> str:
        ident = hashlib.sha256(f"caption|{self.model}|{self.max_new_tokens}".encode()).hexdigest()[:10]
        return f"caption-{_slug(self.model)}-{ident}"

    def load(self) -> tuple[Any, Any, Any]:
        if self._parts is not None:
            return self._parts
        try:
            import transformers
        except ImportError:
            raise missing_extra("captioning (transformers)") from None
        _quiet_transformers()
        auto = getattr(transformers, "AutoModelForImageTextToText", None) or transformers.AutoModelForVision2Seq
        try:
            model = auto.from_pretrained(self.model)
            images = transformers.AutoImageProcessor.from_pretrained(self.model)
            tokenizer = transformers.AutoTokenizer.from_pretrained(self.model)
        except Exception as e:  # OSError, ValueError, hub errors: all mean "cannot load that model"
            raise ConfigError(f"caption model {self.model!r}: cannot load it ({str(e).splitlines()[0][:200]}); give "
                              "an image-to-text model folder or a name in the local Hugging Face cache") from None
        self._parts = (model.eval().to(self.device), images, tokenizer)
        return self._parts

    def caption(self, images: list[Any]) -> list[str]:
        import torch

        model, processor, tokenizer = self.load()
        out: list[str] = []
        for i in range(0, len(images), self.batch_size):
            pixels = processor(images=images[i:i + self.batch_size], return_tensors="pt")["pixel_values"]
            with torch.inference_mode():
                ids = model.generate(pixel_values=pixels.to(self.device), max_new_tokens=self.max_new_tokens,
                                     do_sample=False, num_beams=1)
            out += [" ".join(t.split()) for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
        return out


@dataclass
class CallableCaptioner:
    """A callable (e.g. a transformers pipeline) as a captioner; ``key`` names it in the cache."""

    fn: Callable[[list[Any]], list[Any]]
    key: str

    def caption(self, images: list[Any]) -> list[str]:
        return [_text(r) for r in self.fn(images)]


def _text(result: Any) -> str:
    if isinstance(result, list):
        result = result[0] if result else ""
    if isinstance(result, dict):
        result = result.get("generated_text", "")
    return " ".join(str(result).split())


def captioner(spec: Any, device: str = "cpu", batch_size: int = 8) -> ImageCaptioner:
    """A captioner from a model name or folder, a callable, or an object with ``key`` and ``caption``."""
    if isinstance(spec, str | Path):
        return TransformersCaptioner(str(spec), device=device, batch_size=batch_size)
    if isinstance(spec, ImageCaptioner):
        return spec
    if callable(spec):
        name = getattr(getattr(spec, "model", None), "name_or_path", None) or getattr(spec, "__qualname__", None)
        return CallableCaptioner(spec, f"caption-{_slug(str(name or type(spec).__name__))}-callable")
    raise ConfigError(f"caption model: expected a model name or folder, or a callable, got {type(spec).__name__}")


class CaptionCache:
    """Captions of one model by source digest (Parquet shards: ``key`` binary sha256, ``caption`` string)."""

    def __init__(self, key: str, root: str | Path | None = None, persist: bool = True):
        self.folder = Path(root if root is not None else cache_root()) / key
        self.persist = persist
        self.texts: dict[bytes, str] = {}
        for shard in sorted(self.folder.glob("shard-*.parquet")) if persist and self.folder.is_dir() else []:
            try:
                t = pq.read_table(shard)
                self.texts.update(zip(t.column("key").to_pylist(), t.column("caption").to_pylist(), strict=True))
            except (OSError, KeyError, pa.ArrowException) as e:
                raise DataError(f"corrupt caption cache shard ({e}); delete it or the folder {self.folder}",
                                path=shard) from None

    def put(self, texts: dict[bytes, str]) -> None:
        if texts and self.persist:
            write_parquet(self.folder / f"shard-{uuid.uuid4().hex}.parquet",
                          pa.table({"key": pa.array(list(texts), pa.binary()), "caption": list(texts.values())}))
        self.texts.update(texts)


def _sources(images: list[Path | None] | None, videos: list[Path | None] | None, video_key: bytes, n: int
             ) -> tuple[list[tuple[str, Path, bytes] | None], dict[int, str]]:
    """Per item: (kind, path, cache digest) of the picture to caption (cover first, else video), and why an item
    whose files are named has none."""
    out: list[tuple[str, Path, bytes] | None] = []
    why: dict[int, str] = {}
    for i in range(n):
        src, reason = None, None
        if images is not None and images[i] is not None:
            d, reason = image_digest(images[i])  # type: ignore[arg-type]
            src = ("image", images[i], d) if d is not None else None
        if src is None and videos is not None and videos[i] is not None:
            d, reason = file_digest(videos[i])  # type: ignore[arg-type]
            src = ("video", videos[i], hashlib.sha256(d + video_key).digest()) if d is not None else None
        out.append(src)
        if src is None and reason is not None:
            why[i] = reason
    return out, why


def _pictures(kind: str, path: Path, config: VideoConfig, per_video: int) -> tuple[list[Any] | None, str | None]:
    if kind == "image":
        img, reason = load_image(path)
        return (None, reason) if img is None else ([img], None)
    frames, reason = load_video(path, config)
    if frames is None:
        return None, reason
    picks = np.linspace(0, len(frames) - 1, per_video + 2)[1:-1] if per_video < len(frames) else range(len(frames))
    return [frames[int(round(j))] for j in picks], None


def caption_items(spec: Any, images: list[Path | None] | None, videos: list[Path | None] | None, *,
                  video: VideoConfig | None = None, video_frames: int = 1, device: str = "cpu",
                  cache_dir: str | Path | None = None, cache: bool = True, show_progress: bool = False,
                  ids: list[str] | None = None) -> tuple[list[str | None], dict[str, Any]]:
    """A caption per item (None where it has no readable cover or video) and a report. ``images`` / ``videos``:
    each item's cover / video file (None where it has none); either may be None."""
    cap = captioner(spec, device=device)
    config = video or VideoConfig()
    n = len(images if images is not None else videos or [])
    ids = ids or [str(i) for i in range(n)]
    sources, failed = _sources(images, videos, f"{config.ident()}|{video_frames}".encode(), n)
    store = CaptionCache(cap.key, cache_dir, persist=cache)
    unique = {s[2]: s for s in sources if s is not None}
    todo = [s for key, s in unique.items() if key not in store.texts]
    bad: dict[bytes, str] = {}
    with progress_bar(len(todo), f"captions: {cap.key}", enabled=show_progress and bool(todo)) as advance:
        for start in range(0, len(todo), CHUNK):
            done, unreadable = _caption_chunk(cap, todo[start:start + CHUNK], config, video_frames)
            store.put(done)
            bad.update(unreadable)
            advance(len(todo[start:start + CHUNK]))
    failed.update({i: bad[s[2]] for i, s in enumerate(sources) if s is not None and s[2] in bad})
    captions = [None if s is None else store.texts.get(s[2]) or None for s in sources]
    have = [i for i, c in enumerate(captions) if c]
    report = {"model": cap.key, "items_with_caption": len(have), "captioned": len(todo) - len(bad),
              "from_cache": len(unique) - len(todo), "failed": len(failed),
              "without_picture": sum(s is None and i not in failed for i, s in enumerate(sources)),
              "failed_examples": [{"item": ids[i], "reason": r} for i, r in sorted(failed.items())[:N_EXAMPLES]],
              "examples": [{"item": ids[i], "caption": captions[i]} for i in have[:N_EXAMPLES]]}
    return captions, report


def _caption_chunk(cap: ImageCaptioner, chunk: list[tuple[str, Path, bytes]], config: VideoConfig,
                   per_video: int) -> tuple[dict[bytes, str], dict[bytes, str]]:
    """Captions of a chunk of sources by digest, and the reasons of those that could not be read."""
    pictures, owners, bad = [], [], {}
    for kind, path, key in chunk:
        pics, reason = _pictures(kind, path, config, per_video)
        if pics is None:
            bad[key] = reason or "unreadable"
            continue
        pictures += pics
        owners += [key] * len(pics)
    texts = cap.caption(pictures) if pictures else []
    if len(texts) != len(pictures):
        raise DataError(f"caption model {cap.key} returned {len(texts)} captions for {len(pictures)} images")
    done: dict[bytes, list[str]] = {}
    for key, text in zip(owners, texts, strict=True):  # an empty caption is cached too (never asked again)
        if text not in done.setdefault(key, []) and text:
            done[key].append(text)
    return {k: "; ".join(v) for k, v in done.items()}, bad


def join_captions(texts: list[str | None], captions: list[str | None]) -> list[str | None]:
    """Each item's text with its caption appended as ``caption: ...`` (the caption alone for an item without text)."""
    return [t if not c else f"{t}; caption: {c}" if t else f"caption: {c}" for t, c in zip(texts, captions,
                                                                                             strict=True)]
