"""Semantic-ID features of ID models: item = id embedding + sum of code embeddings, so items that share codes
share what they learn and an item never seen in training still gets a useful representation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrec.data.jagged import Jagged
from genrec.models import HSTU, SASRec
from genrec.models.hstu import HSTUConfig
from genrec.models.sasrec import SASRecConfig
from genrec.models.sequential import SequentialModel
from genrec.nn.losses import full_cross_entropy

N_GROUPS = 10
N_ITEMS = 2 * N_GROUPS  # group g holds items 2g+1 and 2g+2


def codes() -> tuple[torch.Tensor, list[int]]:
    """Two content levels (group, group parity) + a uniqueness code (which twin gets 0 alternates by group);
    row 0 = padding."""
    rows = [[-1, -1, -1]] + [[(i - 1) // 2, ((i - 1) // 2) % 2, ((i - 1) + (i - 1) // 2) % 2]
                             for i in range(1, N_ITEMS + 1)]
    return torch.tensor(rows), [N_GROUPS, 2, 2]


def make(name: str, seed: int = 0, dim: int = 16) -> SequentialModel:
    torch.manual_seed(seed)
    cfg = {"dim": dim, "blocks": 1, "heads": 1, "max_len": 8, "dropout": 0.0}
    return SASRec(SASRecConfig(**cfg), N_ITEMS) if name == "sasrec" else HSTU(HSTUConfig(**cfg), N_ITEMS)


@pytest.mark.parametrize("name", ["sasrec", "hstu"])
def test_codes_enter_item_vectors_and_scores(name):
    model = make(name).eval()
    plain_vectors = model.item_vectors().detach().clone()
    plain = model.score(Jagged.from_lists([[1, 3, 5]]))
    model.attach_semantic_ids(*codes())
    vectors = model.item_vectors()
    c, _ = codes()
    expected = plain_vectors[1:] + sum(model.sid_emb[j].weight[c[1:, j]] for j in range(3))
    torch.testing.assert_close(vectors[1:], expected)
    assert torch.equal(vectors[0], torch.zeros_like(vectors[0]))  # padding stays zero
    assert not torch.allclose(model.score(Jagged.from_lists([[1, 3, 5]])), plain)
    with torch.no_grad():
        for emb in model.sid_emb:
            emb.weight.zero_()
    torch.testing.assert_close(model.score(Jagged.from_lists([[1, 3, 5]])), plain)


def test_gradients_reach_code_embeddings():
    model = make("sasrec").train()
    model.attach_semantic_ids(*codes())
    items = torch.tensor([[1, 3, 5, 7]])
    h = model(items, torch.tensor([4]))
    loss = full_cross_entropy(h[0, :3], torch.tensor([3, 5, 7]), model.item_table())
    loss.backward()
    for emb in model.sid_emb:
        assert emb.weight.grad is not None and emb.weight.grad.abs().sum() > 0
    assert model.sid_emb[0].weight.grad[[0, 1, 2, 3]].abs().sum() > 0  # groups of items 1, 3, 5, 7


def test_item_never_seen_in_training_is_scored_through_its_codes():
    """Training walks groups 0 -> 1 -> ... using only one item of each group; the other item of the next group
    (never seen) should then rank near the top with its seen twin, which plain IDs cannot do."""
    torch.set_num_threads(1)
    seqs = [[2 * ((s + t) % N_GROUPS) + 1 for t in range(6)] for s in range(N_GROUPS)]
    seen = {i for s in seqs for i in s}
    unseen = [i for i in range(1, N_ITEMS + 1) if i not in seen]
    assert unseen == list(range(2, N_ITEMS + 1, 2))

    def train(model: SequentialModel) -> SequentialModel:
        items = torch.tensor(seqs)
        opt = torch.optim.Adam(model.parameters(), lr=0.02)
        model.train()
        for _ in range(150):
            h = model(items[:, :-1], torch.full((len(seqs),), 5))
            loss = full_cross_entropy(h.reshape(-1, h.shape[-1]), items[:, 1:].reshape(-1), model.item_table())
            opt.zero_grad()
            loss.backward()
            opt.step()
        return model.eval()

    with_codes = make("sasrec", seed=1)
    with_codes.attach_semantic_ids(*codes())
    train(with_codes)
    plain = train(make("sasrec", seed=1))
    # an unseen item's vector is non-zero and points where its seen twin's does (they share codes)
    twin = torch.tensor(unseen) - 1
    v = with_codes.item_vectors().detach()
    cos = torch.nn.functional.cosine_similarity(v[unseen], v[twin])
    assert (v[unseen].norm(dim=1) > 0).all() and (cos > 0.3).all(), cos
    v = plain.item_vectors().detach()
    assert torch.nn.functional.cosine_similarity(v[unseen], v[twin]).mean() < 0.1

    histories = [[2 * ((g + t) % N_GROUPS) + 1 for t in range(3)] for g in range(N_GROUPS)]
    siblings = [2 * ((g + 3) % N_GROUPS) + 2 for g in range(N_GROUPS)]  # unseen twin of the expected next item

    def sibling_ranks(model):
        scores = model.score(Jagged.from_lists(histories))
        scores[:, 0] = -torch.inf
        order = scores.argsort(dim=1, descending=True)
        return np.array([int((order[r] == s).nonzero()) + 1 for r, s in enumerate(siblings)])

    ranks, plain_ranks = sibling_ranks(with_codes), sibling_ranks(plain)
    assert (ranks <= 5).all() and np.median(plain_ranks) > 5, (ranks, plain_ranks)  # 20 items
