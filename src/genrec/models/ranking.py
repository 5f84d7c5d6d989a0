"""What every ranking model shares: the batch it reads, the description of the data it is built for, feature
embeddings for items and users, and the multi-task heads.

A ranking batch holds B requests. Request b has a history of impressions (item, actions, time; sorted by time,
right-padded, ``hist_len[b]`` real) and M candidates (right-padded with item 0). Candidate c of request b may
read only the first ``visible[b, c]`` history tokens: at serving time that is the whole history; in training,
where a user's own impressions are both history and candidates, it is the number of impressions strictly
earlier than the candidate, so no label leaks into its own prediction. Every model (the generative ranker and
the baselines) maps a batch to one output per task and candidate: logits for binary tasks, a value for
regression tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, model_validator
from torch import nn

from genrec.models.base import ModelInputError, check_ids


@dataclass
class RankSpec:
    """The data a ranking model is built for (from genrec.data.impressions; stored with the weights)."""

    n_items: int
    n_users: int
    binary_tasks: tuple[str, ...]
    regression_tasks: tuple[str, ...] = ()
    item_feature_sizes: dict[str, int] | None = None  # categorical item feature -> number of codes (0 = unknown)
    user_feature_sizes: dict[str, int] | None = None
    action_sizes: dict[str, int] | None = None  # action field of a history token -> number of codes (0 = pad)
    action_bits: dict[str, int] | None = None  # action fields whose code - 1 is a bit set of that many signals
    row_feature_sizes: dict[str, int] | None = None  # per-impression context code -> number of codes (0 = unknown)

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.binary_tasks + self.regression_tasks

    def to_json(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    @classmethod
    def from_json(cls, raw: dict) -> RankSpec:
        raw = dict(raw)
        for key in ("binary_tasks", "regression_tasks"):
            raw[key] = tuple(raw.get(key, ()))
        return cls(**raw)


@dataclass
class RankBatch:
    """Tensors of B requests; see the module docstring."""

    user: torch.Tensor  # [B] dense user index (0 = unknown user)
    hist_items: torch.Tensor  # [B, L] item index, 0 = padding
    hist_actions: torch.Tensor  # [B, L, A] one code per action field (spec.action_sizes order), 0 = padding
    hist_time: torch.Tensor  # [B, L] int64 unix ms
    hist_len: torch.Tensor  # [B]
    cand_items: torch.Tensor  # [B, M] item index, 0 = padding
    cand_time: torch.Tensor  # [B, M] int64 unix ms (the request time at serving)
    visible: torch.Tensor  # [B, M] history tokens candidate c may read (a prefix of the history)
    labels: dict[str, torch.Tensor] | None = None  # task -> [B, M] float (training / evaluation only)
    # Per-impression context codes (spec.row_feature_sizes order, 0 = unknown); None: unknown everywhere.
    hist_context: torch.Tensor | None = None  # [B, L, C] where each history impression was shown
    cand_context: torch.Tensor | None = None  # [B, M, C] where each candidate is to be shown

    def to(self, device: torch.device | str) -> RankBatch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[name] = value.to(device)
        if self.labels is not None:
            moved["labels"] = {k: v.to(device) for k, v in self.labels.items()}
        return RankBatch(**moved)

    @property
    def cand_mask(self) -> torch.Tensor:
        return self.cand_items > 0

    def check(self, spec: RankSpec) -> None:
        """Raise :class:`ModelInputError` naming the field unless the batch fits ``spec``: the shapes above,
        integer ids within the spec's users, items and action / context codes."""
        for name in ("user", "hist_len", "hist_items", "cand_items"):
            want = 1 if name in ("user", "hist_len") else 2
            if getattr(self, name).ndim != want:
                raise ModelInputError(f"{name} must have {want} dimension(s), got shape "
                                      f"{list(getattr(self, name).shape)}")
        (b, length), m = self.hist_items.shape, self.cand_items.shape[1]
        shapes = {"user": (b,), "hist_len": (b,), "hist_time": (b, length),
                  "hist_actions": (b, length, len(spec.action_sizes or {})), "cand_items": (b, m),
                  "cand_time": (b, m), "visible": (b, m)}
        contexts = len(spec.row_feature_sizes or {})
        shapes |= {k: (b, n, contexts) for k, n in (("hist_context", length), ("cand_context", m))
                   if getattr(self, k) is not None}
        shared = {"cand_time", "visible", "cand_context"}  # may hold one column for every candidate of a row
        for name, shape in shapes.items():
            got = tuple(getattr(self, name).shape)
            if got != shape and not (name in shared and got == (shape[0], 1, *shape[2:])):
                raise ModelInputError(f"{name} must have shape {list(shape)} (B requests, L history tokens, "
                                      f"M candidates), got {list(got)}")
        check_ids(self.user, 0, spec.n_users, "user")
        check_ids(self.hist_items, 0, spec.n_items, "hist_items")
        check_ids(self.cand_items, 0, spec.n_items, "cand_items")
        check_ids(self.hist_len, 0, length, "hist_len")
        check_ids(self.visible, 0, 2**63 - 1, "visible")
        for name in ("hist_time", "cand_time"):
            if getattr(self, name).dtype.is_floating_point:
                raise ModelInputError(f"{name} must be integer unix milliseconds, got {getattr(self, name).dtype}")
        _check_codes(self.hist_actions, spec.action_sizes, "hist_actions")
        for key in ("hist_context", "cand_context"):
            if getattr(self, key) is not None:
                _check_codes(getattr(self, key), spec.row_feature_sizes, key)


