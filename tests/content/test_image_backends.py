"""The timm and open_clip image encoders, run against small fake libraries (neither ships weights offline)."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from genrec.content import OpenClipEncoder, TimmEncoder, image_encoder
from genrec.errors import ConfigError, GenrecError


class _Net(torch.nn.Module):
    """Mean colour of the image through a linear map: outputs depend on each image and on the weights."""

    def __init__(self, out: int):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(3, out)
        self.num_features = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.mean(dim=(2, 3)))


def _image_tensor(value: float, size: int) -> torch.Tensor:
    return torch.stack([torch.full((size, size), value * c) for c in (1.0, 2.0, 3.0)])


@pytest.fixture
def fake_timm(monkeypatch):
    calls: dict = {}

    def create_model(name, pretrained, num_classes, **kwargs):
        if name == "broken":
            raise RuntimeError("no weights for broken\nmore detail")
        calls.update(name=name, pretrained=pretrained, num_classes=num_classes, **kwargs)
        return _Net(5)

    timm = types.ModuleType("timm")
    data = types.ModuleType("timm.data")
    timm.create_model, timm.data = create_model, data
    data.resolve_data_config = lambda args, model: {"input_size": (3, 4, 4)}
    data.create_transform = lambda input_size: (lambda im: _image_tensor(im, input_size[1]))
    monkeypatch.setitem(sys.modules, "timm", timm)
    monkeypatch.setitem(sys.modules, "timm.data", data)
    return calls


@pytest.fixture
def fake_open_clip(monkeypatch):
    calls: dict = {}

    def create_model_and_transforms(arch, pretrained=None):
        if arch == "broken":
            raise RuntimeError("unknown model broken")
        calls.update(arch=arch, pretrained=pretrained)
        model = types.SimpleNamespace(visual=types.SimpleNamespace(image_size=4), encode_image=_Net(6),
                                      eval=lambda: model, to=lambda device: model)
        return model, None, lambda im: _image_tensor(im, 4)

    open_clip = types.ModuleType("open_clip")
    open_clip.create_model_and_transforms = create_model_and_transforms
    monkeypatch.setitem(sys.modules, "open_clip", open_clip)
    return calls


def _expected(dim: int, values: list[float]) -> np.ndarray:
    with torch.inference_mode():
        return _Net(dim)(torch.stack([_image_tensor(v, 4) for v in values])).numpy()


def test_timm_encoder_loads_weights_file_and_encodes_in_batches(fake_timm):
    enc = image_encoder("timm:resnet18@/w/r18.safetensors", batch_size=2)
    assert isinstance(enc, TimmEncoder) and enc.dim == 5
    assert fake_timm == {"name": "resnet18", "pretrained": True, "num_classes": 0,
                         "pretrained_cfg_overlay": {"file": "/w/r18.safetensors"}}
    out = enc.encode([1.0, 2.0, 3.0])  # two batches: [1, 2] and [3]
    assert out.dtype == np.float32 and out.shape == (3, 5)
    np.testing.assert_allclose(out, _expected(5, [1.0, 2.0, 3.0]), rtol=1e-5, atol=1e-6)
    assert enc.encode([]).shape == (0, 5)


def test_open_clip_encoder_probes_dim_and_encodes(fake_open_clip):
    enc = image_encoder("open_clip:ViT-B-32@laion2b_s34b_b79k", batch_size=2)
    assert isinstance(enc, OpenClipEncoder) and enc.dim == 6
    assert fake_open_clip == {"arch": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}
    out = enc.encode([0.5, 1.5, 2.5])
    assert out.dtype == np.float32 and out.shape == (3, 6)
    np.testing.assert_allclose(out, _expected(6, [0.5, 1.5, 2.5]), rtol=1e-5, atol=1e-6)


def test_image_backends_that_fail_to_load_name_the_model(fake_timm, fake_open_clip):
    with pytest.raises(ConfigError, match=r"'timm:broken': cannot load it \(no weights for broken\)"):
        image_encoder("timm:broken").load()
    with pytest.raises(ConfigError, match=r"'open_clip:broken': cannot load it \(unknown model broken\)"):
        image_encoder("open_clip:broken").load()


def test_missing_image_backends_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(GenrecError, match="pip install timm"):
        image_encoder("timm:resnet18").encode([1.0])
    with pytest.raises(GenrecError, match="pip install open_clip_torch"):
        image_encoder("open_clip:ViT-B-32").encode([1.0])
