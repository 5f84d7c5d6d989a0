"""Item videos: frames sampled with PyAV, encoded by an image encoder in batches, pooled over time.

Sampling (:class:`VideoConfig`):

- ``uniform`` (default): ``frames`` frames at the centres of ``frames`` equal slices of the video's duration; each
  is the frame on screen at that time (the last frame whose timestamp is at or before it). A target more than
  ``SEEK_GAP`` seconds past the last decoded frame is reached by seeking to the keyframe before it, so a long
  video is not decoded end to end.
- ``shots``: one frame per shot, the first frame after each cut. A cut is a frame whose 32x32 RGB thumbnail
  differs from the previous frame's by more than ``shot_threshold`` (mean absolute difference, pixel values
  scaled to [0, 1]): a hard cut between different scenes changes most pixels, motion within a shot changes few.
  The first frame always counts; when there are more shots than ``frames``, the strongest cuts are kept. This
  decodes every frame (slower than ``uniform``).

Memory stays bounded: frames are decoded one at a time and only the sampled ones are kept, scaled so their short
side is at most ``frame_size`` pixels (image encoders resize to about 224 anyway).

Pooling: the mean of the frame vectors is the video's vector, cached by the sha256 of the video file (read in
chunks) under a key naming the image model and the sampling, so a re-run decodes nothing that is cached.
:class:`TemporalAttentionPooling` is a learned alternative, trained with a recommender on per-frame vectors
(:func:`video_frames`, :func:`attach_video_frames`).
"""

from __future__ import annotations

import hashlib
import heapq
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from genrec.content.image import ImageEncoder
from genrec.content.text import missing_extra
from genrec.errors import ConfigError, DataError

SEEK_GAP = 5.0  # seconds: a target further ahead than this is reached by seeking instead of decoding through
_THUMB = 32  # side of the thumbnails compared for shot changes
_EPS = 1e-6
_CHUNK = 1 << 20  # bytes read at a time when hashing a file


class VideoConfig(BaseModel):
    """How frames are picked from a video (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    frames: int = Field(8, ge=1, le=256, description="Frames per video (shots: at most this many).")
    sampling: Literal["uniform", "shots"] = Field("uniform", description="uniform in time, or at shot changes.")
    shot_threshold: float = Field(0.15, gt=0, lt=1, description="shots: mean absolute difference of consecutive "
                                  "32x32 RGB thumbnails (in [0, 1]) above which a frame starts a new shot.")
    frame_size: int = Field(256, ge=16, description="Frames are scaled so their short side is at most this.")

    def ident(self) -> str:
        """A short hash of the settings (part of cache keys)."""
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()[:10]


def video_config(**kwargs: Any) -> VideoConfig:
    """A VideoConfig, or a ConfigError naming the bad field."""
    try:
        return VideoConfig(**kwargs)
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(f"video {'.'.join(str(x) for x in err['loc']) or 'config'}: {err['msg']}") from None


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise missing_extra("reading videos (PyAV)") from None
    return av


def file_digest(path: str | Path) -> tuple[bytes | None, str | None]:
    """The sha256 of a file, read in chunks (a long video never sits in memory), or None and why not."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(_CHUNK):
                h.update(block)
    except FileNotFoundError:
        return None, "file not found"
    except OSError as e:
        return None, f"cannot read ({e.strerror or e})"
    return h.digest(), None


def _image(frame: Any, size: int) -> Any:
    """An RGB PIL image of the frame, its short side scaled down to ``size``."""
    w, h = frame.width, frame.height
    scale = min(1.0, size / max(1, min(w, h)))
    return frame.reformat(width=max(1, round(w * scale)), height=max(1, round(h * scale)),
                          format="rgb24").to_image()


def _span(container: Any, stream: Any) -> tuple[float, float]:
    """(start, duration) of the stream in seconds; from the packets' timestamps when the header has none."""
    tb = float(stream.time_base)
    start = float(stream.start_time * tb) if stream.start_time is not None else 0.0
    if stream.duration:
        return start, float(stream.duration * tb)
    if container.duration:
        return start, container.duration / 1_000_000
    end = start
    for packet in container.demux(stream):  # packets only: no decoding
        if packet.pts is not None:
            end = max(end, float((packet.pts + (packet.duration or 0)) * tb))
    container.seek(0)
    return start, end - start


