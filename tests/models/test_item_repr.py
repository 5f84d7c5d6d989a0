"""model.item_repr: items as learned id rows (id), as sums of semantic-ID code embeddings (sid), or codes plus
hashed id buckets (sid_hash), whose parameters do not grow with the catalog."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch

import genrec.models.sequential as sequential
from genrec.data import prepare
from genrec.data.jagged import Jagged
from genrec.models import HSTU, SASRec
from genrec.models.hstu import HSTUConfig
from genrec.models.sasrec import SASRecConfig
from genrec.models.sequential import SequentialModel
from genrec.nn.losses import NegativeSampler, sampled_softmax
from genrec.train.checkpoint import load_tensors, save_tensors

SIZES = [6, 4, 3]
P = 2**31 - 1  # the hash's prime, restated: the buckets an item lands in are part of the saved model's meaning


def codes(n_items: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    body = torch.stack([torch.randint(0, s, (n_items,), generator=g) for s in SIZES], dim=1)
    return torch.cat([torch.full((1, len(SIZES)), -1), body])


def make(name: str, n_items: int, item_repr: str = "id", attach: bool = True, seed: int = 0,
         **extra) -> SequentialModel:
    torch.manual_seed(seed)
    cfg = {"dim": 8, "blocks": 1, "heads": 1, "max_len": 6, "dropout": 0.0, "item_repr": item_repr, **extra}
    model = SASRec(SASRecConfig(**cfg), n_items) if name == "sasrec" else HSTU(HSTUConfig(**cfg), n_items)
    if attach and item_repr != "id":
        model.attach_semantic_ids(codes(n_items, seed), SIZES)
    return model


def hash_rows(ids: torch.Tensor, buckets: int, count: int) -> list[torch.Tensor]:
    return [(ids * a + b) % P % buckets for a, b in zip(sequential._HASH_A[:count], sequential._HASH_B[:count],
                                                         strict=True)]


@pytest.mark.parametrize("name", ["sasrec", "hstu"])
@pytest.mark.parametrize("item_repr", ["sid", "sid_hash"])
def test_parameter_count_does_not_depend_on_the_catalog(name, item_repr):
    small, large = make(name, 50, item_repr, hash_buckets=64), make(name, 20_000, item_repr, hash_buckets=64)
    assert small.parameter_counts()["total"] == large.parameter_counts()["total"]
    assert small.parameter_counts()["items"] == sum(SIZES) * 8 + (64 * 8 if item_repr == "sid_hash" else 0)
    counts = large.parameter_counts()
    assert counts["total"] == sum(p.numel() for p in large.parameters()) == counts["items"] + counts["other"]
    assert counts["item_buffer_bytes"] == 20_001 * len(SIZES) * 2  # int16 codes: 2 bytes per code
    ids = make(name, 50), make(name, 20_000)
    assert ids[1].parameter_counts()["total"] - ids[0].parameter_counts()["total"] == (20_000 - 50) * 8


@pytest.mark.parametrize("name", ["sasrec", "hstu"])
def test_item_repr_id_is_the_plain_table(name):
    default, explicit = make(name, 30), make(name, 30, "id")
    assert default.config.item_repr == "id"
    assert default.item_vectors() is default.item_emb.weight  # the table itself, not a copy
    assert not any(k.startswith(("hash_emb", "sid_emb")) for k in default.state_dict())
    for (k, a), (k2, b) in zip(default.state_dict().items(), explicit.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    hist = Jagged.from_lists([[1, 2, 3], [7]])
    assert torch.equal(default.eval().score(hist), explicit.eval().score(hist))
    ids = torch.tensor([[3, 0]])
    torch.testing.assert_close(default.item_vectors(ids), default.item_emb.weight[ids], rtol=0, atol=0)


@pytest.mark.parametrize("item_repr", ["sid", "sid_hash"])
def test_items_are_code_sums_plus_hashed_buckets(item_repr, monkeypatch):
    model = make("hstu", 40, item_repr, hash_buckets=16, hash_count=3)
    c = codes(40)
    ids = torch.arange(41)
    expected = sum(model.sid_emb[j].weight[c[:, j].clamp(min=0)] for j in range(len(SIZES)))
    if item_repr == "sid_hash":
        expected = expected + sum(model.hash_emb.weight[r] for r in hash_rows(ids, 16, 3))
    expected[0] = 0
    table = model.item_vectors()
    torch.testing.assert_close(table, expected)
    assert torch.equal(table[0], torch.zeros(8))
    some = torch.tensor([[5, 0, 17], [40, 1, 5]])
    torch.testing.assert_close(model.item_vectors(some), table[some])
    monkeypatch.setattr(sequential, "_BLOCK", 7)  # blocks of 7 items build the same table
    torch.testing.assert_close(model.item_vectors(), table, rtol=0, atol=0)


def test_hashed_buckets_tell_items_with_the_same_codes_apart():
    model = make("sasrec", 10, "sid_hash", attach=False, hash_buckets=1000)
    same = torch.cat([torch.full((1, 3), -1), torch.zeros((10, 3), dtype=torch.long)])
    model.attach_semantic_ids(same, SIZES)
    v = model.item_vectors().detach()
    assert torch.cdist(v[1:], v[1:]).triu(1)[torch.ones(10, 10).triu(1).bool()].min() > 0
    plain = make("sasrec", 10, "sid", attach=False)
    plain.attach_semantic_ids(same, SIZES)
    w = plain.item_vectors().detach()
    assert torch.equal(w[1:], w[1:2].expand(10, -1))  # codes alone cannot tell them apart


@pytest.mark.parametrize("item_repr", ["sid", "sid_hash"])
def test_sampled_training_step_reaches_codes_without_building_the_table(item_repr, monkeypatch):
    model = make("hstu", 500, item_repr, hash_buckets=32).train()
    full_calls = []
    original = model.item_vectors

    def spy(ids=None):
        if ids is None:
            full_calls.append(1)
        return original(ids)

    monkeypatch.setattr(model, "item_vectors", spy)
    items = torch.tensor([[3, 9, 27, 81, 243, 2], [5, 25, 125, 7, 0, 0]])
    lengths = torch.tensor([5, 3])
    h = model(items[:, :-1], lengths)
    mask = torch.arange(5)[None] < lengths[:, None]
    targets = items[:, 1:][mask]
    loss = sampled_softmax(h[mask], targets, model.item_table, 16, in_batch=True, sampler=NegativeSampler(500),
                           generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert full_calls == []
    c = codes(500)
    for j, emb in enumerate(model.sid_emb):
        touched = emb.weight.grad.abs().sum(1) > 0
        assert touched[c[targets, j]].all()  # every target's code rows got a gradient
    if item_repr == "sid_hash":
        assert model.hash_emb.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("item_repr", ["id", "sid", "sid_hash"])
def test_saved_weights_round_trip(item_repr, tmp_path):
    model = make("sasrec", 60, item_repr, hash_buckets=20).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # not the initial weights
    save_tensors(tmp_path / "m.safetensors", model.state_dict())
    state = load_tensors(tmp_path / "m.safetensors")
    assert ("item_emb.weight" in state) == (item_repr == "id")
    if item_repr != "id":
        assert state["sid_codes"].dtype == torch.int16
    again = make("sasrec", 60, item_repr, attach=False, seed=1, hash_buckets=20)
    again.attach_from_state(state)
    again.load_state_dict(state)
    hist = Jagged.from_lists([[1, 2, 3], [60, 4]])
    assert torch.equal(again.eval().score(hist), model.score(hist))


def test_state_attaches_to_a_model_built_on_the_meta_device():
    """A server maps the weights and builds the model on the meta device (nothing allocated), then assigns them."""
    model = make("hstu", 60, "sid_hash", hash_buckets=20).eval()
    state = model.state_dict()
    with torch.device("meta"):
        empty = make("hstu", 60, "sid_hash", attach=False, hash_buckets=20)
        empty.attach_from_state(state)
    empty.load_state_dict(state, assign=True)
    assert not any(t.is_meta for t in [*empty.parameters(), *empty.buffers()])
    hist = Jagged.from_lists([[1, 2, 3], [60, 4]])
    assert torch.equal(empty.eval().score(hist), model.score(hist))


def test_sid_model_without_codes_says_what_is_missing():
    model = make("sasrec", 10, "sid", attach=False)
    with pytest.raises(RuntimeError, match="attach_semantic_ids"):
        model.score(Jagged.from_lists([[1, 2]]))


# --- in a run -------------------------------------------------------------------------------------------------


def tiny(tmp_path):
    from genrec.content import ItemEmbeddings
    from genrec.semantic_ids import tokenize

    rows = [(u, (u * 3 + t) % 15 + 1) for u in range(24) for t in range(8)]
    ds = prepare(pa.table({"user": [r[0] for r in rows], "item": [r[1] for r in rows]}), name="tiny")
    g = torch.Generator().manual_seed(0)
    vectors = torch.cat([torch.zeros(1, 6), torch.randn(ds.n_items, 6, generator=g)]).numpy()
    emb = ItemEmbeddings(vectors=vectors, item_ids=[str(x) for x in ds.items.raw.to_pylist()], meta={})
    tokenize(emb, levels=2, codebook_size=4, out=tmp_path / "sid")
    return ds


def run_config(tmp_path, item_repr: str, **train):
    from genrec.train.config import RunConfig

    return RunConfig.model_validate({
        "dataset": "tiny", "model": {"name": "hstu", "dim": 8, "blocks": 1, "max_len": 6, "dropout": 0.0,
                                     "item_repr": item_repr, "hash_buckets": 32},
        "train": {"epochs": 2, "batch_size": 8, "warmup_steps": 1, **train}, "eval": {"n_boot": 20, "ks": [5, 10]},
        "features": {"semantic_ids": str(tmp_path / "sid")}})


@pytest.mark.parametrize(("item_repr", "sampling"), [
    ("sid", {}), ("sid_hash", {"negative_sampler": "popularity", "logq": True, "in_batch_negatives": True})])
def test_a_run_trains_saves_and_serves_without_an_id_table(item_repr, sampling, tmp_path):
    from genrec.serve import Recommender, export_bundle
    from genrec.train.trainer import Trainer

    torch.set_num_threads(1)
    ds = tiny(tmp_path)
    cfg = run_config(tmp_path, item_repr, loss="sampled_softmax", negatives=5, **sampling)
    res = Trainer(cfg, tmp_path / "run", dataset=ds, show_progress=False).fit()
    state = load_tensors(tmp_path / "run" / "model.safetensors")
    assert "item_emb.weight" not in state and "sid_codes" in state
    rec = Recommender.load(export_bundle(tmp_path / "run", tmp_path / "bundle"))
    hist = Jagged.from_lists([[1, 2, 3]])
    torch.testing.assert_close(rec.model.score(hist), res.model.score(hist))


def test_run_loss_draws_by_popularity_with_logq(tmp_path):
    from genrec.errors import GenrecError
    from genrec.train.trainer import Trainer

    cfg = run_config(tmp_path, "sid", loss="sampled_softmax", negatives=6, negative_sampler="popularity",
                     popularity_alpha=0.5, logq=True, in_batch_negatives=True)
    model = make("hstu", 15, "sid")
    trainer = Trainer(cfg, tmp_path / "run", show_progress=False)
    h, targets = torch.randn(4, 8), torch.tensor([1, 5, 5, 9])
    with pytest.raises(GenrecError, match="item counts"):
        trainer._loss(h, targets, model)
    trainer.item_counts = torch.arange(16) % 4
    torch.manual_seed(3)
    got = trainer._loss(h, targets, model)
    sampler = NegativeSampler(15, trainer.item_counts, "popularity", 0.5)
    torch.manual_seed(3)
    expected = sampled_softmax(h, targets, model.item_table(), 6, in_batch=True, sampler=sampler, logq=True)
    torch.testing.assert_close(got, expected)
