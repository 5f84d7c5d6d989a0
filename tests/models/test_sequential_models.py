"""SASRec and HSTU: fast path vs plain reference, causality, padding invariance, scoring, configs, overfit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from genrec.data.jagged import Jagged
from genrec.models import HSTU, SASRec
from genrec.models.hstu import HSTUConfig
from genrec.models.sasrec import SASRecConfig
from genrec.models.sequential import SequentialModel, next_item_targets
from genrec.nn.losses import full_cross_entropy

N_ITEMS = 25
MAX_LEN = 10
TIGHT = {"rtol": 1e-9, "atol": 1e-10}
# (name, uses timestamps)
KINDS = [("sasrec", False), ("hstu", False), ("hstu", True)]
KIND_IDS = ["sasrec", "hstu", "hstu-time"]


def make(name: str, seed: int = 0, **overrides) -> SequentialModel:
    """A small float64 model in eval mode, dropout 0; HSTU's relative bias randomised so it matters."""
    torch.manual_seed(seed)
    base = {"dim": 12, "blocks": 2, "heads": 2, "max_len": MAX_LEN, "dropout": 0.0} | overrides
    if name == "sasrec":
        model: SequentialModel = SASRec(SASRecConfig(**base), N_ITEMS)
    else:
        model = HSTU(HSTUConfig(**({"time_buckets": 16} | base)), N_ITEMS, use_timestamps=True)
        with torch.no_grad():
            for block in model.blocks:
                block.rab.pos.normal_(std=0.5)
                if block.rab.time is not None:
                    block.rab.time.normal_(std=0.5)
    return model.double().eval()


def random_rows(seed: int, lengths: list[int]) -> tuple[list[list[int]], list[list[int]]]:
    """Item rows and increasing timestamp rows (gaps 0..~2000 s: log2 buckets 0..11, below the 16 buckets)."""
    rng = np.random.default_rng(seed)
    items = [rng.integers(1, N_ITEMS + 1, size=n).tolist() for n in lengths]
    times = [(10**9 + np.cumsum(rng.integers(0, 200, size=n))).tolist() for n in lengths]
    return items, times


