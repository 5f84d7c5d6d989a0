"""Rebuild a bundle's model from ``model.json`` + ``model.safetensors`` (never pickle)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.torch import load_file

from genrec.errors import GenrecError
from genrec.io import read_json
from genrec.models import SEQUENTIAL, SequentialModel
from genrec.models.tiger import TIGER, TigerConfig


def load_model(folder: str | Path) -> SequentialModel | TIGER:
    """An ID model (sasrec, hstu) or the semantic-ID generator (tiger, rebuilt like
    :func:`genrec.train.generator.load_generator`: its codes travel in the weights), in eval mode."""
    folder = Path(folder)
    spec = read_json(folder / "model.json")
    state = load_file(folder / "model.safetensors")
    model: SequentialModel | TIGER
    if spec["name"] == "tiger":
        sizes = [int(s) for s in spec["sizes"]]
        placeholder = np.zeros((int(spec["n_items"]) + 1, len(sizes)), dtype=np.int64)
        model = TIGER(TigerConfig.model_validate(spec["config"]), placeholder, sizes)
        model.load_state_dict(state)
    elif spec["name"] in SEQUENTIAL:
        model_cls, config_cls = SEQUENTIAL[spec["name"]]
        model = model_cls(config_cls.model_validate(spec["config"]), spec["n_items"], spec["use_timestamps"])
        model.attach_from_state(state)  # content / semantic-ID features travel in the weights
        model.load_state_dict(state)
    else:
        raise GenrecError(f"{folder}: unknown model {spec['name']!r}")
    return model.eval()
