"""Training the semantic-ID generator (TIGER): teacher forcing on sliding windows, beam-search validation,
early stopping on validation NDCG@10, exact resume, and a test evaluation that is honest about beams.

A generator returns top-k lists, not scores over the catalog. For ranking, each beam item gets its
sequence log-probability and every other item -inf; a target outside the beams is then a miss at every K
(it is never ranked by the tie order among the -inf items), and metrics are reported only at K <= the beam
width.

Cold start: the trainer marks every item absent from the training sequences as cold on the model (the mark is
saved with the weights, so a bundle's recommender knows them too). With ``model.cold_mixing.epsilon > 0`` the
validation and test lists mix cold items in by shared ID prefix (TIGER's cold start); the test report then also
holds the same beams' metrics without the mixing (``info.cold_mixing.unmixed``), and for ``split: cold`` the
held-out-item and the other cases, each with the mixing. :func:`reevaluate_cold_mixing` re-runs a trained
run's test evaluation at several epsilons from one beam search, without retraining.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from genrec.data import Jagged, SequenceDataset, Split, load_dataset
from genrec.data.splits import ColdStartSplit, EvalCases, with_validation_in_train
from genrec.errors import ConfigError, DataError, GenrecError
from genrec.eval import Evaluation, bootstrap_ci, metrics_from_ranks, rank_cases, write_run
from genrec.eval.report import subset_summary
from genrec.io import read_json, write_json
from genrec.models.generators import build_generator
from genrec.models.tiger import TIGER, TigerConfig
from genrec.models.tiger_query import item_query_table, training_queries
from genrec.progress import progress_bar
from genrec.semantic_ids import SemanticIds
from genrec.train.checkpoint import load_tensors
from genrec.train.config import RunConfig
from genrec.train.loop import (
    Loop,
    LoopTrainer,
    Steps,
    TrainResult,
    optimizer_step,
    resolve_device,
    run_split,
    seed_everything,
)
from genrec.train.trainer import _select_k, cold_start_info, epoch_batches, save_model_files

# --- data -----------------------------------------------------------------------------------------------

def sliding_windows(split: Split, max_len: int, windows: str = "all") -> tuple[Jagged, np.ndarray]:
    """(history, target) pairs from the training sequences: ``all`` predicts every item from the (up to)
    ``max_len`` items before it; ``last`` only each sequence's last item."""
    seq = split.train.take(np.flatnonzero(split.train.lengths >= 2))
    n = seq.lengths
    if windows == "last":
        row, pos = np.arange(len(seq)), n - 1
    else:
        row = np.repeat(np.arange(len(seq)), n - 1)
        pos = np.arange(len(row)) - np.repeat(np.cumsum(n - 1) - (n - 1), n - 1) + 1  # 1 .. n-1 per row
    history = seq.take(row).slice_rows(np.maximum(0, pos - max_len), pos)
    return history, seq.values[seq.offsets[row] + pos].astype(np.int64)


def unseen_items(split: Split, n_items: int) -> np.ndarray:
    """The items that never occur in the training sequences (train count 0; for ``split: cold`` every held-out
    item among them): the generator never learned to write their IDs, so they are its cold items."""
    seen = np.zeros(n_items + 1, dtype=bool)
    seen[split.train.values] = True
    return np.flatnonzero(~seen[1:]) + 1


def semantic_ids_for(config: RunConfig, ds: SequenceDataset, sids: SemanticIds | None = None) -> SemanticIds:
    """The run's semantic IDs (given, or loaded from ``model.semantic_ids``), checked against the dataset."""
    folder = Path(config.model.semantic_ids or Path("runs") / "semantic_ids" / ds.name / "rqkmeans")
    where = "the given semantic IDs" if sids is not None else folder
    sids = sids if sids is not None else SemanticIds.load(folder)
    if sids.n_items != ds.n_items:
        raise DataError(f"semantic IDs cover {sids.n_items} items but dataset '{ds.name}' has {ds.n_items}; "
                        f"make them for this dataset (model.semantic_ids)", path=where)
    if not sids.is_unique():
        raise DataError("semantic IDs are not unique (the uniqueness code is missing)", path=where)
    return sids