def padded(rows: list[list[int]], width: int | None = None) -> torch.Tensor:
    width = width or max(1, max(len(r) for r in rows))
    out = torch.zeros(len(rows), width, dtype=torch.long)
    for b, r in enumerate(rows):
        out[b, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def batch(seed: int, lengths: list[int], width: int | None = None):
    items, times = random_rows(seed, lengths)
    return padded(items, width), torch.tensor(lengths), padded(times, width), items, times


def real(lengths: torch.Tensor, width: int) -> torch.Tensor:
    return torch.arange(width)[None, :] < lengths[:, None]


LENGTHS = [MAX_LEN, 1, 6, 3, MAX_LEN - 1]


# ----- fast path vs reference -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "timed"), KINDS, ids=KIND_IDS)
def test_reference_parity_hidden_states_and_grads(name: str, timed: bool) -> None:
    model = make(name)
    items, lengths, ts, _, _ = batch(1, LENGTHS)
    ts_arg = ts if timed else None
    mask = real(lengths, items.shape[1])
    g = torch.Generator().manual_seed(5)
    targets = torch.randint(1, N_ITEMS + 1, (int(mask.sum()),), generator=g)
    weight = torch.randn(int(mask.sum()), model.config.dim, generator=g, dtype=torch.float64)

    results = []
    for reference in (False, True):
        model.reference = reference
        model.zero_grad()
        h = model(items, lengths, ts_arg)
        loss = full_cross_entropy(h[mask], targets, model.item_table()) + (h[mask] * weight).sum()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((h.detach()[mask], loss.detach(), grads))
    model.reference = False

    (h_fast, loss_fast, g_fast), (h_ref, loss_ref, g_ref) = results
    torch.testing.assert_close(h_fast, h_ref, **TIGHT)
    torch.testing.assert_close(loss_fast, loss_ref, **TIGHT)
    assert g_fast.keys() == g_ref.keys()
    assert len(g_fast) >= len(list(model.parameters())) - 2  # (HSTU without time: unused time weights)
    for n in g_fast:
        torch.testing.assert_close(g_fast[n], g_ref[n], **TIGHT, msg=lambda m, n=n: f"grad of {n}: {m}")
    if name == "hstu":
        assert g_fast["blocks.0.rab.pos"].abs().sum() > 0
        if timed:
            assert g_fast["blocks.0.rab.time"].abs().sum() > 0


@pytest.mark.parametrize(("name", "timed"), KINDS, ids=KIND_IDS)
def test_reference_parity_score(name: str, timed: bool) -> None:
    model = make(name)
    items, times = random_rows(2, [4, 1, 14, 0, MAX_LEN])  # includes an over-long and an empty history
    hist, ts = Jagged.from_lists(items), (Jagged.from_lists(times) if timed else None)
    fast = model.score(hist, timestamps=ts)
    model.reference = True
    ref = model.score(hist, timestamps=ts)
    model.reference = False
    assert fast.shape == ref.shape == (5, N_ITEMS + 1)
    torch.testing.assert_close(fast, ref, **TIGHT)


# ----- causality --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "timed"), KINDS, ids=KIND_IDS)
def test_later_items_never_change_earlier_positions(name: str, timed: bool) -> None:
    model = make(name, seed=3)
    items, lengths, ts, _, _ = batch(3, [MAX_LEN, MAX_LEN, 7])
    ts_arg = ts if timed else None
    with torch.no_grad():
        base = model(items, lengths, ts_arg)
        for p in (1, 4, 6):
            changed = items.clone()
            changed[:, p] = changed[:, p] % N_ITEMS + 1
            out = model(changed, lengths, ts_arg)
            torch.testing.assert_close(out[:, :p], base[:, :p], **TIGHT)
            assert not torch.allclose(out[:, p], base[:, p])  # the change is visible where it happens
            if timed:
                later = ts.clone()
                later[:, p:] += 5000  # a later action happens later still (its gaps move to bucket 12+)
                out = model(items, lengths, later)
                torch.testing.assert_close(out[:, :p], base[:, :p], **TIGHT)
                assert not torch.allclose(out[:, p], base[:, p])


@pytest.mark.parametrize(("name", "timed"), KINDS, ids=KIND_IDS)
def test_appending_items_keeps_earlier_outputs(name: str, timed: bool) -> None:
    model = make(name, seed=4)
    items, times = random_rows(4, [MAX_LEN, MAX_LEN])
    with torch.no_grad():
        full = model(padded(items), torch.tensor([MAX_LEN] * 2), padded(times) if timed else None)
        for n in (1, 3, 8):
            short_ts = padded([t[:n] for t in times]) if timed else None
            short = model(padded([r[:n] for r in items]), torch.tensor([n, n]), short_ts)
            torch.testing.assert_close(short, full[:, :n], **TIGHT)
            # ... and score() of the prefix is the full run's hidden state at position n-1 against all items.
            s = model.score(Jagged.from_lists([r[:n] for r in items]),
                            timestamps=Jagged.from_lists([t[:n] for t in times]) if timed else None)
            torch.testing.assert_close(s, full[:, n - 1] @ model.item_table().T, **TIGHT)


# ----- padding invariance -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "timed"), KINDS, ids=KIND_IDS)
def test_padding_and_batch_neighbours_do_not_matter(name: str, timed: bool) -> None:
    model = make(name, seed=5)
    items, times = random_rows(5, [4, MAX_LEN, 2, 7])
    with torch.no_grad():
        alone = model(padded(items[:1]), torch.tensor([4]), padded(times[:1]) if timed else None)
        for width in (4, 5, MAX_LEN):
            padded_alone = model(padded(items[:1], width), torch.tensor([4]),
                                 padded(times[:1], width) if timed else None)
            torch.testing.assert_close(padded_alone[:, :4], alone, **TIGHT)
        together = model(padded(items), torch.tensor([4, MAX_LEN, 2, 7]), padded(times) if timed else None)
        torch.testing.assert_close(together[:1, :4], alone, **TIGHT)
        ts_of = (lambda rows: Jagged.from_lists(rows)) if timed else (lambda rows: None)
        s_alone = model.score(Jagged.from_lists(items[:1]), timestamps=ts_of(times[:1]))
        s_batch = model.score(Jagged.from_lists(items[::-1]), timestamps=ts_of(times[::-1]))
        torch.testing.assert_close(s_batch[-1:], s_alone, **TIGHT)


# ----- score() ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "timed"), KINDS, ids=KIND_IDS)
def test_score_reads_only_the_last_max_len_items(name: str, timed: bool) -> None:
    model = make(name, seed=6)
    items, times = random_rows(6, [MAX_LEN + 7, 3, MAX_LEN + 1])
    tail_items = [r[-MAX_LEN:] for r in items]
    tail_times = [t[-MAX_LEN:] for t in times]
    long = model.score(Jagged.from_lists(items), timestamps=Jagged.from_lists(times) if timed else None)
    tail = model.score(Jagged.from_lists(tail_items), timestamps=Jagged.from_lists(tail_times) if timed else None)
    assert long.shape == (3, N_ITEMS + 1)
    assert torch.isfinite(long).all()
    torch.testing.assert_close(long, tail, **TIGHT)
    # Changing an item older than the cap changes nothing.
    items[0][0] = items[0][0] % N_ITEMS + 1
    again = model.score(Jagged.from_lists(items), timestamps=Jagged.from_lists(times) if timed else None)
    torch.testing.assert_close(again, long, **TIGHT)


def test_score_uses_the_last_position_and_a_user_array_is_accepted() -> None:
    model = make("sasrec")
    rows, _ = random_rows(7, [5, 2])
    with torch.no_grad():
        h = model(padded(rows), torch.tensor([5, 2]))
    s = model.score(Jagged.from_lists(rows), users=np.array([0, 1]))
    torch.testing.assert_close(s[0], h[0, 4] @ model.item_emb.weight.T, **TIGHT)
    torch.testing.assert_close(s[1], h[1, 1] @ model.item_emb.weight.T, **TIGHT)
    assert not s.requires_grad


@pytest.mark.parametrize("name", ["sasrec", "hstu"])
def test_l2_normalize_bounds_scores(name: str) -> None:
    model = make(name, l2_normalize=True)
    rows, _ = random_rows(8, [5, 9, 1])
    s = model.score(Jagged.from_lists(rows))
    assert s[:, 1:].abs().max() <= 1 + 1e-9
    h = model(padded(rows), torch.tensor([5, 9, 1]))
    torch.testing.assert_close(h.norm(dim=-1), torch.ones(3, 9, dtype=torch.float64), **TIGHT)


def test_next_item_targets() -> None:
    window = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0], [7, 0, 0, 0]])
    inputs, targets = next_item_targets(window, torch.tensor([4, 2, 1]))
    assert torch.equal(inputs, window[:, :-1])
    assert torch.equal(targets, torch.tensor([[2, 3, 4], [6, 0, 0], [0, 0, 0]]))


