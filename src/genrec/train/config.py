"""One YAML file describes a training run; it validates into these typed, frozen configs (unknown keys are
errors, every field documented)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from genrec.data.schema import format_validation_error
from genrec.errors import ConfigError
from genrec.io import read_yaml_mapping
from genrec.models import RANKING, DCNConfig, DINConfig, GBDTConfig, HSTUConfig, RankerConfig, SASRecConfig
from genrec.models.hstu_generator import HSTUGeneratorConfig
from genrec.models.tiger import TigerConfig

_STRICT = ConfigDict(extra="forbid", frozen=True)


class StreamConfig(BaseModel):
    """``train.stream``: how a streamed epoch reads a prepared dataset's shards (genrec.data.stream)."""

    model_config = _STRICT

    lanes: int = Field(4, ge=1, le=64, description="Lanes of the data order: lane j reads shards j, j + lanes, ... "
                       "and gives batch_size / lanes windows to every step. Fixed by the run, not by the number of "
                       "processes (at most lanes), so 1, 2 or 4 processes train on the same batches.")
    shards: int = Field(8, ge=1, description="Shards of a dataset that is not a prepared folder (an in-memory one "
                        "streamed through the prepared layout's user hash); a prepared folder has its own.")
    prefetch: bool = Field(True, description="Read each lane's next shard in a background thread.")
    combine: Literal["sorted", "passes", "pad"] = Field(
        "sorted", description="How a step joins its lanes' batches. sorted: the step's windows from every lane, "
        "sorted by length and cut into passes where a new pass saves more padding than pass_tokens (a dynamic "
        "program); passes: one pass per lane's batch; pad: one pass over all windows padded to the longest. "
        "Gradients of a step's passes are summed before the update, so the three differ only in float rounding.")
    pass_tokens: int = Field(1024, ge=0, description="combine: sorted: the fixed cost of one more forward and "
                             "backward pass, in padded tokens.")
    auto_events: int = Field(20_000_000, ge=1, description="train.data: auto streams a prepared folder (format 2) "
                             "with more interactions than this; smaller datasets train in memory.")