def _uniform(container: Any, stream: Any, cfg: VideoConfig, seek_gap: float | None) -> list[Any]:
    start, duration = _span(container, stream)
    n = cfg.frames
    targets = [start + (k + 0.5) * duration / n for k in range(n)]
    picked: list[Any] = []
    frames, prev, last, sought = container.decode(stream), None, start, -1
    while len(picked) < n:
        k = len(picked)
        if seek_gap is not None and k != sought and targets[k] - last > seek_gap:
            # once per target: the keyframe it lands on may lie further back than seek_gap
            container.seek(int(targets[k] / float(stream.time_base)), stream=stream, backward=True)
            frames, prev, sought = container.decode(stream), None, k
        f = next(frames, None)
        if f is None:
            break
        if f.time is None:
            continue
        if f.time > targets[k] + _EPS:  # ``prev`` is on screen at targets[k] (several targets may share it)
            img = _image(prev if prev is not None else f, cfg.frame_size)
            while len(picked) < n and f.time > targets[len(picked)] + _EPS:
                picked.append(img)
        prev, last = f, f.time
    if prev is not None and len(picked) < n:  # targets after the last frame's timestamp
        picked += [_image(prev, cfg.frame_size)] * (n - len(picked))
    return picked


def _shots(container: Any, stream: Any, cfg: VideoConfig) -> list[Any]:
    kept: list[tuple[float, float, int, Any]] = []  # min-heap of (cut strength, -time, order, image)
    before = None
    for i, f in enumerate(container.decode(stream)):
        thumb = f.reformat(width=_THUMB, height=_THUMB, format="rgb24").to_ndarray().astype(np.float32) / 255.0
        score = np.inf if before is None else float(np.abs(thumb - before).mean())
        before = thumb
        if score <= cfg.shot_threshold:
            continue
        item = (score, -(f.time or 0.0), i, None)
        if len(kept) < cfg.frames:
            heapq.heappush(kept, (*item[:3], _image(f, cfg.frame_size)))
        elif item[:3] > kept[0][:3]:
            heapq.heapreplace(kept, (*item[:3], _image(f, cfg.frame_size)))
    return [img for *_, img in sorted(kept, key=lambda x: x[2])]


def sample_frames(path: str | Path, config: VideoConfig | None = None, seek_gap: float | None = SEEK_GAP
                  ) -> list[Any]:
    """The sampled frames of a video as RGB PIL images; a DataError naming the file when it cannot be decoded.
    ``seek_gap=None`` never seeks (decodes from the start)."""
    cfg = config or VideoConfig()
    av = _av()
    errors = (av.FFmpegError, OSError, ValueError)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError("cannot decode video: no video stream (not a video, or cut short)", path=path)
            stream = container.streams.video[0]
            frames = _uniform(container, stream, cfg, seek_gap) if cfg.sampling == "uniform" else \
                _shots(container, stream, cfg)
    except FileNotFoundError:
        raise DataError("video file not found", path=path) from None
    except errors as e:
        raise DataError(f"cannot decode video ({type(e).__name__}: {str(e)[:160]})", path=path) from None
    if not frames:
        raise DataError("cannot decode video: no frame could be decoded", path=path)
    return frames


def load_video(path: str | Path, config: VideoConfig) -> tuple[list[Any] | None, str | None]:
    """Sampled frames, or None and why (for a catalog: a bad video is reported, never fatal)."""
    try:
        return sample_frames(path, config), None
    except DataError as e:
        reason = str(e).removeprefix(f"{path}: ")
        return None, "file not found" if reason == "video file not found" else reason


