"""Fit a baseline on the training part of a split and evaluate it on validation or test, as one run."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from genrec.data import SequenceDataset, make_split
from genrec.data.schema import format_validation_error
from genrec.errors import ConfigError
from genrec.eval import DEFAULT_KS, Evaluation, evaluate, write_run
from genrec.models import BASELINES, Recommender


@dataclass
class BaselineRun:
    model: Recommender
    evaluation: Evaluation
    config: dict[str, Any]
    folder: Path | None


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """``["neighbors=100", "window=none"]`` -> ``{"neighbors": "100", "window": None}`` (pydantic coerces types).

    With ``--set``, values are read as YAML by the config loader, so lists and numbers work too."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--param expects key=value, got {pair!r}")
        out[key.strip()] = None if value.strip().lower() in ("none", "null") else value.strip()
    return out


def build_baseline(name: str, params: dict[str, Any] | None = None) -> Recommender:
    if name not in BASELINES:
        raise ConfigError(f"unknown model '{name}'; baselines are {', '.join(BASELINES)}")
    cls, config_cls = BASELINES[name]
    try:
        config = config_cls.model_validate(params or {})
    except ValidationError as e:
        raise ConfigError(f"{name} config: {format_validation_error(e)}") from None
    return cls(config)


def run_baseline(
    name: str,
    dataset: SequenceDataset,
    *,
    params: dict[str, Any] | None = None,
    split: str = "loo",
    part: str = "test",
    ks: Sequence[int] = DEFAULT_KS,
    exclude_seen: bool = True,
    sampled_negatives: int | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    out: str | Path | None = None,
    show_progress: bool = True,
) -> BaselineRun:
    """Fit ``name`` on the split's training sequences, evaluate on ``part``, write a run folder to ``out``."""
    start = time.perf_counter()
    model = build_baseline(name, params)
    sp = make_split(dataset, split)
    cases = sp.cases(part)
    if len(cases) == 0:
        raise ConfigError(f"the {split} split of '{dataset.name}' has no {part} cases")
    model.fit(sp.train, dataset.n_items)
    counts = np.bincount(sp.train.values, minlength=dataset.n_items + 1)
    ev = evaluate(model, cases, dataset, part=part, ks=ks, exclude_seen=exclude_seen, item_counts=counts,
                  sampled_negatives=sampled_negatives, n_boot=n_boot, seed=seed, show_progress=show_progress)
    config = {"model": name, "params": model.config.model_dump(), "dataset": dataset.name, "split": split,
              "part": part, "ks": list(ks), "exclude_seen": exclude_seen, "sampled_negatives": sampled_negatives,
              "n_boot": n_boot, "seed": seed}
    folder = write_run(out, config, ev, dataset, time.perf_counter() - start) if out is not None else None
    return BaselineRun(model, ev, config, folder)
