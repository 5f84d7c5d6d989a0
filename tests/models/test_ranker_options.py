"""GenerativeRanker's optional parts, each keeping the cached pass exact and reading only what a candidate may
see: target attention and heads that read the embeddings, the item prior (wide part), the listwise loss, history
statistics, time context (hour of day, gap buckets) and row context."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from tests.models.ranker_testing import (
    ITEM_CAT,
    N_ITEMS,
    SPEC,
    TIGHT,
    USER_AGE,
    assert_exact_and_prefix_only,
    make_batch,
    make_model,
    stacked,
    with_row_context,
)

from genrec.models.ranker import GenerativeRanker, RankerConfig, gap_bucket
from genrec.models.ranking import RankBatch, RankSpec, multitask_loss


@pytest.mark.parametrize("head_input", ["output", "output+embeddings+product"])
def test_target_attention_keeps_kv_reuse_exact_and_reads_only_the_visible_history(head_input: str) -> None:
    torch.manual_seed(0)
    model = GenerativeRanker(RankerConfig(dim=16, heads=2, max_len=6, dropout=0.0, init_std=0.3,
                                          head_input=head_input, target_attention=(8, 4)),
                             SPEC, {"cat": ITEM_CAT}, {"age": USER_AGE}).double().eval()

    def edit(batch: RankBatch, j: int) -> RankBatch:
        edited = dataclasses.replace(batch, hist_items=batch.hist_items.clone())
        edited.hist_items[0, j] = 1 + edited.hist_items[0, j] % (SPEC.n_items - 1)
        return edited

    assert_exact_and_prefix_only(model, edit)
    plain = GenerativeRanker(RankerConfig(dim=16, heads=2, max_len=6, dropout=0.0, init_std=0.3,
                                          head_input=head_input), SPEC, {"cat": ITEM_CAT}, {"age": USER_AGE})
    assert model.heads.heads[f"task_{SPEC.tasks[0]}"][0].in_features == \
        plain.heads.heads[f"task_{SPEC.tasks[0]}"][0].in_features + 32


@pytest.mark.parametrize("head_input", ["output+embeddings", "output+embeddings+product"])
def test_heads_reading_the_embeddings_keep_kv_reuse_exact(head_input: str) -> None:
    torch.manual_seed(0)
    model = GenerativeRanker(RankerConfig(dim=16, heads=2, max_len=6, dropout=0.0, init_std=0.3,
                                          head_input=head_input), SPEC, {"cat": ITEM_CAT}, {"age": USER_AGE})
    model = model.double().eval()
    batch = make_batch(9, length=8)
    torch.testing.assert_close(stacked(model(batch)), stacked(model.score_one_by_one(batch)), **TIGHT)
    out = model(batch)
    assert set(out) == set(SPEC.tasks) and out[SPEC.tasks[0]].shape == batch.cand_items.shape


# --- the item prior (wide part) ------------------------------------------------------------------------------

def prior_counts(seed: int, n: int = 400) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(1, N_ITEMS + 1, (n,), generator=g)
    times = 1_600_000_000_000 + torch.randint(0, 10**6, (n,), generator=g)
    rate = torch.linspace(0.02, 0.6, N_ITEMS + 1)[items]  # item i's true rate rises with i
    return items, times, {t: (torch.rand(n, generator=g) < rate).double() for t in SPEC.binary_tasks}


def test_item_prior_counts_only_earlier_impressions_of_the_item() -> None:
    from genrec.models.ranking import ItemPrior

    items, times, labels = prior_counts(0)
    prior = ItemPrior(N_ITEMS, SPEC.binary_tasks, strength=5.0).double()
    prior.fit(items, times, labels)
    base = labels["like"].mean()

    def expected(i: int, when: int) -> torch.Tensor:
        seen = (items == i) & (times < when)
        rate = (labels["like"][seen].sum() + 5 * base) / (seen.sum() + 5)
        return torch.logit(rate) - torch.logit(base)

    i = 7
    t_i = times[items == i].sort().values
    for when in (int(t_i[0]), int(t_i[len(t_i) // 2]), int(t_i[-1]), int(t_i[-1]) + 1, 2 * 10**12):
        got = prior(torch.tensor([[i]]), torch.tensor([[when]]))["like"][0, 0]
        torch.testing.assert_close(got, expected(i, when), rtol=1e-5, atol=1e-6)
    # no label at or after a row's time is in its offset: changing them all changes nothing
    when = int(t_i[len(t_i) // 2])
    before = prior(torch.tensor([[i]]), torch.tensor([[when]]))["like"]
    later = {t: torch.where(times >= when, 1 - v, v) for t, v in labels.items()}
    prior.fit(items, times, later)
    prior.base.copy_(base)  # the global base rate is the only thing the later labels moved
    torch.testing.assert_close(prior(torch.tensor([[i]]), torch.tensor([[when]]))["like"], before)
    # padding and an item never shown read the base rate: offset 0
    assert float(prior(torch.tensor([[0]]), torch.tensor([[when]]))["like"].detach().abs()) < 1e-6


def test_item_prior_counts_the_training_rows_and_their_base_rate() -> None:
    import numpy as np
    import pyarrow as pa

    from genrec.data.dataset import Vocab
    from genrec.data.impression_readers import utc_day
    from genrec.data.impression_splits import temporal_split
    from genrec.data.impressions import ImpressionLog
    from genrec.models.ranking import ItemPrior
    from genrec.train.ranking import fit_item_prior

    items, times, labels = prior_counts(2)

    class Holder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.prior = ItemPrior(N_ITEMS, SPEC.binary_tasks)

    n = len(items)
    t = 1_600_000_000_000 + (times.numpy() - 1_600_000_000_000) * 8640  # over 100 days
    log = ImpressionLog.build(
        name="gen", users=Vocab(pa.array(np.arange(4))), items=Vocab(pa.array(np.arange(N_ITEMS))),
        user=np.arange(n) % 4 + 1, item=items.numpy(), time=t, day=utc_day(t),
        labels={t: v.numpy() for t, v in labels.items()}, binary_tasks=SPEC.binary_tasks, regression_tasks=(),
        actions=np.ones((n, 1), np.int64), action_sizes={"signals": 2})
    days = np.unique(log.day)
    split = temporal_split(log, valid_day=int(days[len(days) * 6 // 10]), test_day=int(days[len(days) * 8 // 10]))
    assert split.train.any() and split.test.any()
    model = Holder()
    fit_item_prior(model, log, split.train)
    assert len(model.prior.keys) == split.train.sum() < log.n_rows
    base = torch.tensor([log.labels[t][split.train].mean() for t in model.prior.tasks], dtype=torch.float32)
    torch.testing.assert_close(model.prior.base, base)


def test_ranker_with_item_prior_keeps_kv_reuse_exact_and_saves_the_counts() -> None:
    model = make_model(item_prior=True)
    items, times, labels = prior_counts(1)
    model.prior.fit(items, times, labels)
    batch = make_batch(5)
    torch.testing.assert_close(stacked(model(batch)), stacked(model.score_one_by_one(batch)), **TIGHT)
    without = make_model(item_prior=False)
    offset = model.prior(batch.cand_items, batch.cand_time)
    assert offset["like"][batch.cand_mask].abs().max() > 0.05
    for t in SPEC.binary_tasks:  # the same trunk and heads (same seed) plus the offset
        torch.testing.assert_close(model(batch)[t], without(batch)[t] + offset[t], **TIGHT)
    torch.testing.assert_close(model(batch)["watch"], without(batch)["watch"], **TIGHT)
    restored = make_model(seed=3, item_prior=True)  # an empty table: loading brings the saved one, any size
    restored.load_state_dict(model.state_dict())
    torch.testing.assert_close(stacked(restored(batch)), stacked(model(batch)), **TIGHT)


def test_listwise_loss_reads_only_the_order_within_a_request() -> None:
    from genrec.models.ranking import listwise_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 6, generator=g, dtype=torch.float64)
    labels = torch.tensor([[1, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0], [0, 1, 0, 0, 0, 0]]).double()
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[3, 4:] = False  # padding: request 3 has 4 real candidates
    loss = listwise_loss(logits, labels, mask)
    # request 1 (no positive) counts for nothing; the others: mean over positives of -log softmax
    expected = []
    for b in (0, 2, 3):
        real = mask[b]
        log_p = logits[b, real] - torch.logsumexp(logits[b, real], 0)
        expected.append(-log_p[labels[b, real] > 0].mean())
    torch.testing.assert_close(loss, torch.stack(expected).mean())
    # a constant per request (who the user is) changes nothing; padded logits are never read
    shifted = logits + torch.randn(4, 1, generator=g, dtype=torch.float64) * 10
    shifted[3, 4:] = 1e6
    torch.testing.assert_close(listwise_loss(shifted, labels, mask), loss)
    # it multiplies into the task loss only where asked
    outputs = {"click": logits, "like": logits, "watch": logits}
    targets = {"click": labels, "like": labels, "watch": labels}
    plain, _ = multitask_loss(outputs, targets, mask, ("click", "like"))
    with_lw, per_task = multitask_loss(outputs, targets, mask, ("click", "like"), listwise={"like": 0.5})
    torch.testing.assert_close(with_lw - plain, 0.5 * loss)
    with pytest.raises(ValueError, match="listwise"):
        make_model(listwise={"watch": 1.0})


# --- history statistics -------------------------------------------------------------------------------------

def test_history_stats_count_exactly_what_the_candidate_may_read() -> None:
    from genrec.models.ranking import HistoryStats

    spec = RankSpec(n_items=5, n_users=1, binary_tasks=("click",), item_feature_sizes={"author": 3},
                    action_sizes={"signals": 5, "watch": 3}, action_bits={"signals": 2})
    stats = HistoryStats(spec, ("item", "author")).double()
    # codes: signals 1 + bits (bit 0 = click, bit 1 = like); watch 1 + bucket (one-hot of 2 buckets)
    actions = torch.tensor([[[2, 1], [4, 2], [1, 2], [0, 0]]])  # click; click + like; nothing; padding
    signals = stats.signals(actions)
    torch.testing.assert_close(signals[0], torch.tensor([[1., 0, 1, 0], [1, 1, 0, 1], [0, 0, 0, 1], [0, 0, 0, 0]],
                                                        dtype=torch.float64))
    hist_items, authors = torch.tensor([[1, 2, 1, 0]]), torch.tensor([[1, 1, 2, 0]])
    cands, cand_authors = torch.tensor([[1, 3]]), torch.tensor([[1, 0]])
    mask = torch.tensor([[[True, True, False, False], [True, True, True, False]]])  # reads 2, reads 3
    out = stats(signals, mask, [(hist_items, cands), (authors, cand_authors)])
    assert out.shape == (1, 2, stats.width) and stats.width == 1 + 4 + 2 * (2 + 4)
    n0 = 2.0  # candidate 0 reads tokens 0, 1: item 1 matches token 0; author 1 matches tokens 0 and 1
    want0 = [math.log1p(n0), 2 / 3, 1 / 3, 1 / 3, 1 / 3,
             math.log1p(1), 1 / 3, 1 / 2, 0, 1 / 2, 0,
             math.log1p(2), 2 / 3, 2 / 3, 1 / 3, 1 / 3, 1 / 3]
    # candidate 1 reads all three; item 3 was never seen, its author is unknown (code 0): no match
    want1 = [math.log1p(3), 2 / 4, 1 / 4, 1 / 4, 2 / 4] + [0.0] * 12
    torch.testing.assert_close(out[0], torch.tensor([want0, want1], dtype=torch.float64), **TIGHT)


def test_ranker_with_history_stats_keeps_kv_reuse_exact_and_reads_only_the_visible_history() -> None:
    torch.manual_seed(0)
    spec = dataclasses.replace(SPEC, action_bits={"clicked": 1})
    model = GenerativeRanker(RankerConfig(dim=16, heads=2, max_len=6, dropout=0.0, init_std=0.3,
                                          history_stats=("item", "cat")), spec, {"cat": ITEM_CAT},
                             {"age": USER_AGE}).double().eval()
    assert model.history_stats.n_signals == 1 + 2  # one bit, plus the one-hot of "liked"'s two codes

    def edit(batch: RankBatch, j: int) -> RankBatch:  # an action of history token j
        edited = dataclasses.replace(batch, hist_actions=batch.hist_actions.clone())
        edited.hist_actions[0, j, 0] = 3 - edited.hist_actions[0, j, 0]
        return edited

    assert_exact_and_prefix_only(model, edit)
    with pytest.raises(ValueError, match="history_stats names keys"):
        GenerativeRanker(RankerConfig(dim=16, heads=2, history_stats=("author",)), spec, {"cat": ITEM_CAT},
                         {"age": USER_AGE})


def test_gap_buckets_are_log2_seconds_and_zero_without_history() -> None:
    gaps = torch.tensor([0, 999, 1_000, 3_000, 86_400_000, 10**15])
    assert gap_bucket(gaps, torch.ones(6, dtype=torch.bool)).tolist() == [1, 1, 2, 3, 17, 25]
    assert gap_bucket(gaps, torch.zeros(6, dtype=torch.bool)).tolist() == [0] * 6


def test_context_keeps_kv_reuse_exact_and_reads_the_candidates_own_time_and_visible_history() -> None:
    torch.manual_seed(0)
    model = GenerativeRanker(RankerConfig(dim=16, heads=2, max_len=6, dropout=0.0, init_std=0.3,
                                          context=("hour", "gap")), SPEC, {"cat": ITEM_CAT},
                             {"age": USER_AGE}).double().eval()

    def edit(batch: RankBatch, j: int) -> RankBatch:  # history token j one hour later (its gap to candidates moves)
        edited = dataclasses.replace(batch, hist_time=batch.hist_time.clone())
        edited.hist_time[0, j:] += 3_600_000
        return edited

    assert_exact_and_prefix_only(model, edit)
    batch = make_batch(9, length=8)
    base = stacked(model(batch))
    later = dataclasses.replace(batch, cand_time=batch.cand_time.clone())
    later.cand_time[:, 0] += 5 * 3_600_000  # another hour of day for candidate 0 only
    moved = stacked(model(later))
    assert not torch.allclose(moved[:, 0], base[:, 0])
    torch.testing.assert_close(moved[:, 1:], base[:, 1:], **TIGHT)
    model.context["hour"].weight.data.zero_()
    model.context["gap"].weight.data.zero_()  # zero context embeddings: the plain ranker's outputs
    plain = GenerativeRanker(RankerConfig(dim=16, heads=2, max_len=6, dropout=0.0, init_std=0.3), SPEC,
                             {"cat": ITEM_CAT}, {"age": USER_AGE}).double().eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("context.")})
    torch.testing.assert_close(stacked(plain(batch)), stacked(model(batch)), **TIGHT)


def test_row_context_keeps_kv_reuse_exact_and_reads_each_candidates_own_code() -> None:
    spec = dataclasses.replace(SPEC, row_feature_sizes={"tab": 4, "slot": 3})
    torch.manual_seed(0)
    model = GenerativeRanker(RankerConfig(dim=16, heads=2, max_len=6, dropout=0.0, init_std=0.3, row_context=("slot",)),
                             spec, {"cat": ITEM_CAT}, {"age": USER_AGE}).double().eval()
    batch = with_row_context(make_batch(9, length=8), 1)  # max_len 6 < 8: the cap crops the history's codes too
    out = stacked(model(batch))
    torch.testing.assert_close(out, stacked(model.score_one_by_one(batch)), **TIGHT)
    one = model.score_candidates(model.encode_history(batch), batch.cand_items, batch.cand_time, batch.visible,
                                 micro_batch=1, cand_context=batch.cand_context)
    torch.testing.assert_close(stacked(one), out, **TIGHT)

    def edited(**changes) -> torch.Tensor:
        fields = {k: getattr(batch, k).clone() for k in ("hist_context", "cand_context")}
        for key, (index, value) in changes.items():
            fields[key][index] = value
        return stacked(model(dataclasses.replace(batch, **fields)))

    moved = edited(cand_context=((slice(None), 0, 1), 3 - batch.cand_context[:, 0, 1]))  # candidate 0's slot only
    assert not torch.allclose(moved[0, 0], out[0, 0])
    torch.testing.assert_close(moved[:, 1:], out[:, 1:], **TIGHT)
    torch.testing.assert_close(edited(cand_context=((..., 0), 1)), out, **TIGHT)  # tab: not a row_context column
    short = dataclasses.replace(batch, visible=batch.visible.clamp(max=5))
    base = stacked(model(short))[0]
    for j, changes in ((5, False), (4, True)):  # row 0's candidates read history tokens < 5 only
        codes = short.hist_context.clone()
        codes[0, j, 1] = 3 - codes[0, j, 1]
        assert torch.allclose(stacked(model(dataclasses.replace(short, hist_context=codes)))[0], base) is not changes
    unknown = dataclasses.replace(batch, hist_context=None, cand_context=None)
    zeros = dataclasses.replace(batch, hist_context=torch.zeros_like(batch.hist_context),
                                cand_context=torch.zeros_like(batch.cand_context))
    torch.testing.assert_close(stacked(model(unknown)), stacked(model(zeros)), **TIGHT)  # None = code 0
    with pytest.raises(ValueError, match="row_context names"):
        GenerativeRanker(RankerConfig(dim=16, heads=2, row_context=("page",)), spec, {"cat": ITEM_CAT},
                         {"age": USER_AGE})
