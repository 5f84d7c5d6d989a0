"""Two-stage evaluation on small generated data: leak-free ranker requests, id mapping between vocabularies,
weight selection on validation only, w = 0 equal to retrieval alone, and an oracle ranker's lift."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from genrec.data import Vocab
from genrec.data import impression_readers as imp
from genrec.data.dataset import prepare
from genrec.data.impression_readers import with_sampled_negatives
from genrec.data.impression_splits import temporal_split
from genrec.data.impressions import ImpressionLog
from genrec.data.jagged import Jagged
from genrec.errors import ConfigError
from genrec.eval.retrieval import rank_cases
from genrec.eval.two_stage import (
    DEFAULT_WEIGHTS,
    first_positive_cases,
    item_map,
    leave_one_out_cases,
    ranks_in_list,
    two_stage_eval,
)

DAY_MS = 86_400_000
T0 = 1_650_000_000_000


def feed_log(seed: int = 0, n_users: int = 120, n_items: int = 80, rows: int = 30,
             unique: bool = False) -> ImpressionLog:
    """A feed log over 10 days (3 rows per user and day, some at equal times), clicks with p = 0.5; with
    ``unique`` a user never sees an item twice (a ratings log)."""
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(1, n_users + 1), rows)
    n = len(user)
    step = np.tile(np.arange(rows), n_users)
    time = T0 + (step // 3) * DAY_MS + rng.integers(0, 3, size=n) * 1000 + user
    click = (rng.random(n) < 0.5).astype(np.int64)
    return ImpressionLog.build(
        name=f"feed{seed}", users=Vocab(pa.array(np.arange(n_users, dtype=np.int64) + 500)),
        items=Vocab(pa.array(np.arange(n_items, dtype=np.int64) * 7 + 3)), user=user,
        item=np.concatenate([rng.permutation(n_items)[:rows] + 1 for _ in range(n_users)]) if unique
        else rng.integers(1, n_items + 1, size=n), time=time, day=imp.utc_day(time), labels={"click": click},
        binary_tasks=("click",), regression_tasks=(), actions=(1 + click)[:, None], action_sizes={"signals": 3})


def clicks_dataset(log: ImpressionLog, extra_items: int = 5):
    """The log's clicks as sequences (raw ids), plus a few interactions with items the log does not know, so
    the retrieval vocabulary has a different order and items the ranker cannot score."""
    rows = np.flatnonzero(log.labels["click"] > 0)
    users = np.asarray(log.users.raw)[log.user[rows] - 1]
    items = np.asarray(log.items.raw)[log.item[rows] - 1]
    time = log.time[rows]
    extra_u = np.repeat(users[:extra_items], 1)
    extra_i = 100_000 + np.arange(extra_items)
    extra_t = np.full(extra_items, T0 - 1)
    perm = np.random.default_rng(1).permutation(len(rows) + extra_items)
    table = pa.table({"user": np.concatenate([users, extra_u])[perm], "item": np.concatenate([items, extra_i])[perm],
                      "timestamp": np.concatenate([time, extra_t])[perm]})
    return prepare(table, name="clicks")


def setup(seed: int = 0, **kwargs):
    log = feed_log(seed, **kwargs)
    split = temporal_split(log, int(imp.utc_day(np.array([T0 + 7 * DAY_MS]))[0]),
                           int(imp.utc_day(np.array([T0 + 8 * DAY_MS]))[0]), strict_time=True)
    ds = clicks_dataset(log)
    return log, split, ds, first_positive_cases(ds, log, split), item_map(ds.items.raw, log.items)


class TableRetrieval:
    """Fixed scores per (user, catalog item); ``boost`` puts chosen (user, history length) targets at a rank."""

    def __init__(self, n_users: int, n_items: int, seed: int = 0):
        self.n_items = n_items
        self.table = torch.from_numpy(np.random.default_rng(seed).normal(size=(n_users + 1, n_items + 1))).float()
        self.place: dict[tuple[int, int], tuple[int, int]] = {}

    def boost(self, cases, rank_of) -> None:
        for k in range(len(cases)):
            self.place[(int(cases.users[k]), len(cases.history.row(k)))] = (int(cases.targets[k]), rank_of(k))

    def score(self, history: Jagged, users: np.ndarray, timestamps: Jagged | None = None) -> torch.Tensor:
        out = self.table[torch.as_tensor(users)].clone()
        for b, u in enumerate(users):
            hit = self.place.get((int(u), len(history.row(b))))
            if hit is not None:
                target, rank = hit
                row = out[b].clone()
                row[0] = -np.inf
                row[history.row(b)] = -np.inf
                row[target] = -np.inf
                order = torch.sort(row[1:], descending=True, stable=True).values
                out[b, target] = (order[rank - 1] + order[rank]) / 2 if rank > 0 else order[0] + 1
        return out


class RecordingRanker:
    """Random logits for ``click`` (and a second output); ``answers`` (log user, time) -> log item gets +bonus.
    Records every request it is given."""

    def __init__(self, answers: dict[tuple[int, int], int] | None = None, bonus: float = 8.0, seed: int = 0,
                 bonus_fn=None):
        self.answers, self.bonus, self.bonus_fn = answers or {}, bonus, bonus_fn
        self.gen = torch.Generator().manual_seed(seed)
        self.calls: list[dict[str, np.ndarray]] = []

    def __call__(self, fields: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.calls.append({k: v.cpu().numpy().copy() for k, v in fields.items()})
        cand = fields["cand_items"]
        logits = torch.randn(cand.shape, generator=self.gen, dtype=torch.float32)
        for b in range(cand.shape[0]):
            key = (int(fields["user"][b]), int(fields["cand_time"][b].max()))
            target = self.answers.get(key)
            if target is not None:
                bonus = self.bonus_fn(key) if self.bonus_fn else self.bonus
                logits[b] += bonus * (cand[b] == target).float()
        return {"click": logits, "other": -logits}


def answers_of(*case_sets, items: np.ndarray) -> dict[tuple[int, int], int]:
    return {(int(c.log_users[k]), int(c.time[k])): int(items[c.targets[k]]) for c in case_sets for k in range(len(c))}


# --- ids and cases ---------------------------------------------------------------------------------------------

def test_item_map_between_vocabularies():
    log_items = Vocab(pa.array([10, 20, 30], pa.int64()))
    m = item_map(pa.array(["30", "99", "10"]), log_items)  # a run folder's items.parquet holds text ids
    assert m.tolist() == [0, 3, 0, 1]
    assert item_map(pa.array([20, 10], pa.int64()), log_items).tolist() == [0, 2, 1]
    log, _, ds, cases, items = setup()
    raw_ds = ds.items.raw.to_pylist()
    raw_log = log.items.raw.to_pylist()
    for dense in range(1, ds.n_items + 1):
        r = raw_ds[dense - 1]
        assert items[dense] == (raw_log.index(r) + 1 if r in raw_log else 0)
    assert (items == 0).sum() == 1 + 5  # padding and the 5 items the log does not know


def test_first_positive_cases():
    log, split, ds, cases, items = setup()
    for part in ("valid", "test"):
        c = cases[part]
        assert len(c) > 20 and c.info["cases"] == len(c)
        assert split.part(part)[c.rows].all() and (log.labels["click"][c.rows] == 1).all()
        assert np.array_equal(c.time, log.time[c.rows]) and np.array_equal(c.log_users, log.user[c.rows])
        assert np.array_equal(items[c.targets], log.item[c.rows])  # the target is the clicked item
        for k in range(len(c)):
            # the first click of the user in the part
            earlier = (log.user == c.log_users[k]) & split.part(part) & (log.labels["click"] == 1)
            assert c.rows[k] == np.flatnonzero(earlier)[0]
            # retrieval history: the user's clicks strictly before t (from the sequence dataset)
            ts = c.history_timestamps.row(k)
            assert len(ts) and (ts < c.time[k]).all()
            seq_u = ds.sequences.row(c.users[k] - 1)
            seq_t = ds.timestamps.row(c.users[k] - 1)
            assert np.array_equal(c.history.row(k), seq_u[seq_t < c.time[k]])
    with pytest.raises(ConfigError):
        first_positive_cases(ds, log, split, task="nope")


def test_leave_one_out_cases():
    log = feed_log(3, unique=True)
    split = temporal_split(log, int(imp.utc_day(np.array([T0 + 7 * DAY_MS]))[0]),
                           int(imp.utc_day(np.array([T0 + 8 * DAY_MS]))[0]), strict_time=True)
    # a view without timestamps: each user's first rows (a random number of them) in time order
    cut = np.random.default_rng(0).integers(6, 31, size=log.n_users + 1)
    rows = np.flatnonzero(np.arange(log.n_rows) - log.user_offsets[log.user - 1] < cut[log.user])
    table = pa.table({"user": np.asarray(log.users.raw)[log.user[rows] - 1],
                      "item": np.asarray(log.items.raw)[log.item[rows] - 1]})
    ds = prepare(table, name="loo")
    cases = leave_one_out_cases(ds, log, split)
    items = item_map(ds.items.raw, log.items)
    for part in ("valid", "test"):
        c = cases[part]
        assert len(c) > 0 and split.part(part)[c.rows].all()
        assert np.array_equal(items[c.targets], log.item[c.rows]) and np.array_equal(c.time, log.time[c.rows])
        pos = 1 if part == "test" else 2
        seq = ds.sequences.take(c.users - 1)
        assert np.array_equal(c.targets, seq.at(pos))  # the leave-one-out target
        assert np.array_equal(c.history.lengths, seq.lengths - pos)
    assert cases["test"].info["outside_period"] + len(cases["test"]) + cases["test"].info["not_in_log"] == ds.n_users


# --- the ranker's requests --------------------------------------------------------------------------------------

@pytest.mark.parametrize("negatives", [False, True])
def test_ranker_never_sees_the_target_or_later(negatives):
    log, split, ds, cases, items = setup(1)
    if negatives:  # sampled rows are candidates only: never history tokens
        log = with_sampled_negatives(log, 2, task="rate")
        items = item_map(ds.items.raw, log.items)
    ranker = RecordingRanker()
    retrieval = TableRetrieval(ds.n_users, ds.n_items)
    test = cases["test"]
    two_stage_eval(retrieval, ranker, log, cases, items, k_retrieve=20, ks=(10,), ranker_max_len=6,
                   ranker_batch=7, task_blend={"click": 1.0}, n_boot=50)
    k = 0
    for c in ranker.calls[-((len(test) + 6) // 7):]:  # the test cases' requests, 7 per call
        for b in range(len(c["user"])):
            u, t, row = test.log_users[k], test.time[k], test.rows[k]
            n = c["hist_len"][b]
            assert c["user"][b] == u and n <= 6
            cand = c["cand_items"][b]
            assert (c["cand_time"][b][cand > 0] == t).all() and (c["visible"][b][cand > 0] == n).all()
            hist_t = c["hist_time"][b, :n]
            assert (hist_t < t).all()  # strictly before the target: not the target, nothing later
            ctx = np.flatnonzero(log.context & (log.user == u) & (log.time < t))[-6:]
            assert np.array_equal(c["hist_items"][b, :n], log.item[ctx]) and n == len(ctx)
            assert row not in ctx
            k += 1
    assert k == len(test)


def test_candidates_are_mapped_to_the_ranker_vocabulary():
    log, _, ds, cases, items = setup(2)
    ranker = RecordingRanker()
    retrieval = TableRetrieval(ds.n_users, ds.n_items)
    unknown = np.flatnonzero(items == 0)[1:]
    retrieval.table[:, unknown] = 100.0  # the items the log does not know are retrieved first
    two_stage_eval(retrieval, ranker, log, cases, items, k_retrieve=30, ks=(10,), task_blend={"click": 1.0},
                   n_boot=50)
    from genrec.eval.two_stage import retrieve

    top, _ = retrieve(retrieval, cases["test"], ds.n_items, 30)
    sent = np.concatenate([c["cand_items"] for c in ranker.calls[-((len(cases["test"]) + 31) // 32):]])
    assert np.array_equal(sent, items[top])  # log ids of the retrieved items, 0 where unknown
    for k in range(len(sent)):  # unknown items not already seen come first, sent as 0 (no ranker id)
        n_new = len(set(unknown.tolist()) - set(cases["test"].history.row(k).tolist()))
        assert (sent[k, :n_new] == 0).all() and (sent[k, n_new:] > 0).all()


# --- fusion ------------------------------------------------------------------------------------------------------

def test_ranks_in_list_ties_keep_the_column_order():
    assert ranks_in_list(np.array([[1.0, 1.0, 2.0]]), np.array([1]), 99).tolist() == [2]  # tie: column order
    assert ranks_in_list(np.array([[1.0, 1.0, 2.0]]), np.array([-1]), 99).tolist() == [99]


def test_weight_zero_is_retrieval_alone():
    log, _, ds, cases, items = setup(4)
    retrieval = TableRetrieval(ds.n_users, ds.n_items, seed=3)
    retrieval.boost(cases["test"], lambda k: k % 40)  # targets spread over ranks 0..39
    res = two_stage_eval(retrieval, RecordingRanker(seed=5), log, cases, items, k_retrieve=50,
                         weights=(0.0, 1.0, None), ks=(10, 20), n_boot=50)
    from genrec.eval.two_stage import stage_scores

    sc = stage_scores(retrieval, RecordingRanker(seed=5), log, cases["test"], items, k_retrieve=50)
    base, zero = sc.per_case("retrieval", (10, 20)), sc.per_case(0.0, (10, 20))
    assert all(np.array_equal(base[m], zero[m]) for m in base)
    assert res.test["retrieval"] == res.test["0"]
    # and retrieval alone is what the full-catalog evaluator reports
    full = rank_cases(retrieval, cases["test"].eval_cases(), ds.n_items, ks=(10, 20), show_progress=False)
    for m in ("hr@10", "ndcg@10", "hr@20", "ndcg@20"):
        assert np.allclose(res.per_case["retrieval"][m], full.per_case[m])


def test_oracle_ranker_lifts_hr_and_the_paired_test_sees_it():
    log, _, ds, cases, items = setup(5, n_users=200)
    retrieval = TableRetrieval(ds.n_users, ds.n_items, seed=1)
    for part in ("valid", "test"):
        retrieval.boost(cases[part], lambda k: 10 + k % 30)  # retrieved at ranks 10..39: never in the top 10
    ranker = RecordingRanker(answers_of(cases["valid"], cases["test"], items=items))
    res = two_stage_eval(retrieval, ranker, log, cases, items, k_retrieve=50, ks=(10,), n_boot=200)
    test = cases["test"]
    unseen = np.mean([test.targets[k] not in test.history.row(k) for k in range(len(test))])  # seen: excluded
    assert res.test["retrieval"]["hr@10"] == 0.0 and unseen > 0.8
    assert res.info["test_recall_at_k"] == pytest.approx(unseen)
    chosen = "ranker only" if res.weight is None else f"{res.weight:g}"
    assert res.weight != 0.0 and res.test[chosen]["hr@10"] == pytest.approx(unseen)
    p = res.paired["hr@10"]
    assert p["diff"] == pytest.approx(unseen) and p["ci_low"] > 0 and p["p_value"] < 0.05 and p["p_wilcoxon"] < 0.05
    assert res.paired["ndcg@10"]["p_value"] < 0.05


def test_weight_is_chosen_on_validation_only():
    log, _, ds, cases, items = setup(6, n_users=150)
    retrieval = TableRetrieval(ds.n_users, ds.n_items, seed=2)
    for part in ("valid", "test"):
        retrieval.boost(cases[part], lambda k: k % 12)
    valid_times = set(cases["valid"].time.tolist())
    answers = answers_of(cases["valid"], cases["test"], items=items)

    def run(sign_valid: float, sign_test: float):
        bonus = lambda key: 8.0 * (sign_valid if key[1] in valid_times else sign_test)  # noqa: E731
        return two_stage_eval(retrieval, RecordingRanker(answers, bonus_fn=bonus), log, cases, items,
                              k_retrieve=40, ks=(10,), n_boot=50)

    helps_valid = run(+1, -1)  # the ranker knows the validation answers and is wrong on test
    assert helps_valid.weight != 0.0
    assert helps_valid.paired["ndcg@10"]["diff"] < 0  # the choice was not made on test
    hurts_valid = run(-1, +1)  # wrong on validation, right on test: validation keeps retrieval alone
    assert hurts_valid.weight == 0.0 and hurts_valid.paired["ndcg@10"]["diff"] == 0.0
    assert hurts_valid.test["4"]["ndcg@10"] > hurts_valid.test["retrieval"]["ndcg@10"]
    assert set(hurts_valid.valid) == {"retrieval", *("ranker only" if w is None else f"{w:g}"
                                                      for w in DEFAULT_WEIGHTS)}


def test_with_tiny_real_models():
    from genrec.models import HSTU, HSTUConfig
    from genrec.models.ranker import GenerativeRanker, RankerConfig
    from genrec.models.ranking import RankBatch, RankSpec

    log, _, ds, cases, items = setup(7, n_users=40)
    log = with_sampled_negatives(log, 1, task="rate")
    items = item_map(ds.items.raw, log.items)
    torch.manual_seed(0)
    retrieval = HSTU(HSTUConfig(dim=8, blocks=1, heads=1, max_len=10, dropout=0.0), ds.n_items,
                     use_timestamps=True).eval()
    ranker = GenerativeRanker(RankerConfig(dim=8, blocks=1, heads=1, max_len=5, dropout=0.0),
                              RankSpec(**log.spec_fields())).eval()
    res = two_stage_eval(retrieval, lambda f: ranker(RankBatch(**f)), log, cases, items, k_retrieve=25,
                         ks=(10,), ranker_max_len=5, n_boot=50)
    assert res.info["task_blend"] == {"rate": 1.0}
    assert all(np.isfinite(v["ndcg@10"]) for v in res.test.values())
    full = rank_cases(retrieval, cases["test"].eval_cases(), ds.n_items, ks=(10,), show_progress=False)
    assert np.allclose(res.per_case["retrieval"]["hr@10"], full.per_case["hr@10"])
