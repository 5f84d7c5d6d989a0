"""Video frames (uniform and shot-change sampling), pooling (mean and learned), caching by file content and clear
errors, on tiny videos written here with PyAV."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from genrec.content import (
    TemporalAttentionPooling,
    VideoConfig,
    VideoEncoder,
    attach_video_frames,
    encode_catalog,
    sample_frames,
    video_frames,
)
from genrec.errors import ConfigError, DataError

av = pytest.importorskip("av")
BITS, STRIPE = 6, 8  # frame i shows i in binary: 6 vertical stripes, white for a 1 bit


def write_video(path: Path, frames: list[np.ndarray], fps: int = 10, gop: int | None = None) -> Path:
    """Write RGB frames [h, w, 3] uint8 as an MPEG-4 video."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt = "yuv420p"
        if gop:
            s.codec_context.gop_size = gop
        for a in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")))
        c.mux(s.encode())
    return path


def stripes(i: int) -> np.ndarray:
    a = np.zeros((16, BITS * STRIPE, 3), np.uint8)
    for b in range(BITS):
        if i >> b & 1:
            a[:, b * STRIPE:(b + 1) * STRIPE] = 255
    return a


def index_of(img) -> int:
    a = np.asarray(img, np.float32)
    return sum(1 << b for b in range(BITS) if a[:, b * STRIPE:(b + 1) * STRIPE].mean() > 128)


def scenes(colours: list[tuple[int, int, int]], per_scene: int = 8, side: int = 32) -> list[np.ndarray]:
    """One scene per colour, each with a small white square moving across it (motion, not a cut)."""
    out = []
    for colour in colours:
        for t in range(per_scene):
            a = np.empty((side, side, 3), np.uint8)
            a[:] = colour
            a[12:18, 2 + 2 * t:8 + 2 * t] = 255
            out.append(a)
    return out


def mean_rgb(img) -> np.ndarray:
    return np.asarray(img, np.float32).mean(axis=(0, 1))


@pytest.fixture(scope="module")
def counted(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("v") / "count.mp4", [stripes(i) for i in range(60)], gop=5)


@pytest.fixture(scope="module")
def two_scenes(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("v") / "scenes.mp4", scenes([(220, 20, 20), (20, 20, 220)]))


@pytest.mark.parametrize("seek_gap", [None, 0.0, 1.0])
def test_uniform_frames_are_those_on_screen_at_slice_centres(counted, seek_gap):
    frames = sample_frames(counted, VideoConfig(frames=6), seek_gap=seek_gap)  # 6 s at 10 fps
    assert [index_of(f) for f in frames] == [5, 15, 25, 35, 45, 55]
    assert [index_of(f) for f in sample_frames(counted, VideoConfig(frames=1), seek_gap=seek_gap)] == [30]


def test_frames_are_scaled_down_to_frame_size(counted, two_scenes):
    (frame,) = sample_frames(counted, VideoConfig(frames=1, frame_size=16))
    assert frame.mode == "RGB" and frame.size == (48, 16)  # short side already 16: kept
    (frame,) = sample_frames(two_scenes, VideoConfig(frames=1, frame_size=16))
    assert frame.size == (16, 16)  # 32 x 32 scaled down


def test_shot_sampling_takes_one_frame_per_scene(two_scenes):
    frames = sample_frames(two_scenes, VideoConfig(frames=8, sampling="shots"))
    assert len(frames) == 2  # the moving square is not a cut
    assert mean_rgb(frames[0])[0] > 150 > mean_rgb(frames[0])[2]  # red scene first
    assert mean_rgb(frames[1])[2] > 150 > mean_rgb(frames[1])[0]


def test_shot_sampling_keeps_the_strongest_cuts(tmp_path):
    path = write_video(tmp_path / "three.mp4", scenes([(220, 20, 20), (20, 20, 220), (20, 20, 120)]))
    frames = sample_frames(path, VideoConfig(frames=2, sampling="shots"))
    assert [int(mean_rgb(f)[2] > 150) for f in frames] == [0, 1]  # red->blue beats blue->dark blue
    assert len(sample_frames(path, VideoConfig(frames=8, sampling="shots"))) == 3
    assert len(sample_frames(path, VideoConfig(frames=8, sampling="shots", shot_threshold=0.5))) == 2


def test_encoder_batches_frames_across_videos_and_mean_pools(two_scenes, counted, fake_image):
    enc = VideoEncoder(fake_image, VideoConfig(frames=2))
    vecs = enc.encode_files([two_scenes, counted])
    assert fake_image.calls == 1 and fake_image.n == 4  # one image batch for both videos
    frames = sample_frames(two_scenes, VideoConfig(frames=2))
    expected = np.mean([np.r_[mean_rgb(f), f.size[0]] for f in frames], axis=0)
    np.testing.assert_allclose(vecs[0], expected, rtol=1e-5)
    assert vecs.shape == (2, 4) and enc.dim == 4
    assert enc.key != VideoEncoder(fake_image, VideoConfig(frames=3)).key  # sampling is part of the cache key