def _check_codes(codes: torch.Tensor, sizes: dict[str, int] | None, what: str) -> None:
    """``codes`` [..., F] holds field f's codes in 0..size_f - 1 (one reduction for all the fields)."""
    if codes.dtype.is_floating_point or codes.dtype == torch.bool:
        raise ModelInputError(f"{what} must be integer codes, got dtype {codes.dtype}")
    if not codes.numel():
        return
    low, high = (v.tolist() for v in torch.aminmax(codes.reshape(-1, codes.shape[-1]), dim=0))
    for f, (name, size) in enumerate((sizes or {}).items()):
        if low[f] < 0 or high[f] >= size:
            raise ModelInputError(f"{what}[..., {f}] ({name}) must lie in 0..{size - 1}; got "
                                  f"{low[f] if low[f] < 0 else high[f]}")


class FeatureEmbedding(nn.Module):
    """id embedding + the sum of one embedding per categorical feature, looked up from stored tables.

    ``tables[name]`` is an int64 tensor [n + 1] of codes per index (row 0 = padding); it is a buffer, saved
    with the weights, so a model needs only indices at run time."""

    def __init__(self, n: int, dim: int, sizes: dict[str, int] | None, tables: dict[str, torch.Tensor] | None,
                 init_std: float = 0.02):
        super().__init__()
        self.n = n
        self.id = nn.Embedding(n + 1, dim, padding_idx=0)
        nn.init.normal_(self.id.weight, std=init_std)
        self._table: torch.Tensor | None = None  # see precompute (not saved with the weights)
        self.names = sorted(sizes or {})
        self.feats = nn.ModuleDict()
        for name in self.names:
            table = torch.as_tensor((tables or {})[name], dtype=torch.int64)
            if table.shape != (n + 1,):
                raise ValueError(f"feature table {name!r} has shape {tuple(table.shape)}, expected ({n + 1},)")
            if table.numel() and (table.min() < 0 or table.max() >= sizes[name]):
                raise ValueError(f"feature {name!r} has codes outside [0, {sizes[name]})")
            self.register_buffer(f"table_{name}", table.clone())
            self.feats[f"f_{name}"] = nn.Embedding(sizes[name], dim, padding_idx=0)  # prefixed, like TaskHeads
            nn.init.normal_(self.feats[f"f_{name}"].weight, std=init_std)

    def precompute(self) -> None:
        """Serving: the summed embedding of every index, computed once, so an eval-mode lookup is one gather
        instead of one per feature. Call it after the weights are loaded; training mode ignores it."""
        self._table = None
        device = next(iter([*self.parameters(), *self.buffers()]), torch.empty(0)).device
        with torch.no_grad():
            self._table = self.forward(torch.arange(self.n + 1, device=device))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if self._table is not None and not self.training:
            return self._table[idx]
        out = self.id(idx)
        for name in self.names:
            out = out + self.feats[f"f_{name}"](getattr(self, f"table_{name}")[idx])
        return out


class ActionEmbedding(nn.Module):
    """Sum of one embedding per action field of a history token (e.g. which signals fired, watch-time bucket)."""

    def __init__(self, sizes: dict[str, int] | None, dim: int, init_std: float = 0.02):
        super().__init__()
        self.fields = nn.ModuleList(nn.Embedding(s, dim, padding_idx=0) for s in (sizes or {}).values())
        for emb in self.fields:
            nn.init.normal_(emb.weight, std=init_std)

    def forward(self, actions: torch.Tensor) -> torch.Tensor:
        """[..., A] codes -> [..., D]."""
        out = 0
        for a, emb in enumerate(self.fields):
            out = out + emb(actions[..., a])
        return out


