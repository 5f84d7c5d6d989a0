"""genrec.train: fitting models on a split (baselines now; SASRec/HSTU trainers later)."""

from genrec.train.baselines import BaselineRun, parse_params, run_baseline

__all__ = ["BaselineRun", "parse_params", "run_baseline"]
