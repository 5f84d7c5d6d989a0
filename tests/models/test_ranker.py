"""GenerativeRanker: candidate isolation, history prefix and causality, M-FALCON cache = one-by-one passes
(values and gradients), padding, the history cap, and multi-task heads that learn on tiny generated data."""
from __future__ import annotations

import pydantic
import pytest
import torch
from tests.models.ranker_testing import (
    ITEM_CAT,
    N_ITEMS,
    N_USERS,
    SPEC,
    TIGHT,
    USER_AGE,
    make_batch,
    make_model,
    replace,
    stacked,
)

from genrec.models.ranker import GenerativeRanker, RankerConfig
from genrec.models.ranking import RankBatch, multitask_loss
from genrec.nn.attention import causal_mask, masked_pointwise_attention, pointwise_attention
from genrec.nn.relative_bias import RelativeBias

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
