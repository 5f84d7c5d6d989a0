"""GenerativeRanker: candidate isolation, history prefix and causality, M-FALCON cache = one-by-one passes
(values and gradients), padding, the history cap, and multi-task heads that learn on tiny generated data."""
from __future__ import annotations

import dataclasses
import math

import pydantic
import pytest
import torch

from genrec.models.ranker import GenerativeRanker, RankerConfig, gap_bucket
from genrec.models.ranking import RankBatch, RankSpec, multitask_loss
from genrec.nn.attention import causal_mask, masked_pointwise_attention, pointwise_attention
from genrec.nn.relative_bias import RelativeBias

N_ITEMS, N_USERS = 30, 8
SPEC = RankSpec(n_items=N_ITEMS, n_users=N_USERS, binary_tasks=("click", "like"), regression_tasks=("watch",),
                item_feature_sizes={"cat": 5}, user_feature_sizes={"age": 4}, action_sizes={"clicked": 3, "liked": 3})
ITEM_CAT = torch.tensor([0] + [1 + i % 4 for i in range(N_ITEMS)])
USER_AGE = torch.tensor([0] + [1 + u % 3 for u in range(N_USERS)])
TIGHT = {"rtol": 1e-9, "atol": 1e-10}


def make_model(seed: int = 0, dtype: torch.dtype = torch.float64, **overrides) -> GenerativeRanker:
    torch.manual_seed(seed)
    cfg = {"dim": 16, "heads": 2, "blocks": 2, "max_len": 16, "dropout": 0.0, "init_std": 0.3, **overrides}
    model = GenerativeRanker(RankerConfig(**cfg), SPEC, {"cat": ITEM_CAT}, {"age": USER_AGE})
    with torch.no_grad():  # the relative bias starts at zero; random weights make positions and gaps matter
        for block in model.blocks:
            block.rab.pos.normal_(std=0.5)
            block.rab.time.normal_(std=0.5)
    return model.to(dtype).eval()


def make_batch(seed: int, b: int = 4, length: int = 7, m: int = 5) -> RankBatch:
    """Right-padded histories (one empty, one full) and candidates (varied counts), sorted ms timestamps."""
    g = torch.Generator().manual_seed(seed)
    hist_len = torch.randint(1, length + 1, (b,), generator=g)
    hist_len[0], hist_len[-1] = length, 0
    real = torch.arange(length)[None, :] < hist_len[:, None]
    hist_items = torch.randint(1, N_ITEMS + 1, (b, length), generator=g) * real
    actions = torch.randint(1, 3, (b, length, 2), generator=g) * real[..., None]
    gaps = torch.randint(1, 10**7, (b, length), generator=g)
    hist_time = (1_600_000_000_000 + gaps.cumsum(1)) * real
    n_cand = torch.randint(1, m + 1, (b,), generator=g)
    n_cand[0] = m
    cand_real = torch.arange(m)[None, :] < n_cand[:, None]
    cand_items = torch.randint(1, N_ITEMS + 1, (b, m), generator=g) * cand_real
    cand_time = hist_time.max(1).values[:, None] + torch.randint(0, 10**8, (b, m), generator=g)
    visible = (torch.rand(b, m, generator=g) * (hist_len[:, None] + 1)).long()
    visible[0, 0] = hist_len[0]
    return RankBatch(user=torch.randint(0, N_USERS + 1, (b,), generator=g), hist_items=hist_items,
                     hist_actions=actions, hist_time=hist_time, hist_len=hist_len, cand_items=cand_items,
                     cand_time=cand_time, visible=visible)


def replace(batch: RankBatch, **fields) -> RankBatch:
    values = {f: getattr(batch, f).clone() for f in ("user", "hist_items", "hist_actions", "hist_time",
                                                     "hist_len", "cand_items", "cand_time", "visible")}
    values.update(fields)
    return RankBatch(**values)


def stacked(out: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack([out[t] for t in SPEC.tasks], dim=-1)  # [B, M, T]


# --- shared nn pieces ---------------------------------------------------------------------------------------

def test_masked_pointwise_attention_with_causal_mask_equals_pointwise_attention() -> None:
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 2, 6, 4, generator=g, dtype=torch.float64), torch.randn(2, 2, 6, 4, generator=g,
                                                                                  dtype=torch.float64)
    v, bias = torch.randn(2, 2, 6, 3, generator=g, dtype=torch.float64), torch.randn(2, 1, 6, 6, generator=g,
                                                                                     dtype=torch.float64)
    torch.testing.assert_close(masked_pointwise_attention(q, k, v, bias, causal_mask(6), 10),
                               pointwise_attention(q, k, v, bias, 10), **TIGHT)