class TaskHeads(nn.Module):
    """One small MLP per task on a shared representation: logits for binary tasks, a value for regression."""

    def __init__(self, dim: int, tasks: tuple[str, ...], hidden: int | None = None):
        super().__init__()
        hidden = hidden or dim
        # Keys are prefixed: a task may be named like a Module attribute ("forward" is KuaiRand's share signal).
        self.tasks = tuple(tasks)
        self.heads = nn.ModuleDict({f"task_{t}": nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, 1))
                                    for t in tasks})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if torch.is_grad_enabled():
            return {t: self.heads[f"task_{t}"](x).squeeze(-1) for t in self.tasks}
        return self._stacked(x)

    def _stacked(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The same heads as one matrix product for every task's first layer and one contraction for the second:
        scoring (serving, evaluation) calls two kernels instead of three modules per task."""
        first, second = zip(*((self.heads[f"task_{t}"][0], self.heads[f"task_{t}"][2]) for t in self.tasks),
                            strict=True)
        hidden = F.silu(F.linear(x, torch.cat([m.weight for m in first]), torch.cat([m.bias for m in first])))
        w2 = torch.stack([m.weight[0] for m in second])  # [T, H]
        out = (hidden.unflatten(-1, (len(self.tasks), -1)) * w2).sum(-1) + torch.cat([m.bias for m in second])
        return dict(zip(self.tasks, out.unbind(-1), strict=True))


class HistoryStats(nn.Module):
    """Exact counts over the history a candidate may read, as extra inputs of its task heads: the counter
    features a feature-based ranker (or the gbdt baseline) gets by hand, here computed inside the model from
    the request's own history tokens, so they hold at serving time and per candidate (M-FALCON stays exact).

    Each history token's actions become a signal vector: the bits of a bit-set field (``RankSpec.action_bits``:
    KuaiRand's click / long_view / like ... bits), a one-hot code for any other field (e.g. the watch-time
    bucket). For a candidate reading n history tokens the features are log(1 + n) and the user's rate of every
    signal, sum / (n + 1); then, for every match key (the item itself, or an item feature such as the author),
    over the k tokens whose key equals the candidate's: log(1 + k), their share k / (n + 1) and their rate of
    every signal, sum / (k + 1). A candidate whose key is unknown (code 0) matches nothing."""

    def __init__(self, spec: RankSpec, keys: tuple[str, ...]):
        super().__init__()
        bits = spec.action_bits or {}
        self.keys = tuple(keys)
        self.n_fields = len(spec.action_sizes or {})
        for a, (name, size) in enumerate((spec.action_sizes or {}).items()):
            codes = torch.arange(size)
            if name in bits:  # code c >= 1 holds signal b iff bit b of c - 1 is set
                table = (((codes[:, None] - 1).clamp(min=0) >> torch.arange(bits[name])) & 1).float()
            else:  # one column per real code
                table = F.one_hot(codes, size)[:, 1:].float()
            table[0] = 0  # padding fires nothing
            self.register_buffer(f"decode_{a}", table, persistent=False)
        self.n_signals = sum(getattr(self, f"decode_{a}").shape[1] for a in range(self.n_fields))
        self.width = 1 + self.n_signals + len(self.keys) * (2 + self.n_signals)

    def signals(self, actions: torch.Tensor) -> torch.Tensor:
        """[..., A] action codes -> [..., S] float signals."""
        parts = [getattr(self, f"decode_{a}")[actions[..., a]] for a in range(self.n_fields)]
        return torch.cat(parts, dim=-1) if parts else actions.new_zeros(*actions.shape[:-1], 0, dtype=torch.float)

    def forward(self, signals: torch.Tensor, mask: torch.Tensor,
                matches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Features [B, M, width] from history ``signals`` [B, L, S], the visibility ``mask`` [B, M, L] and,
        per key, (history codes [B, L], candidate codes [B, M])."""
        seen = mask.to(signals.dtype)
        n = seen.sum(-1, keepdim=True)
        parts = [torch.log1p(n), torch.bmm(seen, signals) / (n + 1)]
        for hist, cand in matches:
            same = seen * ((hist[:, None, :] == cand[..., None]) & (cand[..., None] > 0)).to(seen.dtype)
            k = same.sum(-1, keepdim=True)
            parts += [torch.log1p(k), k / (n + 1), torch.bmm(same, signals) / (k + 1)]
        return torch.cat(parts, dim=-1)


