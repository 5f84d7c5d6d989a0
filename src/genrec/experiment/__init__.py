"""genrec.experiment: online experiments (A/B and interleaving), exploration with logged propensities, their
statistics, off-policy evaluation and creator / content health. A library: the server and the report build on it."""

from genrec.experiment.assign import (
    Assignment,
    Credit,
    Interleaved,
    Preference,
    assign,
    assign_many,
    credit,
    preference,
    team_draft,
    unit_hash,
)
from genrec.experiment.config import Arm, Experiment, Exploration, Serving, load_experiment, parse_experiment
from genrec.experiment.creators import Exposures, Health, health, health_by_arm, per_creator
from genrec.experiment.explore import Sampled, epsilon_greedy, pl_marginals, plackett_luce, sample_list
from genrec.experiment.ope import OpeEstimate, doubly_robust, effective_sample_size, ips, snips
from genrec.experiment.stats import (
    Difference,
    Estimate,
    SampleRatio,
    SequentialPath,
    confidence_sequence,
    difference,
    ratio_estimate,
    sequential_difference,
    srm_check,
    tau_for,
    user_totals,
)

__all__ = [
    "Arm", "Assignment", "Credit", "Difference", "Estimate", "Experiment", "Exploration", "Exposures", "Health",
    "Interleaved", "OpeEstimate", "Preference", "SampleRatio", "Sampled", "SequentialPath", "Serving", "assign",
    "assign_many", "confidence_sequence", "credit", "difference", "doubly_robust", "effective_sample_size",
    "epsilon_greedy", "health", "health_by_arm", "ips", "load_experiment", "parse_experiment", "per_creator",
    "pl_marginals", "plackett_luce", "preference", "ratio_estimate", "sample_list", "sequential_difference", "snips",
    "srm_check", "tau_for", "team_draft", "unit_hash", "user_totals",
]