def test_relative_bias_at_agrees_with_forward() -> None:
    rb = RelativeBias(max_len=5, time_buckets=6)
    with torch.no_grad():
        rb.pos.normal_()
        rb.time.normal_()
    ts = torch.tensor([[0, 3, 40, 10**6, 10**9, 10**9 + 1, 10**12]])
    idx = torch.arange(7)
    full = rb(7, ts)[:, 0]
    at = rb.at(idx[:, None] - idx[None, :], ts[:, :, None] - ts[:, None, :])
    keep = causal_mask(7)  # forward defines only j <= i
    torch.testing.assert_close(at[:, keep], full[:, keep])
    assert rb.at(torch.tensor([9, -2])).tolist() == [rb.pos[4].item(), rb.pos[0].item()]


# --- config and loss -------------------------------------------------------------------------------------------

def test_config_validates() -> None:
    with pytest.raises(pydantic.ValidationError):
        RankerConfig(bogus=1)
    with pytest.raises(pydantic.ValidationError):
        RankerConfig(dim=10, heads=3)
    with pytest.raises(ValueError, match="task_weights"):
        GenerativeRanker(RankerConfig(task_weights={"share": 1.0}), SPEC, {"cat": ITEM_CAT}, {"age": USER_AGE})
    assert RankerConfig().micro_batch == 256 and RankerConfig().name == "ranker"


def test_multitask_loss_averages_real_candidates_and_weights_tasks() -> None:
    logits = torch.tensor([[0.0, 2.0, 9.0]])
    value = torch.tensor([[1.0, 3.0, 9.0]])
    labels = {"click": torch.tensor([[1.0, 0.0, 1.0]]), "watch": torch.tensor([[2.0, float("nan"), 0.0]])}
    mask = torch.tensor([[True, True, False]])
    total, per = multitask_loss({"click": logits, "watch": value}, labels, mask, ("click",), {"watch": 0.5})
    bce = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(per["click"], bce)
    torch.testing.assert_close(per["watch"], torch.tensor(1.0))  # only the first: the NaN label is missing
    torch.testing.assert_close(total, bce + 0.5)


# --- masks ------------------------------------------------------------------------------------------------------

def test_candidate_outputs_ignore_other_candidates() -> None:
    model, batch = make_model(), make_batch(1)
    base = stacked(model(batch))
    g = torch.Generator().manual_seed(5)
    changed = replace(batch, cand_items=torch.randint(1, N_ITEMS + 1, batch.cand_items.shape, generator=g),
                      cand_time=batch.cand_time + torch.randint(0, 10**9, batch.cand_time.shape, generator=g),
                      visible=torch.zeros_like(batch.visible))
    for c in range(batch.cand_items.shape[1]):
        keep = {"cand_items": changed.cand_items.clone(), "cand_time": changed.cand_time.clone(),
                "visible": changed.visible.clone()}
        keep["cand_items"][:, c], keep["cand_time"][:, c] = batch.cand_items[:, c], batch.cand_time[:, c]
        keep["visible"][:, c] = batch.visible[:, c]
        torch.testing.assert_close(stacked(model(replace(batch, **keep)))[:, c], base[:, c], **TIGHT)
        alone = replace(batch, cand_items=batch.cand_items[:, c:c + 1], cand_time=batch.cand_time[:, c:c + 1],
                        visible=batch.visible[:, c:c + 1])  # fewer candidates
        torch.testing.assert_close(stacked(model(alone))[:, 0], base[:, c], **TIGHT)
        assert not torch.allclose(stacked(model(replace(batch, **keep))), base)  # the others did change


def test_candidate_reads_only_its_history_prefix() -> None:
    model, batch = make_model(), make_batch(2, b=1, length=8, m=3)
    batch = replace(batch, hist_len=torch.tensor([8]), hist_items=torch.arange(1, 9)[None],
                    hist_actions=torch.ones(1, 8, 2, dtype=torch.long),
                    hist_time=1_600_000_000_000 + torch.arange(8)[None] * 10**6,
                    cand_items=torch.tensor([[3, 4, 5]]), visible=torch.tensor([[4, 8, 0]]),
                    cand_time=1_600_000_000_000 + torch.tensor([[4, 8, 9]]) * 10**6)
    base = stacked(model(batch))
    for j in range(8):
        items, actions, times = batch.hist_items.clone(), batch.hist_actions.clone(), batch.hist_time.clone()
        items[0, j] = 20
        actions[0, j] = 2
        times[0, j:] += 10**9  # token j and later (stays sorted)
        for new in (replace(batch, hist_items=items), replace(batch, hist_actions=actions),
                    replace(batch, hist_time=times)):
            out = stacked(model(new))
            for c, vis in enumerate(batch.visible[0].tolist()):
                if j >= vis:
                    torch.testing.assert_close(out[0, c], base[0, c], **TIGHT)
                else:
                    assert (out[0, c] - base[0, c]).abs().max() > 1e-6, (j, c, new)


