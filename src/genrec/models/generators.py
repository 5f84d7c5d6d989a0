"""The semantic-ID generators in one place: every model that recommends by writing an item's semantic ID under the
shared constrained beam search (``genrec.nn.beam``), so training, export and serving treat them alike.

- ``tiger``: the encoder-decoder (``genrec.models.tiger``);
- ``hstu-gen``: the decoder-only HSTU generator (``genrec.models.hstu_generator``).

Both are built as ``cls(config, codes, sizes)``; the codes (and the cold-item mark) travel in the weights, so a
codes placeholder of the right shape is enough before loading them. :class:`SemanticIdGenerator` is what serving
reads of either; :func:`conditioned` says whether one decodes conditioned on a text query (``model.query``).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from pydantic import BaseModel

from genrec.models.hstu_generator import HSTUGenerator, HSTUGeneratorConfig
from genrec.models.tiger import TIGER, TigerConfig
from genrec.nn.beam import PrefixTrie

GENERATORS: dict[str, tuple[type[torch.nn.Module], type[BaseModel]]] = {
    "tiger": (TIGER, TigerConfig), "hstu-gen": (HSTUGenerator, HSTUGeneratorConfig)}
GENERATOR_CLASSES = (TIGER, HSTUGenerator)


class SemanticIdGenerator(Protocol):
    """What serving reads of a generator (TIGER and HSTUGenerator both have it)."""

    config: Any  # beam_width, max_len
    n_items: int
    codes: torch.Tensor  # [n_items + 1, C]; row 0 padding
    use_timestamps: bool

    def recommend(self, history: torch.Tensor, k: int = 10, beam: int | None = None,
                  **options: Any) -> tuple[torch.Tensor, torch.Tensor]: ...

    def trie(self) -> PrefixTrie: ...

    def item_table(self) -> torch.Tensor: ...

    def eval(self) -> Any: ...


def is_generator(model: Any) -> bool:
    """Whether ``model`` is one of the semantic-ID generators."""
    return isinstance(model, GENERATOR_CLASSES)


def conditioned(model: Any) -> bool:
    """Whether the generator decodes conditioned on a query's content vector (TIGER trained with ``model.query``);
    the others read the history only."""
    return getattr(model, "query_token", None) is not None


def build_generator(spec: dict[str, Any], state: dict[str, torch.Tensor]) -> SemanticIdGenerator:
    """A generator from its ``model.json`` (name, config, n_items, codebook sizes) and weights, in float32 (the
    weights may have been saved in a lower precision), in eval mode."""
    cls, config_cls = GENERATORS[spec["name"]]
    sizes = [int(s) for s in spec["sizes"]]
    placeholder = np.zeros((int(spec["n_items"]) + 1, len(sizes)), dtype=np.int64)
    model = cls(config_cls.model_validate(spec["config"]), placeholder, sizes)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.eval()