class OptimConfig(BaseModel):
    model_config = _STRICT

    loss: Literal["full_ce", "sampled_softmax"] = Field(
        "full_ce", description="Full-catalog cross-entropy (fastest to quality when the catalog fits) or "
        "sampled softmax (large catalogs).")
    negatives: int = Field(128, ge=0, description="Drawn negatives per step (sampled softmax; 0 = in-batch "
                           "negatives only).")
    shared_negatives: bool = Field(True, description="One set of negatives for the whole batch.")
    in_batch_negatives: bool = Field(False, description="Also use other positions' targets as negatives (drawn, in "
                                     "effect, from the training frequency of items).")
    negative_sampler: Literal["uniform", "popularity"] = Field(
        "uniform", description="Sampled softmax: draw negatives uniformly from the catalog or by training "
        "popularity, count ** popularity_alpha (harder negatives; pair with logq).")
    popularity_alpha: float = Field(1.0, ge=0, le=1, description="negative_sampler popularity: exponent on the "
                                    "training counts (1 = the training distribution, 0 = uniform over trained "
                                    "items; word2vec uses 0.75).")
    logq: bool = Field(False, description="Sampled softmax: subtract from every logit, the target's included, the log "
                       "of how often its item is expected among the negatives (Yi et al., 2019), so sampling by "
                       "popularity or in-batch does not push popular items down. A no-op for uniform draws alone.")
    temperature: float = Field(1.0, gt=0, description="Logit temperature (0.05 with l2_normalize).")
    mask_unseen: bool | None = Field(None, description="Keep items that never occur in the training sequences "
                                     "out of the loss (not even as negatives), as items added after training "
                                     "would be. Default: on for split: cold, off otherwise.")
    windows: Literal["last", "all"] = Field("last", description="Train on each user's most recent max_len+1 "
                                            "items only, or on every window of a long sequence.")
    batch_size: int = Field(32, ge=1, description="Users (training windows) per step, across all processes.")
    lr: float = Field(3e-3, gt=0, description="Peak learning rate of AdamW.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (decoupled from the gradient).")
    betas: tuple[float, float] = Field((0.9, 0.98), description="AdamW's moment decay rates (beta1, beta2).")
    warmup_steps: int = Field(200, ge=0, description="Linear warmup steps.")
    schedule: Literal["linear", "cosine", "constant"] = Field("linear", description="Decay after warmup, to 0 "
                                                               "at the end of `epochs`.")
    schedule_by: Literal["steps", "time"] = Field("steps", description="Run the decay over `epochs` of steps, or "
                                                  "over the max_minutes wall-time budget (needs max_minutes; the "
                                                  "schedule then depends on the machine's speed).")
    clip_norm: float | None = Field(1.0, gt=0, description="Gradient clipping by global norm (None = off).")
    ema: float | None = Field(None, gt=0, lt=1, description="Ranking models: validate, select and test an "
                              "exponential moving average of the weights with this decay per step (e.g. 0.999; "
                              "genrec.train.loop.WeightAverage) instead of the last weights. None = off.")
    epochs: int = Field(100, ge=1, description="Maximum epochs (the schedule's length).")
    max_minutes: float | None = Field(None, gt=0, description="Wall-time budget for training; stops after the "
                                      "epoch that crosses it.")
    patience: int = Field(10, ge=1, description="Stop after this many validations without a better NDCG@10.")
    eval_every: int = Field(1, ge=1, description="Validate every this many epochs.")
    seed: int = Field(0, description="Seed of python, numpy and torch.")
    refit: bool = Field(False, description="SASRec / HSTU / tiger with split: loo: after selecting the epoch on "
                        "validation, train a fresh model (same seed and schedule) on the training sequences plus "
                        "every user's validation item for that many epochs, and test it instead (the validation item "
                        "becomes one more, most recent, training target per user; the published ML-1M and Amazon "
                        "figures train on it). Its epochs go to <run>/refit/; test is still read once. Ranking "
                        "models: the fresh model trains on the training and validation impressions (LightGBM: each "
                        "task's selected number of rounds); the calibration keeps the selected model's slopes, its "
                       "intercepts moved so the refit model's validation predictions average the selected model's.")
    refit_epochs: int | None = Field(None, ge=1, description="With refit, the generator (tiger) only: skip the "
                                     "selection run and refit for this many epochs, the number an earlier "
                                     "selection run of the same config chose (state it in the config), so the "
                                     "selection is not repeated. With schedule_by: time the refit also "
                                     "stops at max_minutes.")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's choice).")
    device: str = Field("cpu", pattern=r"^(cpu|auto|cuda(:\d+)?)$", description="cpu, cuda, cuda:N, or auto "
                        "(cuda when available). Under torchrun with cuda each process takes cuda:LOCAL_RANK. "
                        "Results are reproducible per device; resume is exact on cpu.")
    tf32: bool = Field(True, description="On CUDA, float32 matmuls use TF32 tensor cores (about 10 bits of "
                       "mantissa in the products, several times faster on Ampere and later); false keeps full "
                       "float32. No effect on the CPU.")
    data: Literal["memory", "stream", "auto"] = Field(
        "auto", description="memory: the whole split in memory (sasrec, hstu); stream: training windows streamed "
        "shard by shard (genrec.data.stream; split loo or temporal); auto: stream a large prepared folder (see "
        "stream.auto_events), memory otherwise.")
    checkpoint_every: int | None = Field(None, ge=1, description="Also checkpoint every this many steps within "
                                         "an epoch, with the data position, so --resume continues mid-epoch at "
                                         "the exact batch (None: at epoch ends only).")
    stream: StreamConfig = Field(StreamConfig(), description="How train.data: stream reads the shards.")

    @model_validator(mode="after")
    def _time_schedule_needs_budget(self) -> OptimConfig:
        if self.schedule_by == "time" and not self.max_minutes:
            raise ValueError("schedule_by: time needs max_minutes (the budget the decay runs over)")
        return self

    @model_validator(mode="after")
    def _sampled_softmax_options(self) -> OptimConfig:
        if self.loss != "sampled_softmax" and (self.negative_sampler != "uniform" or self.logq):
            raise ValueError("negative_sampler and logq apply to loss: sampled_softmax")
        if self.loss == "sampled_softmax" and self.negatives == 0 and not self.in_batch_negatives:
            raise ValueError("negatives: 0 leaves sampled softmax without negatives; set in_batch_negatives: true")
        return self