def test_history_is_causal() -> None:
    model, batch = make_model(), make_batch(3, length=8)
    cache = model.encode_history(batch)
    for j in range(8):
        items, actions = batch.hist_items.clone(), batch.hist_actions.clone()
        items[:, j] = (items[:, j] % N_ITEMS) + 1
        actions[:, j] = 3 - actions[:, j].clamp(min=1)
        other = model.encode_history(replace(batch, hist_items=items, hist_actions=actions))
        for k0, k1, v0, v1 in zip(cache.k, other.k, cache.v, other.v, strict=True):
            torch.testing.assert_close(k1[:, :, :1 + j], k0[:, :, :1 + j], **TIGHT)  # user + tokens before j
            torch.testing.assert_close(v1[:, :, :1 + j], v0[:, :, :1 + j], **TIGHT)
        assert not torch.allclose(other.k[-1][0, :, 1 + j:], cache.k[-1][0, :, 1 + j:])  # j itself and later


# --- M-FALCON cache vs the plain pass -----------------------------------------------------------------------

def values_and_grads(model: GenerativeRanker, fn, batch: RankBatch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    out = stacked(fn(batch))
    w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    (out * w * batch.cand_mask[..., None]).sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, TIGHT), (torch.float32, {"rtol": 1e-4, "atol": 1e-5})])
def test_kv_reuse_equals_one_by_one_values_and_gradients(dtype: torch.dtype, tol: dict) -> None:
    model, batch = make_model(dtype=dtype), make_batch(4, b=5, length=9, m=7)
    ref, ref_grads = values_and_grads(model, model.score_one_by_one, batch)
    runs = {"forward": model.forward}
    for mb in (1, 3, 7, 100):
        runs[f"mb{mb}"] = lambda bt, mb=mb: model.score_candidates(model.encode_history(bt), bt.cand_items,
                                                                   bt.cand_time, bt.visible, micro_batch=mb)
    for name, fn in runs.items():
        out, grads = values_and_grads(model, fn, batch)
        torch.testing.assert_close(out, ref, **tol, msg=name)
        for g, r in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(g, r, **tol, msg=name)


def test_cache_is_reused_across_candidate_sets() -> None:
    model, batch = make_model(), make_batch(5)
    cache = model.encode_history(batch)
    other = make_batch(6)
    out = model.score_candidates(cache, other.cand_items, other.cand_time,
                                 torch.minimum(other.visible, batch.hist_len[:, None]))
    full = model(replace(batch, cand_items=other.cand_items, cand_time=other.cand_time,
                         visible=torch.minimum(other.visible, batch.hist_len[:, None])))
    torch.testing.assert_close(stacked(out), stacked(full), **TIGHT)


# --- padding and the history cap -----------------------------------------------------------------------------

def test_padding_and_batch_independence() -> None:
    model, batch = make_model(), make_batch(7, b=2, length=6, m=4)
    real = batch.cand_mask
    base = stacked(model(batch))
    b, length = batch.hist_items.shape

    def pad_h(t: torch.Tensor, fill: int = 0) -> torch.Tensor:  # 3 more padded slots
        return torch.cat([t, torch.full((b, 3) + t.shape[2:], fill, dtype=t.dtype)], dim=1)

    padded = replace(batch, hist_items=pad_h(batch.hist_items), hist_actions=pad_h(batch.hist_actions),
                     hist_time=pad_h(batch.hist_time, 123), cand_items=pad_h(batch.cand_items),
                     cand_time=pad_h(batch.cand_time, 5), visible=pad_h(batch.visible, 9))
    torch.testing.assert_close(stacked(model(padded))[:, :4][real], base[real], **TIGHT)
    # padded history slots holding garbage are never read, even by a visible count beyond hist_len
    hist_real = torch.arange(length + 3)[None, :] < batch.hist_len[:, None]
    garbage = replace(padded, hist_items=torch.where(hist_real, padded.hist_items, 7),
                      hist_actions=torch.where(hist_real[..., None], padded.hist_actions, 1),
                      visible=padded.visible + 20)
    clipped = replace(padded, visible=(padded.visible + 20).clamp(max=batch.hist_len[:, None]))
    torch.testing.assert_close(stacked(model(garbage)), stacked(model(clipped)), **TIGHT)
    for i in range(b):
        n_h, n_c = int(batch.hist_len[i]), int(real[i].sum())
        one = RankBatch(user=batch.user[i:i + 1], hist_items=batch.hist_items[i:i + 1, :n_h],
                        hist_actions=batch.hist_actions[i:i + 1, :n_h], hist_time=batch.hist_time[i:i + 1, :n_h],
                        hist_len=batch.hist_len[i:i + 1], cand_items=batch.cand_items[i:i + 1, :n_c],
                        cand_time=batch.cand_time[i:i + 1, :n_c], visible=batch.visible[i:i + 1, :n_c])
        torch.testing.assert_close(stacked(model(one))[0], base[i, :n_c], **TIGHT)