def test_corrupt_or_missing_video_errors_name_the_file(tmp_path, counted):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 255, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match=r"broken\.mp4: cannot decode video"):
        sample_frames(bad)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(counted.read_bytes()[: counted.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cut\.mp4: cannot decode video"):
        sample_frames(cut)
    with pytest.raises(DataError, match=r"nothing\.mp4: video file not found"):
        sample_frames(tmp_path / "nothing.mp4")
    with pytest.raises(ConfigError, match="video frames"):
        from genrec.content import video_config
        video_config(frames=0)


def _catalog(tmp_path: Path, names: list[str | None]) -> pa.Table:
    return pa.table({"item_id": [f"v{i}" for i in range(len(names))],
                     "title": [f"clip {i}" for i in range(len(names))], "clip": names})


def test_catalog_videos_are_cached_by_content(tmp_path, two_scenes, fake_text, fake_image, monkeypatch):
    shutil.copy(two_scenes, tmp_path / "a.mp4")
    shutil.copy(two_scenes, tmp_path / "same_bytes.mp4")
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all")
    cat = _catalog(tmp_path, ["a.mp4", "same_bytes.mp4", "gone.mp4", None, "bad.mp4"])
    kw = dict(text_model=fake_text, image_model=fake_image, video_col="clip", video_root=tmp_path,
              video=VideoConfig(frames=3), show_progress=False)
    emb = encode_catalog(catalog=cat, **kw)
    rep = emb.meta["report"]["video"]
    assert (rep["videos"], rep["encoded"], rep["missing_file"], rep["missing_path"], rep["unreadable"]) == (2, 1, 1, 1,
                                                                                                           1)
    assert rep["unreadable_examples"][0]["item"] == "v4" and "cannot decode video" in \
        rep["unreadable_examples"][0]["reason"]
    assert emb.meta["modalities"] == ["text", "video"] and emb.dim == 8 + 4
    assert fake_image.n == 3  # the two copies share one digest: decoded and encoded once
    np.testing.assert_allclose(emb.vectors[1, 8:], emb.vectors[2, 8:], rtol=1e-6)  # one video block for both
    assert np.all(emb.vectors[3, 8:] == 0) and np.any(emb.vectors[1, 8:] != 0)

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cached video was decoded again")

    monkeypatch.setattr(av, "open", no_decoding)
    shutil.move(tmp_path / "a.mp4", tmp_path / "renamed.mp4")  # same content, new path: still a hit
    again = encode_catalog(catalog=_catalog(tmp_path, ["renamed.mp4", "same_bytes.mp4", None, None, None]), **kw)
    assert again.meta["report"]["video"]["from_cache"] == 1 and again.meta["report"]["video"]["encoded"] == 0
    np.testing.assert_allclose(again.vectors[1], emb.vectors[1], rtol=1e-6)


def test_video_frames_table_pads_and_caches(tmp_path, two_scenes, counted, fake_image):
    enc = VideoEncoder(fake_image, VideoConfig(frames=4, sampling="shots"))
    table, report = video_frames([two_scenes, None, counted], enc, cache_dir=tmp_path / "c")
    assert table.shape == (4, 4, 4) and np.all(table[0] == 0) and np.all(table[2] == 0)
    assert np.count_nonzero(np.abs(table[1]).sum(-1)) == 2  # two shots, two padding rows
    again, report = video_frames([two_scenes, None, counted], enc, cache_dir=tmp_path / "c")
    assert report["from_cache"] == 2 and report["encoded"] == 0
    np.testing.assert_array_equal(again, table)


def test_attention_pooling_masks_padding_and_starts_as_the_mean():
    pool = TemporalAttentionPooling(frame_dim=3, frames=3, out_dim=2)
    x = torch.tensor([[[1.0, 2, 3], [3, 2, 1], [0, 0, 0]], [[0.0, 0, 0]] * 3])
    w = pool.attention(x)
    torch.testing.assert_close(w, torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(pool(x.reshape(2, 9)), pool.proj(torch.tensor([[2.0, 2, 2], [0, 0, 0]])))


def test_attention_pooling_learns_which_frame_carries_the_signal():
    g = torch.Generator().manual_seed(0)
    n, classes = 256, 4
    labels = torch.randint(0, classes, (n,), generator=g)
    frames = torch.randn(n, 4, 8, generator=g) * 2.0  # noise frames
    frames[:, 2] = torch.eye(8)[labels] * 3 + torch.randn(n, 8, generator=g) * 0.1  # the informative frame
    torch.manual_seed(0)
    pool = TemporalAttentionPooling(frame_dim=8, frames=4, out_dim=classes, hidden=16, init_std=0.5)
    opt = torch.optim.Adam(pool.parameters(), lr=0.05)
    first = None
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(pool(frames), labels)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first
    assert pool.attention(frames)[:, 2].mean() > 0.6  # it starts at 0.25 (the mean)
    assert (pool(frames).argmax(1) == labels).float().mean() > 0.9


def test_attention_pooling_trains_inside_a_recommender():
    from genrec.models.sasrec import SASRec, SASRecConfig

    torch.manual_seed(0)
    n_items = 30
    model = SASRec(SASRecConfig(dim=16, blocks=1, heads=1, max_len=8, dropout=0.0), n_items)
    frames = torch.randn(n_items + 1, 3, 8)
    frames[5, 1:] = 0  # an item with one frame
    pool = attach_video_frames(model, frames)
    assert model.item_features.shape == (n_items + 1, 24)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)  # made after attaching, as a trainer does
    seqs = torch.stack([(torch.arange(9) * (k % 3 + 1) + k) % n_items + 1 for k in range(32)])
    query0 = pool.query.detach().clone()
    losses = []
    for _ in range(40):
        h = model(seqs[:, :-1], torch.full((32,), 8))
        loss = torch.nn.functional.cross_entropy((h @ model.item_table().T).reshape(-1, n_items + 1),
                                                 seqs[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert not torch.equal(pool.query.detach(), query0)  # the pooling itself learned
    assert "feature_proj.query" in model.state_dict()
    # a saved model reloads with its learned pooling: the same weights and the same scores
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = SASRec(SASRecConfig(dim=16, blocks=1, heads=1, max_len=8, dropout=0.0), n_items)
    fresh.attach_from_state(state)
    fresh.load_state_dict(state)  # strict: every key of the saved state has its place
    model.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh.item_table(), model.item_table())