RANKERS = (*RANKING, "gbdt")  # every ranking model: the torch ones and the LightGBM baseline


class EvalSettings(BaseModel):
    model_config = _STRICT

    ks: list[int] = Field([5, 10, 20, 50, 200], description="Cut-offs reported.")
    exclude_seen: bool = Field(True, description="Exclude items already in the history.")
    n_boot: int = Field(1000, ge=10, description="Bootstrap resamples for the test intervals.")
    select_metric: str = Field("ndcg@10", description="Validation metric for early stopping and selection.")
    valid_users: int | None = Field(None, ge=1, description="SASRec / HSTU: validate on a fixed, seeded sample "
                                    "of this many validation users, the same every epoch (stated with the "
                                    "metric's 95% interval in every epoch line, metrics.jsonl and the report); "
                                    "None: every validation user. Test always ranks every test user.")
    valid_seed: int = Field(0, description="Seed of the validation sample (independent of train.seed).")
    test_users: int | None = Field(None, ge=1, description="SASRec / HSTU: test on a fixed, seeded sample of this "
                                   "many test users (seed test_seed; the sample's size is stated in the run's "
                                   "metrics.json and report) instead of every test user, for logs whose full test "
                                   "would take hours. None (the default): every test user.")
    test_seed: int = Field(0, description="Seed of the test sample.")
    calibrate: Literal["platt", "temperature", "none"] = Field(
        "platt", description="Ranking models: after selection, fit a monotone map of each binary task's logit on the "
        "validation impressions and apply it to the test predictions. platt: sigmoid(a * logit + b); temperature: "
        "sigmoid(a * logit), which rescales confidence but keeps the base rate the model learned over the whole "
        "training period instead of matching the validation days' (right when the positive rate drifts day to "
        "day); none: raw probabilities. true / false mean platt / none.")

    calibrate_base_rate: Literal["valid", "train"] = Field(
        "valid", description="Ranking models: the positive rate the calibrated validation predictions average to. "
        "valid: the validation impressions' own (what Platt scaling fits); train: the training part's, by moving "
        "the intercept after the fit. One day's rate is a noisy estimate of the next days' (KuaiRand-Pure's daily "
        "click rate ranges .42-.46 over its training days); the training part's covers many days.")

    @field_validator("calibrate", mode="before")
    @classmethod
    def _calibrate_bool(cls, value: Any) -> Any:
        return {True: "platt", False: "none"}.get(value, value) if isinstance(value, bool) else value


class ColdStartConfig(BaseModel):
    """``split: cold``: leave-one-out with a random fraction of items held out of training entirely."""

    model_config = _STRICT

    fraction: float = Field(0.05, gt=0, le=0.5, description="Share of the catalog held out (drawn uniformly).")
    seed: int = Field(0, description="Seed of the draw (independent of train.seed, so runs share the items).")


class TemporalConfig(BaseModel):
    """``split: temporal``: a global time cut; explicit cut times override the quantile defaults."""

    model_config = _STRICT

    valid_fraction: float = Field(0.1, gt=0, lt=1, description="Share of interactions after the validation cut "
                                  "and before the test cut (when valid_start is not given).")
    test_fraction: float = Field(0.1, gt=0, lt=1, description="Share of interactions after the test cut (when "
                                 "test_start is not given).")
    valid_start: float | None = Field(None, description="Validation cut, in the dataset's timestamp unit.")
    test_start: float | None = Field(None, description="Test cut, in the dataset's timestamp unit.")
    valid_day: int | None = Field(None, ge=19000101, le=99991231, description="Ranking logs (impressions): the "
                                  "first validation day, YYYYMMDD (default: the log's own cuts).")
    test_day: int | None = Field(None, ge=19000101, le=99991231, description="Ranking logs: the first test day.")
    end_day: int | None = Field(None, ge=19000101, le=99991231, description="Ranking logs: the first day after "
                                "the test (later impressions are in no part), for an earlier fold of a rolling "
                                "evaluation.")

    def days(self) -> dict[str, int]:
        """The ranking-log day cuts that are set."""
        return {k: v for k in ("valid_day", "test_day", "end_day") if (v := getattr(self, k)) is not None}