def test_history_cap_keeps_the_most_recent_max_len_tokens() -> None:
    model = make_model(max_len=5)
    batch = make_batch(8, b=3, length=9, m=4)
    batch = replace(batch, hist_len=torch.tensor([9, 4, 7]),
                    visible=torch.tensor([[9, 6, 2, 5], [4, 1, 0, 3], [7, 2, 6, 3]]))
    real = torch.arange(9)[None, :] < batch.hist_len[:, None]
    batch = replace(batch, hist_items=batch.hist_items.clamp(min=1) * real,
                    hist_actions=batch.hist_actions.clamp(min=1) * real[..., None])
    out = stacked(model(batch))
    torch.testing.assert_close(out, stacked(model.score_one_by_one(batch)), **TIGHT)
    for i in range(3):
        n = int(batch.hist_len[i])
        drop = max(n - 5, 0)
        cut = RankBatch(user=batch.user[i:i + 1], hist_items=batch.hist_items[i:i + 1, drop:n],
                        hist_actions=batch.hist_actions[i:i + 1, drop:n], hist_time=batch.hist_time[i:i + 1, drop:n],
                        hist_len=torch.tensor([n - drop]), cand_items=batch.cand_items[i:i + 1],
                        cand_time=batch.cand_time[i:i + 1], visible=(batch.visible[i:i + 1] - drop).clamp(min=0))
        torch.testing.assert_close(stacked(model(cut))[0], out[i], **TIGHT)


# --- learning ----------------------------------------------------------------------------------------------------

def task_batch(g: torch.Generator, b: int = 32, length: int = 10, m: int = 8) -> RankBatch:
    """click = the item is even (10% label noise); like = the user's age code is 1; watch = item category / 2
    + noise. History actions echo the same rules, as real logs would."""
    batch = make_batch(int(torch.randint(0, 10**9, (1,), generator=g)), b=b, length=length, m=m)
    batch = replace(batch, user=torch.randint(1, N_USERS + 1, (b,), generator=g))
    noise = torch.rand(b, m, generator=g) < 0.1
    click = ((batch.cand_items % 2 == 0) ^ noise).float()
    like = (USER_AGE[batch.user] == 1).float()[:, None].expand(b, m).clone()
    watch = ITEM_CAT[batch.cand_items].float() / 2 + 0.1 * torch.randn(b, m, generator=g)
    batch.labels = {"click": click, "like": like, "watch": watch}
    return batch


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    pos, neg = scores[labels > 0.5], scores[labels <= 0.5]
    return ((pos[:, None] > neg[None, :]).float().mean() + 0.5 * (pos[:, None] == neg[None, :]).float().mean()).item()


def test_task_heads_learn_on_generated_data() -> None:
    torch.manual_seed(0)
    model = GenerativeRanker(RankerConfig(dim=16, heads=2, blocks=1, max_len=16, dropout=0.0,
                                          task_weights={"watch": 0.5}),
                             SPEC, {"cat": ITEM_CAT}, {"age": USER_AGE})
    g = torch.Generator().manual_seed(0)
    train = [task_batch(g) for _ in range(8)]
    test = task_batch(g, b=64)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    losses = []
    model.train()
    for step in range(300):
        batch = train[step % len(train)]
        total, _ = model.loss(model(batch), batch.labels, batch.cand_mask)
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(total.item())
    assert sum(losses[-20:]) / 20 < 0.5 * sum(losses[:20]) / 20
    model.eval()
    with torch.no_grad():
        out = model(test)
    real = test.cand_mask
    assert auc(out["click"][real], test.labels["click"][real]) > 0.8
    assert auc(out["like"][real], test.labels["like"][real]) > 0.9
    mse = ((out["watch"] - test.labels["watch"])[real] ** 2).mean()
    assert mse < 0.25 * test.labels["watch"][real].var()