def prefix_mask(visible: torch.Tensor, length: int) -> torch.Tensor:
    """[B, M, L] bool: candidate c reads history token j iff j < visible[b, c]."""
    return torch.arange(length, device=visible.device)[None, None, :] < visible[..., None]


def visible_history(batch: RankBatch, max_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                             torch.Tensor | None]:
    """The history window the batch's real candidates read: items [B, W], actions [B, W, A], mask [B, M, W]
    and row context codes [B, W, C] (None without), where candidate c reads tokens j with
    visible[b, c] - max_len <= j < visible[b, c] (and j < hist_len[b]). W is trimmed to the tokens some real
    candidate reads; the mask is exact per candidate."""
    length = batch.hist_items.shape[1]
    vis = torch.minimum(batch.visible, batch.hist_len[:, None]).clamp(0, length)
    lo = (vis - max_len).clamp_min(0)
    real = batch.cand_mask
    start, end = (int(lo[real].min()), int(vis[real].max())) if bool(real.any()) else (0, 0)
    end = max(start, end)
    mask = prefix_mask(vis - start, end - start) & ~prefix_mask(lo - start, end - start)
    context = None if batch.hist_context is None else batch.hist_context[:, start:end]
    return batch.hist_items[:, start:end], batch.hist_actions[:, start:end], mask, context


def check_task_weights(spec: RankSpec, weights: dict[str, float]) -> None:
    if unknown := set(weights) - set(spec.tasks):
        raise ValueError(f"task_weights name tasks {sorted(unknown)} that are not in the data ({list(spec.tasks)})")


def multitask_loss(outputs: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], mask: torch.Tensor,
                   binary_tasks: tuple[str, ...] | list[str], weights: dict[str, float] | None = None,
                   listwise: dict[str, float] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum over tasks of the mean loss over real candidates: BCE-with-logits for ``binary_tasks``,
    MSE for the others. ``mask`` [B, M] bool marks real candidates; a non-finite label counts as missing
    (a regression signal not logged for that impression). ``listwise[t]`` adds that weight times
    :func:`listwise_loss` of binary task t. Returns (total, {task: loss})."""
    per_task: dict[str, torch.Tensor] = {}
    total = next(iter(outputs.values())).new_zeros(())
    for task, pred in outputs.items():
        target = labels[task].to(pred.dtype)
        keep = mask & torch.isfinite(target)
        flat, flat_target = pred[keep], target[keep]
        if flat.numel() == 0:  # no labelled candidate: a zero that still carries a graph
            loss = flat.sum()
        elif task in binary_tasks:
            loss = F.binary_cross_entropy_with_logits(flat, flat_target)
            if (listwise or {}).get(task):
                loss = loss + listwise[task] * listwise_loss(pred, target, keep)
        else:
            loss = F.mse_loss(flat, flat_target)
        per_task[task] = loss
        total = total + (weights or {}).get(task, 1.0) * loss
    return total, per_task


def listwise_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy of each request's positives among its real candidates ([B, M] each), averaged over
    the requests that have both a positive and a negative. BCE is dominated by who engages (users differ far
    more than items do for one user); this term only sees the order within a request, which GAUC measures."""
    pos = (labels > 0.5) & mask
    useful = pos.any(1) & (mask & ~pos).any(1)
    if not bool(useful.any()):
        return logits.sum() * 0.0
    logits, pos, mask = logits[useful], pos[useful], mask[useful]
    log_p = logits - torch.logsumexp(logits.masked_fill(~mask, float("-inf")), dim=1, keepdim=True)
    return -((log_p * pos).sum(1) / pos.sum(1)).mean()


