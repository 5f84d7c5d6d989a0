"""genrec.eval: full-catalog ranking metrics, confidence intervals, paired tests and run reports.

It knows nothing of models: anything with ``score(history, users) -> [batch, n_items + 1]`` is evaluated.
"""

from genrec.eval.ctr import (
    PerUserAUC,
    auc,
    calibration_ratio,
    ece,
    gauc,
    log_loss,
    mae,
    mse,
    normalized_entropy,
    paired_gauc,
    pearson,
    task_report,
)
from genrec.eval.metrics import DEFAULT_KS, metrics_from_ranks, popularity_percentiles
from genrec.eval.report import HEADLINE, Evaluation, compare_runs, evaluate, load_run, write_run
from genrec.eval.retrieval import RetrievalResult, Scorer, rank_cases, target_ranks, topk_deterministic
from genrec.eval.stats import bootstrap_ci, paired_test

__all__ = [
    "DEFAULT_KS", "HEADLINE", "Evaluation", "RetrievalResult", "Scorer", "bootstrap_ci", "compare_runs", "evaluate",
    "load_run", "metrics_from_ranks", "paired_test", "popularity_percentiles", "rank_cases", "target_ranks",
    "topk_deterministic", "write_run",
    # pointwise (CTR / watch-time) metrics
    "PerUserAUC", "auc", "calibration_ratio", "ece", "gauc", "log_loss", "mae", "mse", "normalized_entropy",
    "paired_gauc", "pearson", "task_report",
]