# ----- configs and init -------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [SASRecConfig, HSTUConfig])
@pytest.mark.parametrize("bad", [{"nope": 1}, {"dim": 0}, {"blocks": 0}, {"heads": 0}, {"max_len": 0},
                                 {"dropout": 1.0}, {"dropout": -0.1}, {"init_std": 0.0}, {"dim": "wide"},
                                 {"name": "other"}])
def test_configs_reject_bad_input(cfg, bad: dict) -> None:
    with pytest.raises(ValidationError):
        cfg(**bad)


@pytest.mark.parametrize("bad", [{"ffn_mult": 0}, {"time_buckets": 3}, {"attn_dim": 4}])  # HSTU fields are unknown
def test_sasrec_config_specific_fields(bad: dict) -> None:
    with pytest.raises(ValidationError):
        SASRecConfig(**bad)


@pytest.mark.parametrize("bad", [{"time_buckets": -1}, {"attn_dim": 0}, {"linear_dim": 0}, {"ffn_mult": 2}])
def test_hstu_config_specific_fields(bad: dict) -> None:
    with pytest.raises(ValidationError):
        HSTUConfig(**bad)


def test_configs_are_frozen_and_have_defaults() -> None:
    cfg = HSTUConfig()
    with pytest.raises(ValidationError):
        cfg.dim = 3
    assert SASRecConfig().name == "sasrec" and cfg.name == "hstu"


def test_sasrec_rejects_dim_not_divisible_by_heads() -> None:
    with pytest.raises(ValueError, match="divisible"):
        SASRec(SASRecConfig(dim=10, heads=3), N_ITEMS)


def test_hstu_custom_head_dims() -> None:
    model = make("hstu", dim=10, heads=3, attn_dim=4, linear_dim=5)
    items, lengths, _, _, _ = batch(9, [MAX_LEN, 3])
    out = model(items, lengths)
    assert out.shape == (2, MAX_LEN, 10)
    model.reference = True
    torch.testing.assert_close(model(items, lengths)[real(lengths, MAX_LEN)], out[real(lengths, MAX_LEN)], **TIGHT)


