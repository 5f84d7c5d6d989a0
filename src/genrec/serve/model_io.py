"""Rebuild a bundle's or run's model from its JSON description and safetensors weights (never pickle).

:func:`load_model` reads a retrieval model (``model.json`` + ``model.safetensors``); :func:`load_ranking_model` a
ranking model, from a ranking run folder (``model.json`` + ``model.safetensors``) or a two-stage bundle
(``ranker.json`` + ``ranker.safetensors``).

With ``mmap=True`` the large tensors (an item embedding table of a big catalog) are not read into private memory:
they are memory-mapped copy-on-write from ``model.safetensors``, so every process serving the same bundle shares
one copy in the page cache, and loading does not touch the pages until a request reads them.
"""

from __future__ import annotations

import contextlib
import json
import struct
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from genrec.errors import GenrecError
from genrec.io import read_json
from genrec.models import RANKING, SEQUENTIAL, SequentialModel
from genrec.models.generators import GENERATORS, SemanticIdGenerator, build_generator
from genrec.models.ranking import FeatureEmbedding, RankSpec
from genrec.nn.relative_bias import RelativeBias

MMAP_MIN_BYTES = 1 << 20  # smaller tensors are read normally: a mapping per tiny tensor gains nothing
META_MIN_BYTES = 1 << 26  # a model with a tensor this large is built without initialising it (on the meta device)
# safetensors dtype -> (numpy dtype of the raw bytes, torch dtype the bytes are viewed as)
_DTYPES = {"F64": (np.float64, torch.float64), "F32": (np.float32, torch.float32), "F16": (np.float16, torch.float16),
           "BF16": (np.uint16, torch.bfloat16), "I64": (np.int64, torch.int64), "I32": (np.int32, torch.int32),
           "I16": (np.int16, torch.int16), "I8": (np.int8, torch.int8), "U8": (np.uint8, torch.uint8),
           "BOOL": (np.bool_, torch.bool)}


def load_model(folder: str | Path, mmap: bool = False, stem: str = "model") -> SequentialModel | SemanticIdGenerator:
    """An ID model (sasrec, hstu) or a semantic-ID generator (``genrec.models.generators.GENERATORS``: tiger,
    hstu-gen; rebuilt from its spec, its codes travel in the weights), in eval mode.

    ``mmap``: map tensors of at least MMAP_MIN_BYTES from the file instead of reading them, and assign them to
    the model without a copy; an ID model with a tensor of META_MIN_BYTES or more is built on the meta device, so
    its random initial item table is never allocated either. ``stem``: the files' name (``generator``: a bundle's
    second retriever, :data:`genrec.serve.bundle.GENERATOR_FILES`)."""
    folder = Path(folder)
    spec = read_json(folder / f"{stem}.json")
    path = folder / f"{stem}.safetensors"
    model: SequentialModel | SemanticIdGenerator
    if spec["name"] in GENERATORS:
        model = build_generator(spec, load_file(path))
    elif spec["name"] in SEQUENTIAL:
        model_cls, config_cls = SEQUENTIAL[spec["name"]]
        config = config_cls.model_validate(spec["config"])
        if not mmap:
            state = load_file(path)
            model = model_cls(config, spec["n_items"], spec["use_timestamps"])
            model.attach_from_state(state)  # content / semantic-ID features travel in the weights
            model.load_state_dict(state)
        else:
            state = mapped_state(path)
            big = max(t.numel() * t.element_size() for t in state.values()) >= META_MIN_BYTES
            with torch.device("meta") if big else contextlib.nullcontext():  # meta: costs a one-off import
                model = model_cls(config, spec["n_items"], spec["use_timestamps"])
            model.attach_from_state(state)  # outside: it checks the features' values
            model.load_state_dict(state, assign=True)  # the parameters become the mapped tensors, no copy
            left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
            if left:
                raise GenrecError(f"{folder}: {stem}.safetensors does not hold {', '.join(left)}")
    else:
        raise GenrecError(f"{folder}: unknown model {spec['name']!r}")
    return model.eval()


def load_ranking_model(run_or_bundle: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """A ranking model (``genrec.models.RANKING``: ranker, dcn, din) in eval mode on ``device``, from a ranking run
    folder or a bundle with a ranking stage (its ``ranker.*`` files are read, not the retrieval model's). Each
    feature embedding's and relative bias's lookup table is precomputed (:func:`precompute`)."""
    folder = Path(run_or_bundle)
    stem = "ranker" if (folder / "ranker.json").is_file() else "model"
    missing = [f"{stem}.{ext}" for ext in ("json", "safetensors") if not (folder / f"{stem}.{ext}").is_file()]
    if missing:
        raise GenrecError(f"{folder}: not a ranking run or a bundle with a ranker (no {', '.join(missing)})")
    info = read_json(folder / f"{stem}.json")
    if info.get("name") not in RANKING:
        raise GenrecError(f"{folder}: {info.get('name')!r} is not a ranking model (known: {', '.join(RANKING)})")
    model_cls, config_cls = RANKING[info["name"]]
    spec = RankSpec.from_json(info["spec"])
    # the feature tables are buffers: build with placeholders, then the weights bring the real codes
    items = {k: torch.zeros(spec.n_items + 1, dtype=torch.int64) for k in spec.item_feature_sizes or {}}
    users = {k: torch.zeros(spec.n_users + 1, dtype=torch.int64) for k in spec.user_feature_sizes or {}}
    model = model_cls(config_cls.model_validate(info["config"]), spec, items, users)
    model.load_state_dict(load_file(folder / f"{stem}.safetensors"))
    model = model.to(device).eval()
    precompute(model)
    return model


def precompute(model: torch.nn.Module) -> None:
    """Serving: the lookup tables of a loaded model's feature embeddings and relative attention biases, built once
    from its weights (eval-mode lookups then gather from them)."""
    for module in model.modules():
        if isinstance(module, FeatureEmbedding | RelativeBias):
            module.precompute()


def mapped_state(path: str | Path, min_bytes: int = MMAP_MIN_BYTES) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors: those of at least ``min_bytes`` memory-mapped copy-on-write (pages shared
    with every other process that maps the file, until written), the rest read into memory."""
    path = Path(path)
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    state: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as f:
        for name, info in header.items():
            start, end = info["data_offsets"]
            if end - start < min_bytes or info["dtype"] not in _DTYPES:
                state[name] = f.get_tensor(name)
                continue
            np_dtype, torch_dtype = _DTYPES[info["dtype"]]
            shape = tuple(int(s) for s in info["shape"])
            raw = np.memmap(path, dtype=np_dtype, mode="c", offset=8 + size + start, shape=shape)
            tensor = torch.from_numpy(raw)
            state[name] = tensor.view(torch_dtype) if torch_dtype == torch.bfloat16 else tensor
    return state
