"""DCN-v2 and DIN ranking baselines: shapes, candidate independence, the visible prefix, padding, the loss,
configs, and learning a tiny generated multi-task problem."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from pydantic import ValidationError

from genrec.models.dcn import DCN, DCNConfig
from genrec.models.din import DIN, DINConfig
from genrec.models.ranker import GenerativeRanker, RankerConfig
from genrec.models.ranking import RankBatch, RankSpec, multitask_loss

N_ITEMS, N_USERS = 30, 12
SPEC = RankSpec(n_items=N_ITEMS, n_users=N_USERS, binary_tasks=("click", "like"), regression_tasks=("watch",),
                item_feature_sizes={"cat": 4}, user_feature_sizes={"age": 3}, action_sizes={"signal": 3, "bucket": 5})
_g = torch.Generator().manual_seed(0)
ITEM_CAT = torch.cat([torch.zeros(1, dtype=torch.int64), torch.randint(1, 4, (N_ITEMS,), generator=_g)])
USER_AGE = torch.cat([torch.zeros(1, dtype=torch.int64), torch.randint(1, 3, (N_USERS,), generator=_g)])
TIGHT = {"rtol": 1e-9, "atol": 1e-10}
KINDS = ["dcn", "dcn-lowrank-parallel", "din", "din-dice"]


def make(kind: str, seed: int = 0, **overrides) -> DCN | DIN:
    """A small float64 model in eval mode with dropout 0 and embeddings large enough that every input matters."""
    torch.manual_seed(seed)
    base = {"dim": 8, "hidden": (16, 8), "dropout": 0.0, "init_std": 0.5} | overrides
    tables = ({"cat": ITEM_CAT}, {"age": USER_AGE})
    if kind.startswith("dcn"):
        extra = {"cross_rank": 4, "structure": "parallel"} if kind == "dcn-lowrank-parallel" else {}
        model: DCN | DIN = DCN(DCNConfig(**(extra | base)), SPEC, *tables)
    else:
        model = DIN(DINConfig(**({"activation": "dice"} if kind == "din-dice" else {}) | base), SPEC, *tables)
    return model.double().eval()


def labels_for(user: torch.Tensor, items: torch.Tensor) -> dict[str, torch.Tensor]:
    """click = f(item feature), like = f(user feature), watch = a value of the item feature."""
    cat = ITEM_CAT[items]
    return {"click": (cat == 1).double(), "like": (USER_AGE[user] == 1).double()[:, None].expand_as(cat).clone(),
            "watch": cat.double() / 3}


def make_batch(seed: int, b: int = 3, length: int = 7, m: int = 5) -> RankBatch:
    """Random right-padded requests: some empty histories, some padded candidates, visible <= hist_len."""
    g = torch.Generator().manual_seed(seed)
    hist_len = torch.randint(0, length + 1, (b,), generator=g)
    hist_len[0] = length
    pos = torch.arange(length)[None]
    real = pos < hist_len[:, None]
    items = torch.randint(1, N_ITEMS + 1, (b, length), generator=g) * real
    actions = torch.stack([torch.randint(1, s, (b, length), generator=g) * real
                           for s in SPEC.action_sizes.values()], dim=-1)
    n_cand = torch.randint(1, m + 1, (b,), generator=g)
    n_cand[0] = m
    cands = torch.randint(1, N_ITEMS + 1, (b, m), generator=g) * (torch.arange(m)[None] < n_cand[:, None])
    visible = (torch.rand(b, m, generator=g) * (hist_len[:, None] + 1)).long().clamp(max=hist_len[:, None])
    user = torch.randint(1, N_USERS + 1, (b,), generator=g)
    time = torch.arange(length)[None].expand(b, -1) * 1000
    return RankBatch(user=user, hist_items=items, hist_actions=actions, hist_time=time, hist_len=hist_len,
                     cand_items=cands, cand_time=torch.full((b, m), 10**6), visible=visible,
                     labels=labels_for(user, cands))


def replace(batch: RankBatch, **changes) -> RankBatch:
    return RankBatch(**({k: getattr(batch, k) for k in batch.__dataclass_fields__} | changes))


def select(batch: RankBatch, rows: slice, length: int, m: int) -> RankBatch:
    """Rows of a batch, history cut/padded to ``length`` and candidates to ``m`` (padding: item 0, actions 0)."""
    def fit(t: torch.Tensor, n: int, dim: int = 1) -> torch.Tensor:
        t = t[rows].narrow(dim, 0, min(n, t.shape[dim]))
        pad = list(t.shape)
        pad[dim] = n - t.shape[dim]
        return torch.cat([t, t.new_zeros(pad)], dim=dim)

    return RankBatch(user=batch.user[rows], hist_items=fit(batch.hist_items, length),
                     hist_actions=fit(batch.hist_actions, length), hist_time=fit(batch.hist_time, length),
                     hist_len=batch.hist_len[rows], cand_items=fit(batch.cand_items, m),
                     cand_time=fit(batch.cand_time, m), visible=fit(batch.visible, m))


@torch.no_grad()
def run(model: DCN | DIN, batch: RankBatch) -> dict[str, torch.Tensor]:
    return model(batch)


@pytest.mark.parametrize("kind", KINDS)
def test_output_shapes_and_keys(kind: str) -> None:
    batch = make_batch(1, b=4, length=9, m=6)
    out = run(make(kind), batch)
    assert tuple(out) == SPEC.tasks
    for value in out.values():
        assert value.shape == (4, 6) and value.dtype == torch.float64 and torch.isfinite(value).all()


@pytest.mark.parametrize("kind", KINDS)
def test_a_batch_where_no_candidate_sees_history(kind: str) -> None:
    # new users only (or frozen requests served before any impression): every visible count is 0
    batch = make_batch(1, b=4, length=9, m=6)
    batch = replace(batch, visible=torch.zeros_like(batch.visible))
    model = make(kind)
    out = run(model, batch)
    assert all(v.shape == (4, 6) and torch.isfinite(v).all() for v in out.values())
    model.train()
    model.loss(model(batch), batch.labels, batch.cand_mask)[0].backward()


@pytest.mark.parametrize("kind", KINDS)
def test_candidates_are_independent(kind: str) -> None:
    model, batch = make(kind), make_batch(2)
    out = run(model, batch)
    for c in range(batch.cand_items.shape[1]):
        alone = run(model, replace(batch, cand_items=batch.cand_items[:, c:c + 1],
                                   cand_time=batch.cand_time[:, c:c + 1], visible=batch.visible[:, c:c + 1]))
        others = batch.cand_items.clone()
        others[:, [j for j in range(others.shape[1]) if j != c]] = torch.randint(1, N_ITEMS + 1, (1,)).item()
        shuffled = run(model, replace(batch, cand_items=others, visible=torch.zeros_like(batch.visible).index_copy(
            1, torch.tensor([c]), batch.visible[:, c:c + 1])))
        real = batch.cand_mask[:, c]
        for task in SPEC.tasks:
            torch.testing.assert_close(alone[task][real, 0], out[task][real, c], **TIGHT)
            torch.testing.assert_close(shuffled[task][real, c], out[task][real, c], **TIGHT)


@pytest.mark.parametrize("kind", KINDS)
def test_tokens_past_visible_are_not_read(kind: str) -> None:
    model, batch = make(kind), make_batch(3, b=4, length=8, m=6)
    out = run(model, batch)
    changed_some = False
    for b in range(4):
        for c in range(6):
            if not batch.cand_mask[b, c]:
                continue
            v = int(batch.visible[b, c])
            future = batch.hist_items.clone()
            future[b, v:batch.hist_len[b]] = (future[b, v:batch.hist_len[b]] % N_ITEMS) + 1
            acts = batch.hist_actions.clone()
            acts[b, v:batch.hist_len[b]] = 1
            after = run(model, replace(batch, hist_items=future, hist_actions=acts))
            for task in SPEC.tasks:
                torch.testing.assert_close(after[task][b, c], out[task][b, c], **TIGHT)
            if v > 0:  # a visible token does matter
                past = batch.hist_items.clone()
                past[b, v - 1] = past[b, v - 1] % N_ITEMS + 1
                changed_some |= not torch.allclose(run(model, replace(batch, hist_items=past))["click"][b, c],
                                                   out["click"][b, c])
    assert changed_some


@pytest.mark.parametrize("kind", ["dcn", "din"])
def test_history_cap_reads_only_the_most_recent_visible_tokens(kind: str) -> None:
    model, batch = make(kind, max_len=2), make_batch(4, b=3, length=8, m=5)
    out = run(model, batch)
    lo = (batch.visible - 2).clamp_min(0)
    for b in range(3):
        old = batch.hist_items.clone()
        old[b, : int(lo[b][batch.cand_mask[b]].min())] = 1  # older than every real candidate's window
        after = run(model, replace(batch, hist_items=old))
        first = int(lo[b][batch.cand_mask[b]].max())
        old = batch.hist_items.clone()
        old[b, :first] = old[b, :first] % N_ITEMS + 1
        partial = run(model, replace(batch, hist_items=old))
        reads_none = batch.cand_mask[b] & (lo[b] >= first)  # candidates whose windows start at or after `first`
        for task in SPEC.tasks:
            torch.testing.assert_close(after[task][b], out[task][b], **TIGHT)
            torch.testing.assert_close(partial[task][b][reads_none], out[task][b][reads_none], **TIGHT)


@pytest.mark.parametrize("kind", KINDS)
def test_padding_does_not_change_real_outputs(kind: str) -> None:
    model, batch = make(kind), make_batch(5, b=3, length=6, m=4)
    out = run(model, batch)
    padded = select(batch, slice(None), length=11, m=9)
    padded.visible[:, 4:] = 3  # padded candidates may carry any visible count
    wide = run(model, padded)
    real = batch.cand_mask
    for task in SPEC.tasks:
        torch.testing.assert_close(wide[task][:, :4][real], out[task][real], rtol=1e-9, atol=1e-9)
    # a batch of 2 equals two batches of 1, each cut to its own lengths
    for b in range(2):
        hl, nc = int(batch.hist_len[b]), int(batch.cand_mask[b].sum())
        single = run(model, select(batch, slice(b, b + 1), length=max(hl, 1), m=nc))
        for task in SPEC.tasks:
            torch.testing.assert_close(single[task][0], out[task][b, :nc], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("activation", ["prelu", "dice"])
def test_din_fast_attention_matches_reference(activation: str) -> None:
    model, batch = make("din", activation=activation, attention_hidden=(6, 5)), make_batch(6, b=4, length=9, m=6)
    model.train()  # Dice with batch statistics over the masked rows, too
    fast = model(batch)
    model.reference = True
    slow = model(batch)
    for task in SPEC.tasks:
        torch.testing.assert_close(fast[task], slow[task], **TIGHT)


def test_dice_training_statistics_ignore_padding() -> None:
    """In training, Dice normalises with batch statistics over real candidates / visible tokens only."""
    model, batch = make("din-dice"), make_batch(8, b=3, length=6, m=4)
    model.train()
    out = model(batch)
    wide = model(select(batch, slice(None), length=10, m=7))
    real = batch.cand_mask
    for task in SPEC.tasks:
        torch.testing.assert_close(wide[task][:, :4][real], out[task][real], rtol=1e-9, atol=1e-9)


def test_loss_masks_padded_candidates_and_weighs_tasks() -> None:
    batch = make_batch(7, b=4, m=6)
    mask = batch.cand_mask
    torch.manual_seed(0)
    out = {t: torch.randn(4, 6, dtype=torch.float64) for t in SPEC.tasks}
    labels = {t: torch.where(mask, v, float("nan")) for t, v in batch.labels.items()}
    n = mask.sum()
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    want = {t: bce(out[t][mask], labels[t][mask], reduction="sum") / n for t in SPEC.binary_tasks}
    want["watch"] = ((out["watch"] - labels["watch"])[mask] ** 2).sum() / n
    got, _ = multitask_loss(out, labels, mask, SPEC.binary_tasks, {"like": 0.5, "watch": 2.0})
    torch.testing.assert_close(got, want["click"] + 0.5 * want["like"] + 2.0 * want["watch"])
    model = make("din", task_weights={"like": 0.5, "watch": 2.0})
    torch.testing.assert_close(model.loss(out, labels, mask)[0], got)
    # gradients stay finite with NaN labels on padded candidates
    logits = {t: v.clone().requires_grad_() for t, v in out.items()}
    multitask_loss(logits, labels, mask, SPEC.binary_tasks)[0].backward()
    assert all(torch.isfinite(v.grad).all() and (v.grad[~mask] == 0).all() for v in logits.values())


def test_configs_validate() -> None:
    with pytest.raises(ValidationError):
        DCNConfig(dims=8)
    with pytest.raises(ValidationError):
        DINConfig(name="dcn")
    with pytest.raises(ValidationError):
        DCNConfig(hidden=(8, 0))
    with pytest.raises(ValidationError):
        DINConfig(task_weights={"click": -1.0})
    with pytest.raises(ValidationError):
        DINConfig().dim = 4  # frozen
    with pytest.raises(ValueError, match="task_weights"):
        DCN(DCNConfig(task_weights={"share": 1.0}), SPEC, {"cat": ITEM_CAT}, {"age": USER_AGE})


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    pos, neg = scores[labels > 0.5], scores[labels < 0.5]
    return float((pos[:, None] > neg[None, :]).double().mean() + 0.5 * (pos[:, None] == neg[None, :]).double().mean())


@pytest.mark.parametrize("kind", ["dcn", "din"])
def test_learns_a_tiny_multitask_problem(kind: str) -> None:
    torch.manual_seed(0)
    tables = ({"cat": ITEM_CAT}, {"age": USER_AGE})
    base = {"dim": 8, "hidden": (32, 16), "dropout": 0.0}
    model = DCN(DCNConfig(**base), SPEC, *tables) if kind == "dcn" else DIN(DINConfig(**base), SPEC, *tables)
    test = make_batch(1000, b=64, length=10, m=8)

    def evaluate() -> tuple[float, dict[str, torch.Tensor]]:
        """Test-batch MSE of the regression head, and all outputs."""
        with torch.no_grad():
            model.eval()
            out = model(test)
            model.train()
        return float(((out["watch"] - test.labels["watch"])[test.cand_mask] ** 2).mean()), out

    before, _ = evaluate()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(200):
        batch = make_batch(step, b=32, length=10, m=8)
        loss = model.loss(model(batch), batch.labels, batch.cand_mask)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after, out = evaluate()
    real = test.cand_mask
    assert auc(out["click"][real], test.labels["click"][real]) > 0.9
    assert auc(out["like"][real], test.labels["like"][real]) > 0.9
    assert after < 0.2 * before and after < 0.5 * float(test.labels["watch"][real].var())


@pytest.mark.parametrize("kind", KINDS)
def test_item_prior_adds_the_counted_offsets_and_loads_with_the_weights(kind: str) -> None:
    model, plain = make(kind, item_prior=True), make(kind)
    g = torch.Generator().manual_seed(2)
    items = torch.randint(1, N_ITEMS + 1, (300,), generator=g)
    times = torch.randint(0, 10**6, (300,), generator=g)
    model.prior.fit(items, times, {"click": (items % 3 == 0).double(), "like": (items % 5 == 0).double()})
    batch = make_batch(4)
    offsets = model.prior(batch.cand_items, batch.cand_time)
    out, ref = run(model, batch), run(plain, batch)
    for t in ("click", "like"):
        torch.testing.assert_close(out[t], ref[t] + offsets[t], **TIGHT)
    torch.testing.assert_close(out["watch"], ref["watch"], **TIGHT)
    restored = make(kind, seed=5, item_prior=True)
    restored.load_state_dict(model.state_dict())
    torch.testing.assert_close(run(restored, batch)["like"], out["like"], **TIGHT)


@pytest.mark.parametrize("kind", KINDS)
def test_row_context_reads_each_candidates_own_code_and_only_visible_history(kind: str) -> None:
    spec = dataclasses.replace(SPEC, row_feature_sizes={"tab": 4, "slot": 3})
    torch.manual_seed(0)
    model = make(kind)
    cfg = model.config.model_copy(update={"row_context": ("slot",)})
    model = type(model)(cfg, spec, {"cat": ITEM_CAT}, {"age": USER_AGE}).double().eval()
    batch = make_batch(3, b=4, length=8, m=6)
    g = torch.Generator().manual_seed(4)

    def codes(items: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.randint(1, n, items.shape, generator=g) for n in (4, 3)], -1) * (items > 0)[..., None]

    batch = replace(batch, hist_context=codes(batch.hist_items), cand_context=codes(batch.cand_items))
    out = run(model, batch)
    flipped = batch.cand_context.clone()
    flipped[:, 0, 1] = 3 - flipped[:, 0, 1]  # candidate 0's slot only
    moved = run(model, replace(batch, cand_context=flipped))
    assert not torch.allclose(moved["click"][0, 0], out["click"][0, 0])
    for task in SPEC.tasks:
        torch.testing.assert_close(moved[task][:, 1:], out[task][:, 1:], **TIGHT)
    other = batch.cand_context.clone()
    other[..., 0] = 1  # tab: not a row_context column
    torch.testing.assert_close(run(model, replace(batch, cand_context=other))["click"], out["click"], **TIGHT)
    v = int(batch.visible[0, 0])
    later = batch.hist_context.clone()
    later[0, v:, 1] = 3 - later[0, v:, 1]  # history codes past what candidate 0 reads
    torch.testing.assert_close(run(model, replace(batch, hist_context=later))["click"][0, 0], out["click"][0, 0],
                               **TIGHT)
    unknown = run(model, replace(batch, hist_context=None, cand_context=None))
    zeros = run(model, replace(batch, hist_context=torch.zeros_like(batch.hist_context),
                               cand_context=torch.zeros_like(batch.cand_context)))
    torch.testing.assert_close(unknown["click"], zeros["click"], **TIGHT)  # no context = code 0
    with pytest.raises(ValueError, match="row_context names"):
        type(model)(model.config.model_copy(update={"row_context": ("page",)}), spec, {"cat": ITEM_CAT},
                    {"age": USER_AGE})


@pytest.mark.parametrize("kind", [*KINDS, "ranker"])
def test_row_bias_adds_one_learned_offset_per_task_and_code(kind: str) -> None:
    spec = dataclasses.replace(SPEC, row_feature_sizes={"tab": 4, "slot": 3})
    tables = ({"cat": ITEM_CAT}, {"age": USER_AGE})
    if kind == "ranker":
        base = RankerConfig(dim=16, heads=2, max_len=6, dropout=0.0, init_std=0.3, row_context=("slot",))
        cls = GenerativeRanker
    else:
        base = make(kind).config.model_copy(update={"row_context": ("slot",)})
        cls = type(make(kind))
    torch.manual_seed(0)
    plain = cls(base, spec, *tables).double().eval()
    biased = cls(base.model_copy(update={"row_bias": True}), spec, *tables).double().eval()
    biased.load_state_dict(plain.state_dict(), strict=False)  # the same model plus the (zero) offsets
    batch = make_batch(3, b=4, length=8, m=6)
    g = torch.Generator().manual_seed(4)
    codes = torch.randint(0, 3, batch.cand_items.shape + (1,), generator=g)
    batch = replace(batch, hist_context=torch.zeros(batch.hist_items.shape + (2,), dtype=torch.long),
                    cand_context=torch.cat([torch.ones_like(codes), codes], -1))
    ref = run(plain, batch)
    for task in SPEC.tasks:  # starts at zero: the same outputs
        torch.testing.assert_close(run(biased, batch)[task], ref[task], **TIGHT)
    with torch.no_grad():
        biased.row_bias[0].weight[1:] = torch.randn(2, len(SPEC.tasks), generator=g, dtype=torch.float64)
    out = run(biased, batch)
    for k, task in enumerate(SPEC.tasks):  # code 0 (unknown) adds nothing
        torch.testing.assert_close(out[task], ref[task] + biased.row_bias[0].weight[codes[..., 0], k], **TIGHT)
    assert (codes > 0).any() and not torch.allclose(out["click"], ref["click"])
    none = run(biased, replace(batch, hist_context=None, cand_context=None))
    torch.testing.assert_close(none["click"], run(plain, replace(batch, hist_context=None, cand_context=None))["click"],
                               **TIGHT)
    with pytest.raises(ValueError, match="row_bias needs row_context"):
        type(base)(**(base.model_dump() | {"row_context": (), "row_bias": True}))