@pytest.mark.parametrize("name", ["sasrec", "hstu"])
def test_embedding_init(name: str) -> None:
    torch.manual_seed(0)
    cls, cfg = (SASRec, SASRecConfig) if name == "sasrec" else (HSTU, HSTUConfig)
    model = cls(cfg(dim=32, heads=2), 2000)
    w = model.item_emb.weight.detach()
    assert torch.all(w[0] == 0)
    assert 0.018 < w[1:].std().item() < 0.022
    assert 0.015 < model.pos_emb.weight.detach().std().item() < 0.025
    assert model.item_emb.padding_idx == 0


# ----- tiny overfit -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sasrec", "hstu"])
def test_learns_a_cyclic_sequence(name: str) -> None:
    torch.manual_seed(0)
    period, n_items, length = 8, 10, 12
    cfg = {"dim": 16, "blocks": 1, "heads": 1, "max_len": length, "dropout": 0.0}
    model = SASRec(SASRecConfig(**cfg), n_items) if name == "sasrec" else HSTU(HSTUConfig(**cfg), n_items)
    # Every rotation of 1..8 repeated, as windows of length+1 (some shorter, right-padded).
    windows = [[(s + t) % period + 1 for t in range(length + 1)] for s in range(period)]
    lens = torch.tensor([length + 1] * period + [6] * period)
    windows += [w[:6] + [0] * (length + 1 - 6) for w in windows]
    inputs, targets = next_item_targets(torch.tensor(windows), lens)
    in_lengths = lens - 1
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    model.train()
    for _ in range(100):
        h = model(inputs, in_lengths)
        keep = targets > 0
        loss = full_cross_entropy(h[keep], targets[keep], model.item_table()) / keep.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    prefixes = [[(s + t) % period + 1 for t in range(n)] for s in range(period) for n in (1, 3, 7, 11, 20)]
    scores = model.score(Jagged.from_lists(prefixes))
    predicted = scores[:, 1:].argmax(1) + 1
    expected = torch.tensor([p[-1] % period + 1 for p in prefixes])
    accuracy = (predicted == expected).float().mean().item()
    assert accuracy >= 0.9, (accuracy, loss.item())


@pytest.mark.parametrize("name", ["sasrec", "hstu"])
def test_item_features_hook(name):
    """Content features enter both the input and the output side, and only through the projection."""
    model = make(name)
    plain = model.score(Jagged.from_lists([[1, 2, 3]]))
    feats = torch.randn(N_ITEMS + 1, 5, dtype=torch.float64)
    model.attach_item_features(feats)
    model.double()
    with torch.no_grad():
        model.feature_proj.weight.zero_()
    torch.testing.assert_close(model.score(Jagged.from_lists([[1, 2, 3]])), plain)
    with torch.no_grad():
        model.feature_proj.weight.normal_()
    assert not torch.allclose(model.score(Jagged.from_lists([[1, 2, 3]])), plain)
    assert torch.equal(model.item_features[0], torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="rows"):
        model.attach_item_features(torch.randn(3, 5))


@pytest.mark.parametrize("name,timestamps", [("hstu", False), ("hstu", True), ("sasrec", False)])
def test_last_hidden_equals_the_full_pass_at_the_last_position(name, timestamps):
    """HSTU computes only the last query row in its last block when asked for last positions (serving and
    evaluation); it must agree with the full pass."""
    from genrec.models import SEQUENTIAL

    model_cls, config_cls = SEQUENTIAL[name]
    torch.manual_seed(0)
    model = model_cls(config_cls(dim=16, blocks=2, heads=2, max_len=12), 30, use_timestamps=timestamps).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    rng = np.random.default_rng(0)
    hist = [rng.integers(1, 31, n).tolist() for n in (1, 5, 12, 20)]
    times = Jagged.from_lists([sorted(rng.integers(0, 10**6, len(h)).tolist()) for h in hist]) if timestamps else None
    fast = model.last_hidden(Jagged.from_lists(hist), times)
    tail = Jagged.from_lists(hist).tail(12)
    lengths = torch.from_numpy(tail.lengths)
    ts = times.tail(12).to_padded(left=False) if timestamps else None
    full = model(tail.to_padded(left=False), lengths, ts)[torch.arange(4), lengths - 1]
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