# --- decoding and honest ranking ------------------------------------------------------------------------

@torch.no_grad()
def decode_cases(model: TIGER, cases: EvalCases, beam: int, k: int | None = None, batch_size: int = 256,
                 show_progress: bool = False, epsilon: float | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Beam search for every case: items [N, k], log-probabilities [N, k], and wall seconds.

    Cases are decoded in batches of similar history length (less padding), in the model's eval mode.
    ``epsilon``: cold mixing (default the model's ``config.cold_mixing.epsilon``; 0 = the plain beams)."""
    k = k or beam
    model.eval()
    hist = cases.history.tail(model.config.max_len)
    order = np.argsort(hist.lengths, kind="stable")
    items = np.zeros((len(cases), k), dtype=np.int64)
    scores = np.full((len(cases), k), -np.inf, dtype=np.float32)
    t0 = time.perf_counter()
    device = model.codes.device
    with progress_bar(len(cases), f"beam search ({beam} beams)", enabled=show_progress) as advance:
        for start in range(0, len(cases), batch_size):
            rows = order[start:start + batch_size]
            top, val = model.recommend(hist.take(rows).to_padded(left=True).to(device), k=k, beam=beam,
                                       epsilon=epsilon)
            items[rows], scores[rows] = top.cpu().numpy(), val.cpu().numpy()
            advance(len(rows))
    return items, scores, time.perf_counter() - t0


class _BeamScores:
    """Scorer over precomputed beams; ``users`` are case rows. Beam items keep their log-probability,
    every other item is -inf."""

    def __init__(self, items: np.ndarray, scores: np.ndarray, n_items: int):
        self.items, self.scores, self.n_items = torch.from_numpy(items), torch.from_numpy(scores), n_items

    def score(self, history: Jagged, users: np.ndarray, timestamps: Jagged | None = None) -> torch.Tensor:
        rows = torch.from_numpy(np.asarray(users, dtype=np.int64))
        out = torch.full((len(rows), self.n_items + 1), -torch.inf)
        return out.scatter_(1, self.items[rows], self.scores[rows])


def rank_beams(items: np.ndarray, scores: np.ndarray, cases: EvalCases, n_items: int, ks: Sequence[int],
               exclude_seen: bool = True, item_counts: np.ndarray | None = None):
    """Per-case metrics of decoded beams under the house ranking (seen items excluded, ties by id), with
    every target outside the beams counted as a miss (rank ``n_items``, all metrics 0)."""
    rows = EvalCases(np.arange(len(cases)), cases.history, cases.targets)
    r = rank_cases(_BeamScores(items, scores, n_items), rows, n_items, ks=ks, exclude_seen=exclude_seen,
                   item_counts=item_counts, show_progress=False)
    in_beam = (items == cases.targets[:, None]).any(axis=1)
    r.ranks = np.where(in_beam, r.ranks, n_items)
    missed = r.ranks >= n_items
    per_case = metrics_from_ranks(r.ranks, ks)
    for values in per_case.values():
        values[missed] = 0.0
    r.per_case = {**per_case, **{m: v for m, v in r.per_case.items() if m.startswith("popularity@")}}
    r.info.update(targets_outside_beams=int((~in_beam).sum()))
    return r


def evaluate_generator(model: TIGER, cases: EvalCases, dataset: SequenceDataset, *, part: str = "test",
                       beam: int | None = None, ks: Sequence[int] = (5, 10, 20), exclude_seen: bool = True,
                       item_counts: np.ndarray | None = None, n_boot: int = 1000, seed: int = 0,
                       show_progress: bool = True, epsilon: float | None = None, prefix: int | None = None,
                       decoded: tuple[np.ndarray, np.ndarray, float] | None = None) -> Evaluation:
    """Beam-search every case and evaluate it like any scorer (``genrec.eval.evaluate``), at K <= beam only.

    ``epsilon`` / ``prefix``: cold mixing (default the model's ``config.cold_mixing``) over the items the model
    marks cold; when on, ``info.cold_mixing`` holds its settings, the mean number of cold items per top K and
    the unmixed beams' metrics. ``decoded``: the plain beams (``decode_cases(..., k=beam, epsilon=0)``) when
    already at hand, e.g. to evaluate several epsilons from one beam search."""
    beam = beam or model.config.beam_width
    kept = sorted({int(k) for k in ks if k <= beam})
    if not kept:
        raise ConfigError(f"eval.ks {list(ks)}: no cut-off is <= the beam width {beam}")
    eps = model.config.cold_mixing.epsilon if epsilon is None else float(epsilon)
    plain_items, plain_scores, seconds = decoded or decode_cases(model, cases, beam, show_progress=show_progress,
                                                                 epsilon=0)
    mixing = eps > 0 and bool(model.cold.any())
    items, scores = plain_items, plain_scores
    if mixing:
        t0 = time.perf_counter()
        mixed = model.mix_cold(torch.from_numpy(plain_items), torch.from_numpy(plain_scores), beam, eps, prefix)
        items, scores = mixed[0].numpy(), mixed[1].numpy()
        seconds += time.perf_counter() - t0
    returned = items[np.isfinite(scores)]
    invalid = int(((returned < 1) | (returned > dataset.n_items)).sum())  # 0 by construction: the trie
    r = rank_beams(items, scores, cases, dataset.n_items, kept, exclude_seen, item_counts)
    columns = {"user": pa.array([str(v) for v in dataset.users.decode(cases.users)], pa.string()),
               "target": pa.array([str(v) for v in dataset.items.decode(cases.targets)], pa.string()),
               "rank": r.ranks, **r.per_case}
    info = {**r.info, "part": part, "n_boot": n_boot, "ci": "95% percentile bootstrap over users",
            "protocol": f"full catalog, constrained beam search ({beam} beams; targets outside the beams are "
                        "misses)", "beam_width": beam, "ks_dropped_beyond_beam": sorted(set(ks) - set(kept)),
            "invalid_ids": invalid, "decode_seconds": seconds,
            "decode_ms_per_user": 1000 * seconds / max(len(cases), 1)}
    if mixing:
        is_cold = model.cold.cpu().numpy()
        found = np.isfinite(scores)
        unmixed = rank_beams(plain_items, plain_scores, cases, dataset.n_items, kept, exclude_seen, item_counts)
        info["protocol"] += (f"; cold mixing: items never seen in training sharing a beam's first "
                             f"{model.cold_prefix(prefix)} codes mixed in, at most ceil({eps:g} n) of every top n")
        info["cold_mixing"] = {
            "epsilon": eps, "prefix": model.cold_prefix(prefix), "cold_items": int(is_cold.sum()),
            "cold_per_list": {f"@{k}": float((is_cold[items[:, :k]] & found[:, :k]).sum(1).mean()) for k in kept},
            "unmixed": {m: float(v.mean()) for m, v in unmixed.per_case.items() if not m.startswith("popularity")}}
    return Evaluation(part, pa.table(columns), bootstrap_ci(r.per_case, n_boot=n_boot, seed=seed), r.aggregate, info)


# --- training -------------------------------------------------------------------------------------------

class GeneratorTrainer(LoopTrainer):
    """``genrec train`` for ``model.name: tiger``: teacher-forcing steps and beam-search validation in the shared
    loop (genrec.train.loop), then the test evaluation and model files in the run folder."""

    def __init__(self, config: RunConfig, run_dir: str | Path, dataset: SequenceDataset | None = None,
                 semantic_ids: SemanticIds | None = None, show_progress: bool = True):
        if not isinstance(config.model, TigerConfig):
            raise ConfigError(f"model.name must be 'tiger' for the generator trainer, got {config.model.name!r}")
        if config.train.loss != "full_ce":
            raise ConfigError("train.loss: the generator trains with cross-entropy over codes; use 'full_ce'")
        features = getattr(config, "features", None)
        if features is not None and any(features.model_dump().values()):
            raise ConfigError("features: item features are for ID models (sasrec, hstu); the generator reads its "
                              "semantic IDs from model.semantic_ids")
        if config.train.mask_unseen:
            raise ConfigError("train.mask_unseen is for ID models (sasrec, hstu); the generator's softmax is "
                              "over codes")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("the generator trainer runs on one process (no torchrun yet)")
        self.config, self.run_dir = config, Path(run_dir)
        self.dataset, self.semantic_ids, self.show_progress = dataset, semantic_ids, show_progress
        self.queries: torch.Tensor | None = None  # model.query: the items' content vectors

    def fit(self, resume: bool = False, on_epoch_end=None) -> TrainResult:
        cfg, tcfg, mcfg = self.config, self.config.train, self.config.model
        k_sel = _select_k(cfg.eval.select_metric)
        if k_sel > mcfg.beam_width:
            raise ConfigError(f"eval.select_metric {cfg.eval.select_metric} needs K <= model.beam_width "
                              f"({mcfg.beam_width})")
        device = resolve_device(tcfg.device, tcfg.tf32)
        self._begin()
        ds = self.dataset or load_dataset(cfg.dataset)
        sids = semantic_ids_for(cfg, ds, self.semantic_ids)
        self.queries = self._query_table(ds) if mcfg.query is not None else None
        cfg, mcfg = self.config, self.config.model
        split = run_split(cfg, ds)
        history, targets = sliding_windows(split, mcfg.max_len, tcfg.windows)
        if len(targets) == 0:
            raise DataError(f"dataset '{ds.name}' has no training sequence of 2 or more items")
        valid = sample_valid(split.valid, mcfg.valid_sample, tcfg.seed)
        model = TIGER(mcfg, sids.codes, sids.sizes).to(device)
        steps = self._steps(model, history, targets)
        skip_selection = tcfg.refit_epochs is not None  # then only the refit has a checkpoint to resume from
        again = resume and (not skip_selection or Loop.started(self.run_dir))
        loop = Loop(cfg, model, steps.steps, self.run_dir, again, show_progress=self.show_progress)
        model.set_cold_items(unseen_items(split, ds.n_items))
        if not skip_selection:
            loop.run(steps, tcfg.epochs, validate=lambda m: self._validate(m, valid, ds, k_sel), say=self._say,
                     on_epoch_end=on_epoch_end)
            loop.restore_best()
        refit = None
        if tcfg.refit:
            model, split, refit = self._refit(split, ds, sids, device,
                                              tcfg.refit_epochs or max(loop.state["best_epoch"] or 1, 1), resume)
        model.set_cold_items(unseen_items(split, ds.n_items))  # weights saved before the mark have none
        model.eval()
        return loop.result(model, self._test(model, split, ds, sids, loop, refit))

    def _steps(self, model: TIGER, history: Jagged, targets: np.ndarray) -> Steps:
        """Teacher forcing on the (history, target) windows, batches of similar history length."""
        tcfg, device, levels = self.config.train, model.codes.device, model.n_levels
        query_rng = torch.Generator().manual_seed(tcfg.seed)  # a resumed run draws other queries: harmless

        def batches(epoch: int, start: dict[str, Any] | None) -> list[np.ndarray]:
            rows = epoch_batches(history.lengths, tcfg.batch_size, np.random.default_rng([tcfg.seed, epoch]))
            return rows[int(start["step"]) if start else 0:]

        def step(rows: np.ndarray, opt: torch.optim.Optimizer, sched: Any) -> tuple[float, float]:
            target = torch.from_numpy(targets[rows]).to(device)
            query = None
            if self.queries is not None:
                query = training_queries(self.queries, target, self.config.model.query, query_rng)
            loss_sum = model.loss(history.take(rows).to_padded(left=True).to(device), target, query)
            optimizer_step(loss_sum / (len(rows) * levels), model, opt, sched, tcfg.clip_norm)
            return float(loss_sum.detach()), len(rows) * levels

        return Steps(model, math.ceil(len(targets) / tcfg.batch_size), batches, step,
                     rates=lambda tokens, seconds: {"windows_per_s": tokens / levels / seconds})

    def _query_table(self, ds: SequenceDataset) -> torch.Tensor:
        """``model.query``: the items' content vectors (L2-normalised, on the device) that training queries are
        drawn from; fills in ``model.query.dim`` from the table."""
        from genrec.content.store import ItemEmbeddings

        q = self.config.model.query
        folder = Path(q.content or Path("runs") / "content" / ds.name)
        emb = ItemEmbeddings.load(folder)
        if [str(i) for i in emb.item_ids] != [str(i) for i in ds.items.decode(np.arange(1, ds.n_items + 1))]:
            raise DataError(f"model.query.content holds {emb.n_items:,} items that do not match dataset "
                            f"'{ds.name}' ({ds.n_items:,} items) in dense-id order; encode this dataset", path=folder)
        if q.dim is not None and q.dim != emb.dim:
            raise ConfigError(f"model.query.dim {q.dim} differs from the content table's {emb.dim}")
        query = q.model_copy(update={"dim": emb.dim, "content": str(folder)})
        self.config = self.config.model_copy(update={"model": self.config.model.model_copy(update={"query": query})})
        return item_query_table(emb.vectors).to(resolve_device(self.config.train.device))

    def _refit(self, split: Split, ds: SequenceDataset, sids: SemanticIds, device: torch.device, epochs: int,
               resume: bool) -> tuple[TIGER, Split, dict[str, Any]]:
        """``train.refit``: a fresh generator (same seed and schedule) trained on the sliding windows of the
        training sequences plus every user's validation item for ``epochs`` epochs, in ``<run>/refit``. No
        selection happens here: the validation items are training targets now."""
        cfg, tcfg = self.config, self.config.train
        seed_everything(tcfg.seed)
        split = with_validation_in_train(split)
        history, targets = sliding_windows(split, cfg.model.max_len, tcfg.windows)
        model = TIGER(cfg.model, sids.codes, sids.sizes).to(device)
        model.set_cold_items(unseen_items(split, ds.n_items))
        steps = self._steps(model, history, targets)
        folder = self.run_dir / "refit"
        loop = Loop(cfg, model, steps.steps, folder, resume and Loop.started(folder), show_progress=self.show_progress)
        loop.run(steps, epochs, say=self._say_refit)
        return model, split, {**loop.refit_summary(epochs), "targets": len(targets),
                              "selection_skipped": tcfg.refit_epochs is not None}

    def _validate(self, model: TIGER, valid: EvalCases, ds: SequenceDataset, k_sel: int) -> dict[str, float]:
        beam = self.config.model.beam_width
        items, scores, seconds = decode_cases(model, valid, beam, show_progress=self.show_progress)
        r = rank_beams(items, scores, valid, ds.n_items, sorted({k_sel, 10}), self.config.eval.exclude_seen)
        shown = sorted({self.config.eval.select_metric, "hr@10", "ndcg@10"})
        out = {f"valid_{m}": float(r.per_case[m].mean()) for m in shown}
        out["valid_decode_ms_per_user"] = 1000 * seconds / max(len(valid), 1)
        return out

    def _test(self, model: TIGER, split: Split, ds: SequenceDataset, sids: SemanticIds, loop: Loop,
              refit: dict[str, Any] | None = None) -> Evaluation:
        cfg = self.config
        counts = np.bincount(split.train.values, minlength=ds.n_items + 1)
        ev = evaluate_generator(model, split.test, ds, part="test", beam=cfg.model.beam_width, ks=cfg.eval.ks,
                                exclude_seen=cfg.eval.exclude_seen, item_counts=counts, n_boot=cfg.eval.n_boot,
                                seed=cfg.train.seed, show_progress=self.show_progress)
        ev.info.update(**loop.summary(), **({"refit": refit} if refit else {}),
                       commit_at_start=self.commit_at_start, allocator=self.allocator,
                       device=str(model.codes.device), **cold_start_info(split, ev, cfg),
                       semantic_ids={k: v for k, v in sids.meta.items() if isinstance(v, str | int | float)})
        run_config = {"model": cfg.model.name, "split": cfg.split, **cfg.model_dump(mode="json")}
        write_run(self.run_dir, run_config, ev, ds, loop.state["train_seconds"])
        save_generator(self.run_dir, model, ds, counts)
        return ev


def sample_valid(valid: EvalCases, size: int | None, seed: int) -> EvalCases:
    """A fixed, seeded sample of ``size`` validation cases (all of them when ``size`` is unset or not smaller)."""
    if not size or size >= len(valid):
        return valid
    return valid.take(np.sort(np.random.default_rng([seed, 1]).choice(len(valid), size, replace=False)))


def save_generator(folder: Path, model: TIGER, ds: SequenceDataset, counts: np.ndarray) -> None:
    """What a bundle needs of a generator: an ID model's files (:func:`save_model_files`), with a model.json
    naming tiger and its codebook sizes (the codes travel in the weights); :func:`load_generator` reads them."""
    write_generator(folder, model, ds, counts, "tiger")


def write_generator(folder: Path, model: torch.nn.Module, ds: SequenceDataset, counts: np.ndarray,
                    name: str) -> None:
    """A semantic-ID generator's files: an ID model's, with a model.json naming the model and its codebook sizes."""
    save_model_files(folder, model, ds, counts)
    write_json(folder / "model.json", {"name": name, "config": model.config.model_dump(mode="json"),
                                       "n_items": model.n_items, "sizes": model.sizes, "use_timestamps": False})


def load_generator(run_dir: str | Path) -> TIGER:
    """The trained generator of a run folder (model.json + model.safetensors; the codes travel in the weights),
    in float32 whatever precision the weights were saved in."""
    return read_generator(run_dir, "tiger")


def read_generator(run_dir: str | Path, name: str) -> Any:
    """The ``name`` generator of a run folder (genrec.models.generators.build_generator: float32, eval mode)."""
    run_dir = Path(run_dir)
    spec = read_json(run_dir / "model.json")
    if spec.get("name") != name:
        raise GenrecError(f"{run_dir / 'model.json'}: holds a {spec.get('name')!r} model, not {name}")
    return build_generator(spec, load_tensors(run_dir / "model.safetensors"))


def reevaluate_cold_mixing(run_dir: str | Path, epsilons: Sequence[float], *,
                           prefixes: Sequence[int | None] = (None,), dataset: SequenceDataset | None = None,
                           sample: int | None = None, all_cold_cases: bool = False, device: str = "cpu",
                           show_progress: bool = True) -> dict[tuple[float, int], Evaluation]:
    """The test evaluation of a trained generator run, again, with cold mixing at each of ``epsilons`` (0: the
    beams as they are) and each prefix length of ``prefixes`` (None: the model's default, all codes but the
    last), all from one beam search, without retraining; the run folder is only read. Keys: (epsilon, prefix).

    The run's config.json gives the dataset, split and evaluation settings; its weights (model.safetensors,
    any precision) are loaded in float32 on ``device``. The cold items are the items absent from the run's
    training sequences (as the trainer marks them). "Cold cases" are the test cases whose target is held out
    (``split: cold``) or, on other splits, absent from training; the rest are "warm". Each Evaluation's
    ``info.cold_cases`` / ``info.warm_cases`` hold their metrics with bootstrap intervals and how many there
    are in the test set and were evaluated, and ``info.test_estimate`` the metrics over the whole test set.

    ``sample``: evaluate only that many test cases drawn uniformly with ``train.seed`` (cheaper, noisier), or,
    with ``all_cold_cases``, every cold case plus ``sample`` warm ones; ``test_estimate`` weighs the cold and
    warm parts by their share of the test set (the Evaluation's own summary is over the evaluated cases only)."""
    run_dir = Path(run_dir)
    if not (run_dir / "model.safetensors").is_file():
        raise GenrecError(f"{run_dir}: no model.safetensors (only the run's results were kept); retrain it or "
                          "copy its weights there")
    raw = read_json(run_dir / "config.json")
    raw.pop("run", None)  # what write_run adds (commit, machine, time)
    cfg = RunConfig.model_validate(raw)
    if not isinstance(cfg.model, TigerConfig):
        raise ConfigError(f"{run_dir}: not a generator run (model.name {cfg.model.name!r})")
    ds = dataset or load_dataset(cfg.dataset)
    split = run_split(cfg, ds)
    model = load_generator(run_dir).to(resolve_device(device))
    unseen = unseen_items(split, ds.n_items)
    model.set_cold_items(unseen)
    if isinstance(split, ColdStartSplit):
        cold_case, definition = split.test_cold, "target held out of training (split: cold)"
    else:
        cold_case, definition = np.isin(split.test.targets, unseen), "target absent from the training sequences"
    rng = np.random.default_rng([cfg.train.seed, 2])
    rows = np.arange(len(split.test))
    if sample and all_cold_cases:
        warm_rows = np.flatnonzero(~cold_case)
        if sample < len(warm_rows):
            warm_rows = rng.choice(warm_rows, sample, replace=False)
        rows = np.sort(np.concatenate([np.flatnonzero(cold_case), warm_rows]))
    elif sample and sample < len(rows):
        rows = np.sort(rng.choice(len(rows), sample, replace=False))
    cases, is_cold = split.test.take(rows), cold_case[rows]
    weight = np.ones(len(rows))  # post-stratified: each part weighs its share of the test set
    if is_cold.sum() and (~is_cold).sum():
        weight = np.where(is_cold, cold_case.sum() / is_cold.sum(), (~cold_case).sum() / (~is_cold).sum())
    beam = cfg.model.beam_width
    decoded = decode_cases(model, cases, beam, show_progress=show_progress, epsilon=0)
    counts = np.bincount(split.train.values, minlength=ds.n_items + 1)
    out = {}
    settings = dict.fromkeys((float(e), model.cold_prefix(p)) for e in epsilons for p in prefixes)
    for eps, prefix in settings:
        ev = evaluate_generator(model, cases, ds, part="test", beam=beam, ks=cfg.eval.ks,
                                exclude_seen=cfg.eval.exclude_seen, item_counts=counts, n_boot=cfg.eval.n_boot,
                                seed=cfg.train.seed, epsilon=eps, prefix=prefix, decoded=decoded)
        ev.info.update(run=str(run_dir), split=cfg.split, test_cases=len(split.test), evaluated_cases=len(rows),
                       sample=None if len(rows) == len(split.test) else
                       ("every cold case + uniform warm" if sample and all_cold_cases else "uniform"),
                       device=str(model.codes.device), unseen_items=len(unseen),
                       test_estimate={m: float((weight * ev.per_user.column(m).to_numpy()).sum() / weight.sum())
                                      for m in ev.summary})
        for name, mask, total in (("cold_cases", is_cold, cold_case.sum()),
                                  ("warm_cases", ~is_cold, (~cold_case).sum())):
            ev.info[name] = {"definition": definition if name == "cold_cases" else "every other test case",
                             "test_cases": int(total), "evaluated": int(mask.sum()),
                             **subset_summary(ev, mask, cfg.eval.n_boot, cfg.train.seed)}
        if isinstance(split, ColdStartSplit):
            ev.info["held_out_items"] = len(split.cold_items)
        out[(eps, prefix)] = ev
    return out
