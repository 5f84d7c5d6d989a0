"""Every shipped config validates, states the command that runs it, and builds its model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genrec.models import RANKING, SEQUENTIAL
from genrec.models.ranking import RankSpec
from genrec.train.config import load_config

CONFIGS = sorted((Path(__file__).parents[2] / "configs").rglob("*.yaml"))


def test_configs_exist():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_validates_and_builds(path):
    cfg = load_config(path)
    text = path.read_text()
    assert f"genrec train --config configs/{path.parent.name}/{path.name}" in text
    assert "\n# Reached" in text  # the metrics it reached (or that none were measured yet)
    assert cfg.dataset.startswith(path.parent.name)  # kuairand-pure-clicks, movielens-1m-ratings-neg, ...
    if cfg.model.name == "gbdt":  # LightGBM trees, not a torch module (tests/train/test_gbdt.py trains one)
        return
    if cfg.model.name == "tiger":  # the generator is built from semantic IDs (here: 10 items, 2 levels)
        from genrec.models.tiger import TIGER

        model = TIGER(cfg.model, [[-1, -1], *([i // 5, i % 5] for i in range(10))], [2, 5])
    elif cfg.model.name == "hstu-gen":  # the decoder-only generator, built the same way
        from genrec.models.hstu_generator import HSTUGenerator

        model = HSTUGenerator(cfg.model, [[0, 0], *([i // 5, i % 5] for i in range(10))], [2, 5])
    elif cfg.model.name in RANKING:  # a ranking model is built for an impression log's spec
        cls, _ = RANKING[cfg.model.name]
        binary = tuple(dict.fromkeys(("click", "like", *cfg.model.listwise)))  # the tasks the config names
        spec = RankSpec(n_items=10, n_users=5, binary_tasks=binary, regression_tasks=("watch_time",),
                        item_feature_sizes={"tag": 3, "author": 3}, action_sizes={"signals": 4},
                        row_feature_sizes={"tab": 4})
        codes = torch.tensor([0, *([1, 2] * 5)])
        model = cls(cfg.model, spec, {"tag": codes, "author": codes}, {})
    else:
        cls, _ = SEQUENTIAL[cfg.model.name]
        model = cls(cfg.model, 10)
    assert sum(p.numel() for p in model.parameters()) > 0