def test_wider_attention_than_dim_over_heads_keeps_kv_reuse_exact() -> None:
    torch.manual_seed(0)
    model = GenerativeRanker(RankerConfig(dim=16, heads=2, max_len=6, dropout=0.0, init_std=0.3, attn_dim=24),
                             SPEC, {"cat": ITEM_CAT}, {"age": USER_AGE})
    assert model.blocks[0].uvqk.out_features == 2 * (2 * 8 + 2 * 24)
    model = model.double().eval()
    batch = make_batch(9, length=8)
    torch.testing.assert_close(stacked(model(batch)), stacked(model.score_one_by_one(batch)), **TIGHT)


def assert_exact_and_prefix_only(model: GenerativeRanker, edit) -> None:
    """The cached pass (whole and one candidate per micro-batch) equals the one-by-one pass, and with row 0's
    candidates reading history tokens < 5, ``edit(batch, j)`` of token 5 changes nothing there, of token 4 does."""
    batch = make_batch(9, length=8)
    out = model(batch)
    torch.testing.assert_close(stacked(out), stacked(model.score_one_by_one(batch)), **TIGHT)
    one = model.score_candidates(model.encode_history(batch), batch.cand_items, batch.cand_time, batch.visible,
                                 micro_batch=1)
    torch.testing.assert_close(stacked(one), stacked(out), **TIGHT)
    short = dataclasses.replace(batch, visible=batch.visible.clamp(max=5))
    base = stacked(model(short))[0]
    for j, changes in ((5, False), (4, True)):
        assert torch.allclose(stacked(model(edit(short, j)))[0], base) is not changes


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


def test_precomputed_feature_tables_give_the_same_outputs_and_training_ignores_them() -> None:
    model, batch = make_model(), make_batch(3)
    with torch.no_grad():
        plain = stacked(model(batch))
        model.item_emb.precompute()
        model.user_emb.precompute()
        torch.testing.assert_close(stacked(model(batch)), plain, **TIGHT)
        model.item_emb.id.weight.add_(1.0)  # the cache is a snapshot: eval keeps it, training reads the weights
        torch.testing.assert_close(stacked(model(batch)), plain, **TIGHT)
        model.train()
        assert not torch.allclose(model.item_emb(batch.cand_items), model.item_emb._table[batch.cand_items])


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


def with_row_context(batch: RankBatch, seed: int) -> RankBatch:
    """``batch`` plus random codes of two row features (0 on padding): tab (4 codes) and slot (3 codes)."""
    g = torch.Generator().manual_seed(seed)

    def codes(items: torch.Tensor) -> torch.Tensor:
        tab, slot = (torch.randint(1, n, items.shape, generator=g) for n in (4, 3))
        return torch.stack([tab, slot], -1) * (items > 0)[..., None]

    hist, cand = codes(batch.hist_items), codes(batch.cand_items)
    return dataclasses.replace(batch, hist_context=hist, cand_context=cand)


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


def test_retired_options_load_at_their_former_default_and_are_refused_otherwise() -> None:
    from genrec.models.din import DINConfig

    retired = {"linear_dim": None, "time_buckets": 64, "attn_norm": "max_len", "user_id": True, "mf_dim": 0,
               "item_id_dropout": 0.0, "row_head": False, "item_prior_counts": "train", "item_prior_strength": 20.0}
    saved = {**RankerConfig(dim=16, heads=2).model_dump(mode="json"), **retired}  # a model.json of an older run
    assert RankerConfig.model_validate(saved) == RankerConfig(dim=16, heads=2)
    for name, value in (("mf_dim", 32), ("item_prior_counts", "log"), ("row_head", True), ("time_buckets", 16)):
        with pytest.raises(ValueError, match=f"{name} was removed"):
            RankerConfig.model_validate({**saved, name: value})
    with pytest.raises(ValueError, match="item_prior_strength was removed"):
        DINConfig.model_validate({"item_prior_strength": 5.0})
    assert DINConfig.model_validate({"item_prior_counts": "train"}) == DINConfig()
    with pytest.raises(ValueError, match="extra"):
        RankerConfig.model_validate({"not_an_option": 1})