class NegativesConfig(BaseModel):
    """Ranking on a log of chosen items only (ratings): sampled negatives per rating, by popularity or drawn from
    per-user pools, e.g. retrieval's candidates (``benchmarks/retrieval_pools.py``), so the ranker learns to
    reorder what retrieval proposes. Items the user had rated before the run's held-out part are never
    negatives (``genrec.train.ranking.load_ranking_log``)."""

    model_config = _STRICT

    pools: Path | None = Field(None, description="Parquet of (user, items): each user's pool as raw ids of the "
                               "log. Default: popularity over the log's training part.")
    per_row: int = Field(4, ge=1, description="Negatives per rating.")
    seed: int = Field(0, description="Seed of the draws.")


class FeaturesConfig(BaseModel):
    """Item features added to an ID model's item embeddings (SASRec, HSTU)."""

    model_config = _STRICT

    semantic_ids: Path | None = Field(None, description="Folder written by 'genrec tokenize': item = id embedding "
                                      "+ sum of code embeddings (lets the model score items unseen in training).")
    content: Path | None = Field(None, description="Item embedding folder written by 'genrec content encode': "
                                 "item = id embedding + a learned projection of the content vector.")


class RunConfig(BaseModel):
    """``genrec train --config FILE``: dataset, split, model, optimisation and evaluation."""

    model_config = _STRICT

    dataset: str = Field(description="Built-in dataset name, prepared dataset folder, or interaction file.")
    split: Literal["loo", "temporal", "cold"] = Field("loo", description="Leave-one-out, temporal, or "
                                                      "leave-one-out with held-out cold items (see cold_start).")
    cold_start: ColdStartConfig = Field(ColdStartConfig(), description="Items held out with split: cold.")
    temporal: TemporalConfig = Field(TemporalConfig(), description="Cut times of split: temporal.")
    model: Annotated[SASRecConfig | HSTUConfig | TigerConfig | HSTUGeneratorConfig | RankerConfig | DCNConfig
                     | DINConfig | GBDTConfig,
                     Field(discriminator="name", description="The model: `name` picks it, the other keys are its "
                           "fields.")]
    train: OptimConfig = Field(OptimConfig(), description="Loss, optimiser, schedule, budgets and devices.")
    eval: EvalSettings = Field(EvalSettings(), description="Metrics, selection and calibration.")
    features: FeaturesConfig = Field(FeaturesConfig(), description="Item features of the ID models.")
    negatives: NegativesConfig | None = Field(None, description="Ranking models on a ratings log: negatives "
                                              "from per-user pools (see NegativesConfig).")
    requests: Literal["streaming", "frozen"] = Field(
        "streaming", description="Ranking models: how a request's candidates read the history, in training, "
        "validation and test. streaming: each candidate reads every strictly earlier impression of the user; "
        "frozen: every candidate reads the history and time of its request's first candidate, as a served "
        "request does (validation / test requests then hold up to max_len impressions; gbdt: every impression's "
        "features as of its request's first). Within-user metrics under "
        "streaming reward reading the outcomes of the other candidates being ranked (a per-user counter of earlier "
        "positives beats every model; benchmarks/ranking_counters.py); frozen measures the order of items only.")
    train_requests: Literal["streaming", "frozen"] | None = Field(
        None, description="Torch ranking models: how the training requests' candidates read the history (default: "
        "as `requests`). Validation and test always follow `requests`; training requests may differ, e.g. frozen "
        "requests scored by a model trained on streaming ones, whose candidates read every earlier impression.")
    train_stride: int | None = Field(None, ge=1, description="Torch ranking models: consecutive impressions of a "
                                     "user per training request (default max_len // 2). Frozen training requests "
                                     "all read the history as of their first candidate; a shorter stride gives "
                                     "more of them a longer history.")
    out: str | None = Field(None, description="Run folder (default runs/<config file stem>).")

    @model_validator(mode="before")
    @classmethod
    def _ranking_defaults(cls, raw: object) -> object:
        """Ranking models (ranker, dcn, din, gbdt) read an impression log split by time and select on GAUC: their
        defaults differ from the retrieval models'."""
        if isinstance(raw, dict) and isinstance(raw.get("model"), dict) and raw["model"].get("name") in RANKERS:
            raw = {**raw, "split": raw.get("split", "temporal")}
            raw["eval"] = {"select_metric": "gauc:mean", **(raw.get("eval") or {})}
        return raw

    @model_validator(mode="after")
    def _refit_runs(self) -> RunConfig:
        sequential = self.model.name in ("sasrec", "hstu", "tiger") and self.split == "loo"
        if self.train.refit and not (sequential or self.model.name in RANKERS):
            raise ValueError("train.refit applies to sasrec, hstu and tiger with split: loo (the validation item is "
                             "the one it adds to training) and to the ranking models (the validation impressions)")
        if self.temporal.days() and self.model.name not in RANKERS:
            raise ValueError("temporal.valid_day / test_day / end_day cut ranking logs; sequence models use "
                             "temporal.valid_start / test_start")
        if self.train.refit_epochs is not None and (not self.train.refit or self.model.name != "tiger"):
            raise ValueError("train.refit_epochs needs train.refit: true and model tiger (it skips the generator's "
                             "selection run)")
        return self

    @model_validator(mode="after")
    def _stream_runs(self) -> RunConfig:
        if self.train.data == "stream":
            if self.model.name not in ("sasrec", "hstu"):
                raise ValueError("train.data: stream applies to sasrec and hstu")
            if self.split == "cold" or self.train.refit:
                raise ValueError("train.data: stream supports split loo and temporal, without train.refit")
        if self.eval.valid_users is not None and self.model.name not in ("sasrec", "hstu"):
            raise ValueError("eval.valid_users applies to sasrec and hstu")
        if self.eval.test_users is not None and self.model.name not in ("sasrec", "hstu"):
            raise ValueError("eval.test_users applies to sasrec and hstu")
        return self

    @model_validator(mode="after")
    def _item_repr_needs_codes(self) -> RunConfig:
        repr_ = getattr(self.model, "item_repr", "id")
        if repr_ != "id" and self.features.semantic_ids is None:
            raise ValueError(f"model.item_repr: {repr_} represents items by their semantic IDs: set "
                             "features.semantic_ids (a folder written by 'genrec tokenize')")
        return self

    @model_validator(mode="after")
    def _ranking_runs(self) -> RunConfig:
        if self.negatives is not None and self.model.name not in RANKERS:
            raise ValueError("negatives: applies to ranking models (ranker, dcn, din)")
        if self.requests != "streaming" and self.model.name not in RANKERS:
            raise ValueError("requests: applies to ranking models (ranker, dcn, din)")
        if (self.train_requests is not None or self.train_stride is not None) and self.model.name not in RANKING:
            raise ValueError("train_requests and train_stride apply to the torch ranking models (ranker, dcn, din)")
        if self.train_stride is not None and self.train_stride > getattr(self.model, "max_len", self.train_stride):
            raise ValueError(f"train_stride ({self.train_stride}) must be at most model.max_len "
                             f"({self.model.max_len})")
        if self.train.ema is not None and self.model.name not in RANKING:
            raise ValueError("train.ema applies to the torch ranking models (ranker, dcn, din)")
        if self.model.name in RANKERS:
            if self.split == "cold" or (self.split == "loo" and self.model.name == "gbdt"):
                raise ValueError(f"model {self.model.name} trains on an impression log split by time: split must "
                                 "be temporal" + ("" if self.model.name == "gbdt" else " or loo (per user by time)"))
            if self.negatives is not None and self.model.name == "gbdt":
                raise ValueError("negatives: applies to the torch ranking models, not to gbdt")
            if self.features.semantic_ids or self.features.content:
                raise ValueError(f"features: applies to retrieval models, not to {self.model.name}")
        return self


def load_config(path: str | Path, overrides: dict | None = None) -> RunConfig:
    raw = read_yaml_mapping(path)
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{path}: {format_validation_error(e)}") from None


def _set_dotted(raw: dict, dotted: str, value: object) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted}: {key} is not a section")
    node[leaf] = yaml.safe_load(value) if isinstance(value, str) else value