class ItemPrior(nn.Module):
    """The wide part of a ranker: each binary task's smoothed positive rate of the candidate item, counted on
    the training impressions strictly earlier than the candidate, added to the task's logit as
    ``weight[t] * (logit(rate) - logit(base rate))``.

    rate = (positives + strength * base) / (impressions + strength) shrinks a rarely shown item to the base rate.
    A rare signal (likes: ~2% of impressions) is mostly an item property that a shared embedding learns slowly
    and noisily; counting it is exact. Counting only earlier impressions (CatBoost's ordered target statistics)
    keeps a training row's own label, and any later one, out of its offset, so training sees offsets built as
    they are at serving time, when every counted impression precedes the request. The counts are buffers (the
    training impressions sorted by item and time, with running sums of their labels): a saved model serves
    with the same table."""

    def __init__(self, n_items: int, tasks: tuple[str, ...], strength: float = 20.0):
        super().__init__()
        self.tasks, self.strength = tuple(tasks), float(strength)
        self.register_buffer("keys", torch.zeros(0, dtype=torch.int64))  # item * stride + time offset, sorted
        self.register_buffer("running", torch.zeros(1, len(self.tasks)))  # [N + 1, T] positives before key k
        self.register_buffer("clock", torch.zeros(2, dtype=torch.int64))  # (first time, stride)
        self.register_buffer("base", torch.full((len(self.tasks),), 0.5))
        self.weight = nn.Parameter(torch.ones(len(self.tasks)))

    @torch.no_grad()
    def fit(self, items: torch.Tensor, times: torch.Tensor, labels: dict[str, torch.Tensor]) -> None:
        """Count the impressions: ``items`` [N] item indices, ``times`` [N] int64, ``labels[task]`` [N] in {0, 1};
        the base rate is their positive rate."""
        t0 = int(times.min()) if len(times) else 0
        stride = (int(times.max()) - t0 + 2) if len(times) else 1
        keys = items.long() * stride + (times.long() - t0)
        order = torch.argsort(keys, stable=True)
        pos = torch.stack([labels[t].double()[order] for t in self.tasks], 1)
        self.keys = keys[order]
        self.running = F.pad(pos.cumsum(0), (0, 0, 1, 0)).to(self.running.dtype)
        self.clock = torch.tensor([t0, stride], dtype=torch.int64, device=self.keys.device)
        base = pos.sum(0) / max(len(items), 1)
        self.base = base.clamp(1e-6, 1 - 1e-6).to(self.base.dtype)

    def counts(self, items: torch.Tensor, times: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Positives [..., T] and impressions [..., 1] of each item strictly before each time."""
        t0, stride = int(self.clock[0]), int(self.clock[1])
        start = items.long() * stride
        end = start + (times.long() - t0).clamp(0, stride - 1)
        lo = torch.searchsorted(self.keys, start.reshape(-1)).view(items.shape)
        hi = torch.searchsorted(self.keys, end.reshape(-1)).view(items.shape)  # left: strictly earlier
        return self.running[hi] - self.running[lo], (hi - lo)[..., None].to(self.running.dtype)

    def forward(self, items: torch.Tensor, times: torch.Tensor) -> dict[str, torch.Tensor]:
        """{task: [B, M] logit offset} for candidate items and times [B, M] (padding items read no counts)."""
        pos, imp = self.counts(items, times)
        real = (items > 0)[..., None].to(pos.dtype)
        rate = (pos * real + self.strength * self.base) / (imp * real + self.strength)
        offset = torch.logit(rate, eps=1e-6) - torch.logit(self.base)
        return {t: self.weight[i] * offset[..., i] for i, t in enumerate(self.tasks)}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the table's size is the number of training impressions: take it from the saved weights
        for name in ("keys", "running"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class RowContext(nn.ModuleList):
    """Per-impression context (``RankSpec.row_feature_sizes``; RankBatch.hist_context / cand_context): one
    embedding table per named row feature, summed; code 0 (unknown, or no context at all) adds nothing."""

    def __init__(self, spec: RankSpec, names: tuple[str, ...], dim: int, init_std: float):
        known = list(spec.row_feature_sizes or {})
        if unknown := set(names) - set(known):
            raise ValueError(f"row_context names row features the data does not have: {sorted(unknown)} "
                             f"(known: {', '.join(known) or 'none'})")
        super().__init__(nn.Embedding(spec.row_feature_sizes[name], dim, padding_idx=0) for name in names)
        self.columns = [known.index(name) for name in names]  # columns of hist_context / cand_context
        for emb in self:
            nn.init.normal_(emb.weight[1:], std=init_std)

    def forward(self, codes: torch.Tensor | None) -> torch.Tensor | float:
        """[..., D]: the sum of the embeddings of ``codes`` [..., C]; None or no names: 0."""
        if codes is None or not len(self):
            return 0.0
        return sum(emb(codes[..., c]) for emb, c in zip(self, self.columns, strict=True))


class RowBias(nn.ModuleList):
    """A learned logit offset per task for each code of the named row features (``RankSpec.row_feature_sizes``),
    added to the task outputs: the part of a surface's effect that is the same for every user and item, which the
    heads otherwise have to recover through the candidate token. Starts at zero; code 0 (unknown) adds nothing."""

    def __init__(self, spec: RankSpec, names: tuple[str, ...]):
        known = list(spec.row_feature_sizes or {})
        super().__init__(nn.Embedding(spec.row_feature_sizes[name], len(spec.tasks), padding_idx=0)
                         for name in names)
        self.columns = [known.index(name) for name in names]
        self.tasks = spec.tasks
        for emb in self:
            nn.init.zeros_(emb.weight)

    def forward(self, outputs: dict[str, torch.Tensor], codes: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """``outputs`` {task: [B, M]} plus the offsets of ``codes`` [B, M, C] (unchanged when None)."""
        if codes is None or not len(self):
            return outputs
        offset = sum(emb(codes[..., c]) for emb, c in zip(self, self.columns, strict=True))  # [B, M, T]
        return add_offsets(outputs, {t: offset[..., k] for k, t in enumerate(self.tasks)})


class RankingOptions(BaseModel):
    """Options every ranking model's config shares: the item prior (:class:`ItemPrior`) and listwise losses."""

    item_prior: bool = Field(False, description="Add each binary task's smoothed per-item rate, counted on the "
                             "training impressions strictly earlier than the candidate, to its logit (ItemPrior): "
                             "a rare signal such as likes is mostly an item property that counting gets exactly.")
    listwise: dict[str, float] = Field(default_factory=dict, description="Binary task -> weight of an extra "
                                       "listwise loss over each request's candidates (listwise_loss): it trains "
                                       "the order within a user, which GAUC measures, not who engages.")
    row_context: tuple[str, ...] = Field(
        (), description="Per-impression context (the log's row features, e.g. KuaiRand's 'tab', the app surface) "
        "embedded (RowContext): a candidate's own code joins its representation, a history impression's code its "
        "token (where the user saw it). Known when a request is served; a request without it reads code 0 "
        "(unknown). Default none.")
    row_bias: bool = Field(False, description="Also learn a logit offset per task for each row_context code "
                           "(RowBias), added to the outputs: a surface's effect shared by all users and items. "
                           "Needs row_context.")

    # Options that were measured and not adopted (docs/results-log.md), with the value every model had without them.
    retired: ClassVar[dict[str, Any]] = {"item_prior_counts": "train", "item_prior_strength": 20.0}

    @model_validator(mode="before")
    @classmethod
    def _drop_retired(cls, data: Any) -> Any:
        """A saved config lists every field: a retired option at its old value is dropped; any other is refused."""
        if not isinstance(data, dict):
            return data
        kept = {k: v for k, v in data.items() if k not in cls.retired}
        for name in data.keys() & cls.retired.keys():
            if data[name] != cls.retired[name]:
                raise ValueError(f"{name} was removed (measured and not adopted, see docs/results-log.md); only "
                                 f"its former default {cls.retired[name]!r} is still accepted, got {data[name]!r}")
        return kept

    @model_validator(mode="after")
    def _row_bias_needs_context(self) -> RankingOptions:
        if self.row_bias and not self.row_context:
            raise ValueError("row_bias needs row_context: name the row features whose codes get an offset")
        return self


def make_row_bias(config: RankingOptions, spec: RankSpec) -> RowBias:
    """The config's row bias over its row_context features (empty, adding nothing, without row_bias)."""
    return RowBias(spec, config.row_context if config.row_bias else ())


def make_item_prior(config: RankingOptions, spec: RankSpec) -> ItemPrior | None:
    """The config's item prior (None without one); also checks its listwise tasks against ``spec``."""
    wrong = {t for t, w in config.listwise.items() if t not in spec.binary_tasks or w < 0}
    if wrong:
        raise ValueError(f"listwise names tasks that are not binary tasks of the data, or negative weights: "
                         f"{sorted(wrong)} (binary tasks: {', '.join(spec.binary_tasks)})")
    return ItemPrior(spec.n_items, spec.binary_tasks) if config.item_prior else None


def with_item_prior(prior: ItemPrior | None, outputs: dict[str, torch.Tensor], items: torch.Tensor,
                    times: torch.Tensor) -> dict[str, torch.Tensor]:
    """``outputs`` plus the prior's offsets of candidates ``items`` at ``times`` (unchanged without a prior)."""
    return outputs if prior is None else add_offsets(outputs, prior(items, times))


def add_offsets(outputs: dict[str, torch.Tensor], offsets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``outputs`` with ``offsets[t]`` added to every task that has one."""
    return {t: v + offsets[t] if t in offsets else v for t, v in outputs.items()}