@dataclass
class VideoEncoder:
    """Videos -> vectors: sampled frames through ``image`` (an ImageEncoder), mean-pooled over time."""

    image: ImageEncoder
    config: VideoConfig = field(default_factory=VideoConfig)

    @property
    def key(self) -> str:
        return f"video-{self.image.key}-{self.config.sampling}{self.config.frames}-{self.config.ident()}"

    @property
    def dim(self) -> int:
        return int(self.image.dim)

    def encode_frames(self, videos: list[list[Any]]) -> list[np.ndarray]:
        """Frame vectors [k_i, dim] of each video; every frame of the list goes through the image encoder,
        which batches them across videos."""
        flat = [img for frames in videos for img in frames]
        vecs = np.asarray(self.image.encode(flat), dtype=np.float32) if flat else np.zeros((0, self.dim), np.float32)
        bounds = np.cumsum([0, *[len(f) for f in videos]])
        return [vecs[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def encode(self, videos: list[list[Any]]) -> np.ndarray:
        """Mean-pooled vector of each video (given as its sampled frames)."""
        return np.stack([v.mean(axis=0) for v in self.encode_frames(videos)]) if videos else \
            np.zeros((0, self.dim), np.float32)

    def encode_files(self, paths: list[str | Path]) -> np.ndarray:
        """Mean-pooled vectors of video files (no cache); a DataError names a file that cannot be decoded."""
        return self.encode([sample_frames(p, self.config) for p in paths])


@dataclass
class _FrameRows:
    """A VideoEncoder seen as one flat row per video: its frames' vectors, zero-padded to ``frames`` rows."""

    video: VideoEncoder

    @property
    def key(self) -> str:
        return f"{self.video.key}-frames"

    @property
    def dim(self) -> int:
        return self.video.config.frames * self.video.dim

    def encode(self, videos: list[list[Any]]) -> np.ndarray:
        out = np.zeros((len(videos), self.video.config.frames, self.video.dim), np.float32)
        for i, v in enumerate(self.video.encode_frames(videos)):
            out[i, :len(v)] = v
        return out.reshape(len(videos), -1)


def video_frames(paths: list[Path | None], encoder: VideoEncoder, *, cache_dir: str | Path | None = None,
                 cache: bool = True, show_progress: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Per-frame vectors of item videos, for :class:`TemporalAttentionPooling`: [len(paths) + 1, frames, dim]
    (row 0 = padding; zeros where an item has no readable video or fewer frames), cached by file content, and
    the report of missing and unreadable files."""
    from genrec.content.cache import EmbeddingCache
    from genrec.content.modality import encode_files

    rows = _FrameRows(encoder)
    res, report = encode_files("video", rows, paths, file_digest, lambda p: load_video(p, encoder.config),
                                EmbeddingCache(rows.key, cache_dir, persist=cache), 16, show_progress,
                                [str(i) for i in range(1, len(paths) + 1)])
    out = np.zeros((len(paths) + 1, encoder.config.frames, encoder.dim), np.float32)
    out[1:] = res.vectors.reshape(len(paths), encoder.config.frames, encoder.dim)
    return out, report


class TemporalAttentionPooling(nn.Module):
    """Learned pooling of frame vectors: weights ``softmax_t(q . tanh(W x_t))`` over the frames present (all-zero
    rows are padding), the weighted sum, then a linear map to ``out_dim``. ``q`` starts at zero, so the untrained
    module is the mean over frames. Input [..., frames * frame_dim] (one flat row per item, the layout of
    :meth:`genrec.models.sequential.SequentialModel.attach_item_features`) or [..., frames, frame_dim]."""

    def __init__(self, frame_dim: int, frames: int, out_dim: int, hidden: int = 64, init_std: float = 0.02):
        super().__init__()
        self.frame_dim, self.frames = frame_dim, frames
        self.hidden = nn.Linear(frame_dim, hidden)
        self.query = nn.Parameter(torch.zeros(hidden))
        self.proj = nn.Linear(frame_dim, out_dim, bias=False)
        nn.init.normal_(self.proj.weight, std=init_std)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.ndim >= 2 and x.shape[-2:] == (self.frames, self.frame_dim) else \
            x.reshape(*x.shape[:-1], self.frames, self.frame_dim)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Weights over frames [..., frames] (all zero for an item without frames)."""
        x = self._split(x)
        present = x.abs().sum(-1) > 0
        logits = torch.tanh(self.hidden(x)) @ self.query
        weights = torch.softmax(logits.masked_fill(~present, float("-inf")), dim=-1)
        return torch.nan_to_num(weights, nan=0.0)  # no frame at all: softmax of all -inf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._split(x)
        return self.proj((self.attention(x)[..., None] * x).sum(-2))


def attach_video_frames(model: Any, frames: torch.Tensor | np.ndarray, hidden: int = 64) -> TemporalAttentionPooling:
    """Give a SASRec/HSTU model video features pooled by a learned :class:`TemporalAttentionPooling` (trained with
    the model): item = id embedding + pool(frames of the item). ``frames``: [n_items + 1, frames, dim] from
    :func:`video_frames`. Call it before the optimizer is made."""
    frames = torch.as_tensor(np.asarray(frames, np.float32)) if isinstance(frames, np.ndarray) else frames
    if frames.ndim != 3:
        raise ValueError(f"video frames have shape {tuple(frames.shape)}, expected [n_items + 1, frames, dim]")
    n, t, d = frames.shape
    model.attach_item_features(frames.reshape(n, t * d))
    model.feature_proj = TemporalAttentionPooling(d, t, model.config.dim, hidden, model.config.init_std)
    return model.feature_proj
