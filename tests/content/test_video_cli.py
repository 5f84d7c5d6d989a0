"""`genrec content encode --video-col / --video-pattern`: text + cover + video frames fused into one vector per item,
with a tiny image model (a fake timm) and a fake text model, so nothing is downloaded."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_video import scenes, write_video

from cli_run import run
from genrec.content import ItemEmbeddings, VideoConfig, VideoEncoder, image_encoder


class _Net(torch.nn.Module):
    """Mean colour through a fixed linear map (5-d)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(3, 5)
        self.num_features = 5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.mean(dim=(2, 3)))


def _to_tensor(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im.resize((8, 8)), np.float32) / 255).permute(2, 0, 1)


@pytest.fixture(autouse=True)
def tiny_models(monkeypatch, fake_text):
    timm = types.ModuleType("timm")
    data = types.ModuleType("timm.data")
    timm.create_model, timm.data = (lambda name, pretrained, num_classes, **kw: _Net()), data
    data.resolve_data_config = lambda args, model: {}
    data.create_transform = lambda **kw: _to_tensor
    monkeypatch.setitem(sys.modules, "timm", timm)
    monkeypatch.setitem(sys.modules, "timm.data", data)
    monkeypatch.setattr("genrec.content.encode.text_encoder", lambda model, **kw: fake_text)


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    (tmp_path / "videos").mkdir()
    (tmp_path / "covers").mkdir()
    write_video(tmp_path / "videos" / "a.mp4", scenes([(220, 20, 20), (20, 20, 220)]))
    write_video(tmp_path / "videos" / "b.mp4", scenes([(20, 200, 20)]))
    for name, colour in (("a", (200, 200, 0)), ("b", (0, 90, 90)), ("c", (90, 0, 90))):
        Image.new("RGB", (24, 20), colour).save(tmp_path / "covers" / f"{name}.png")
    path = tmp_path / "catalog.csv"
    path.write_text("item_id,title,cover\na,red then blue,covers/a.png\nb,all green,covers/b.png\n"
                    "c,no video,covers/c.png\n")
    return path


def _encode(catalog: Path, out: Path, capsys, *extra: str) -> tuple[int, str, str]:
    return run(["content", "encode", "--catalog", str(catalog), "--image-model", "timm:tiny", "--image-col", "cover",
                "--video-pattern", "videos/{item_id}.mp4", "--video-frames", "3", "--video-sampling", "shots",
                "--out", str(out), *extra], capsys)


def test_text_cover_and_video_fused_end_to_end(catalog, tmp_path, capsys):
    code, stdout, err = _encode(catalog, tmp_path / "emb", capsys, "--json")
    assert code == 0, err
    res = json.loads(stdout)
    assert res["modalities"] == ["text", "image", "video"] and res["dim"] == 8 + 5 + 5
    video = res["report"]["video"]
    assert (video["videos"], video["encoded"], video["missing_file"]) == (2, 2, 1)
    assert video["missing_file_examples"][0]["item"] == "c"
    emb = ItemEmbeddings.load(tmp_path / "emb")
    assert emb.meta["video"]["sampling"] == "shots" and emb.meta["video_source"] == "videos/{item_id}.mp4"
    enc = VideoEncoder(image_encoder("timm:tiny"), VideoConfig(frames=3, sampling="shots"))
    pooled = enc.encode_files([catalog.parent / "videos" / "a.mp4"])[0]
    expected = pooled / np.linalg.norm(pooled) / np.sqrt(3)  # three unit blocks, then the row is normalised
    np.testing.assert_allclose(emb.vectors[1, 13:], expected, rtol=1e-4, atol=1e-6)
    assert np.all(emb.vectors[3, 13:] == 0) and np.any(emb.vectors[3, 8:13] != 0)  # c: cover, no video

    code, stdout, err = _encode(catalog, tmp_path / "emb", capsys, "--video-weight", "0")
    assert code == 0, err
    assert "3 items -> 18-d (text 8 + image 5 + video 5)" in stdout
    assert "video: 2 items with a video (0 encoded, 2 from cache)" in stdout
    assert "c.mp4: file not found" in stdout
    assert np.all(ItemEmbeddings.load(tmp_path / "emb").vectors[:, 13:] == 0)


def test_video_column_and_help(catalog, tmp_path, capsys):
    text = catalog.read_text().replace("cover\n", "cover,clip\n", 1).replace(".png\n", ".png,videos/a.mp4\n", 1)
    (tmp_path / "with_col.csv").write_text(text.replace(".png\n", ".png,\n"))
    code, stdout, err = run(["content", "encode", "--catalog", str(tmp_path / "with_col.csv"), "--text-model", "none",
                             "--image-model", "timm:tiny", "--video-col", "clip", "--out", str(tmp_path / "e"),
                             "--json"], capsys)
    assert code == 0, err
    res = json.loads(stdout)
    assert res["modalities"] == ["video"] and res["report"]["video"]["missing_path"] == 2
    code, stdout, _ = run(["content", "encode", "--help"], capsys)
    assert code == 0
    for flag in ("--video-col", "--video-pattern", "--video-frames", "--video-sampling", "--caption-model"):
        assert flag in stdout


@pytest.mark.parametrize("args, words", [
    (["--video-col", "clip", "--video-pattern", "{item}.mp4"], ["either a video column or a video pattern"]),
    (["--video-col", "clip"], ["video column 'clip' not in the catalog"]),
    (["--video-pattern", "{nope}.mp4"], ["video pattern", "must name catalog columns"]),
    (["--video-col", "title", "--video-sampling", "every"], ["video sampling"]),
    (["--video-col", "title", "--video-root", "{tmp}/nowhere"], ["video folder not found"]),
    (["--caption-model", "{tmp}/m"], ["captions", "images or videos"]),
])
def test_bad_video_flags_exit_2_with_one_line(args, words, catalog, tmp_path, capsys):
    argv = ["content", "encode", "--catalog", str(catalog), *[a.replace("{tmp}", str(tmp_path)) for a in args],
            "--out", str(tmp_path / "o")]
    code, _, err = run(argv, capsys)
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2
    for w in words:
        assert w in err
