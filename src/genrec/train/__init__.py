"""genrec.train: fitting baselines, ID models (SASRec, HSTU) and the semantic-ID generator on a split."""

from __future__ import annotations

from typing import Any

from genrec.train.baselines import BaselineRun, parse_params, run_baseline


def trainer_class(config: Any) -> type:
    """The trainer of ``config.model`` (the torch models' trainers plug their steps into genrec.train.loop.Loop)."""
    from genrec.models import RANKING

    if config.model.name == "gbdt":  # trees, not a torch module: not in RANKING, so serving never loads one
        from genrec.train.gbdt import GBDTTrainer

        return GBDTTrainer
    if config.model.name in RANKING:
        from genrec.train.ranking import RankingTrainer

        return RankingTrainer
    if config.model.name == "tiger":
        from genrec.train.generator import GeneratorTrainer

        return GeneratorTrainer
    if config.model.name == "hstu-gen":
        from genrec.train.hstu_generator import HSTUGeneratorTrainer

        return HSTUGeneratorTrainer
    from genrec.train.trainer import Trainer

    return Trainer


__all__ = ["BaselineRun", "parse_params", "run_baseline", "trainer_class"]
