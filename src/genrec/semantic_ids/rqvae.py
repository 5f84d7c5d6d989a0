"""RQ-VAE (TIGER's tokenizer): an MLP encoder maps an item's content vector to a small latent, a residual
vector quantiser turns the latent into L codes (straight-through gradients, commitment loss), and an MLP
decoder rebuilds the content vector from the sum of the chosen code vectors.

Training tricks that keep every code in use: each codebook starts from k-means on the first batch's
residuals, and after every epoch the codes no item chose are restarted at random residuals of that level.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from genrec.semantic_ids.kmeans import kmeans, nearest
from genrec.semantic_ids.rqkmeans import residual_decode, residual_encode


class RQVAEConfig(BaseModel):
    """RQ-VAE architecture and training (CPU-friendly defaults: ~12k items train in about a minute)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden: list[int] = Field([256, 128], description="Encoder hidden sizes (the decoder mirrors them).")
    latent_dim: int = Field(32, ge=1, description="Size of the quantised latent (TIGER: 32).")
    epochs: int = Field(200, ge=1, description="Passes over the items.")
    batch_size: int = Field(1024, ge=1, description="Items per step.")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    beta: float = Field(0.25, ge=0, description="Commitment loss weight.")
    kmeans_init: bool = Field(True, description="Initialise each codebook with k-means on the first batch.")
    dead_code_restart: bool = Field(True, description="After each epoch, move codes no item chose onto random "
                                    "residuals of their level.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout inside the encoder and decoder MLPs.")


def _mlp(sizes: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class RQVAENet(nn.Module):
    def __init__(self, in_dim: int, levels: int, codebook_size: int, config: RQVAEConfig):
        super().__init__()
        sizes = [in_dim, *config.hidden, config.latent_dim]
        self.encoder = _mlp(sizes, config.dropout)
        self.decoder = _mlp(sizes[::-1], config.dropout)
        self.codebooks = nn.Parameter(torch.randn(levels, codebook_size, config.latent_dim) * 0.1)
        self.beta = config.beta

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Straight-through quantised latent, codes [n, L], VQ loss, and each level's input residual [L, n, d]."""
        r, zq, loss = z, torch.zeros_like(z), z.new_zeros(())
        codes, inputs = [], []
        for book in self.codebooks:
            inputs.append(r.detach())
            idx, _ = nearest(r.detach(), book.detach())
            e = book[idx]
            loss = loss + F.mse_loss(e, r.detach()) + self.beta * F.mse_loss(r, e.detach())
            zq = zq + e
            r = r - e.detach()
            codes.append(idx)
        zq_st = z + (zq - z).detach()
        return zq_st, torch.stack(codes, 1), loss, torch.stack(inputs)

    def forward(self, x: torch.Tensor):
        z = self.encoder(x)
        zq, codes, vq_loss, residuals = self.quantize(z)
        return self.decoder(zq), codes, vq_loss, residuals


class RQVAE:
    """``fit`` trains the network; ``encode`` only runs the encoder and the quantiser."""

    method = "rqvae"

    def __init__(self, levels: int = 3, codebook_size: int = 256, config: RQVAEConfig | None = None, seed: int = 0,
                 kmeans_iters: int = 50):
        self.levels, self.codebook_size, self.seed, self.kmeans_iters = levels, codebook_size, seed, kmeans_iters
        self.config = config or RQVAEConfig()
        self.net: RQVAENet | None = None
        self.history: list[dict[str, float]] = []

    def fit(self, x: torch.Tensor, progress: Callable[[int, str], None] | None = None) -> RQVAE:
        cfg = self.config
        x = x.to(torch.float32)
        torch.manual_seed(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        self.net = net = RQVAENet(x.shape[1], self.levels, self.codebook_size, cfg)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        n, bs = len(x), min(cfg.batch_size, len(x))
        for epoch in range(cfg.epochs):
            net.train()
            perm = torch.randperm(n, generator=gen)
            if epoch == 0 and cfg.kmeans_init:
                # the first batch is big enough to seed every code
                self._kmeans_init(x[perm[:max(bs, min(n, 16 * self.codebook_size))]])
            usage = torch.zeros(self.levels, self.codebook_size, dtype=torch.int64)
            totals = torch.zeros(3)
            for start in range(0, n, bs):
                xb = x[perm[start:start + bs]]
                recon, codes, vq_loss, _ = net(xb)
                rec_loss = F.mse_loss(recon, xb)
                loss = rec_loss + vq_loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                for level in range(self.levels):
                    usage[level] += torch.bincount(codes[:, level], minlength=self.codebook_size)
                totals += torch.tensor([loss.item(), rec_loss.item(), vq_loss.item()]) * len(xb)
            dead = int((usage == 0).sum())
            self.history.append({"epoch": epoch + 1, "loss": float(totals[0]) / n, "recon": float(totals[1]) / n,
                                 "vq": float(totals[2]) / n, "dead_codes": dead})
            if cfg.dead_code_restart and dead and epoch < cfg.epochs - 1:
                self._restart(x, usage, gen)
            if progress is not None:
                progress(1, f"rq-vae epoch {epoch + 1} recon {float(totals[1]) / n:.4f} dead {dead}")
        net.eval()
        return self

    @torch.no_grad()
    def _kmeans_init(self, xb: torch.Tensor) -> None:
        r = self.net.encoder(xb)
        for level in range(self.levels):
            res = kmeans(r, self.codebook_size, iters=self.kmeans_iters, seed=self.seed + level)
            self.net.codebooks[level] = res.centroids
            r = r - res.centroids[res.labels]

    @torch.no_grad()
    def _restart(self, x: torch.Tensor, usage: torch.Tensor, gen: torch.Generator) -> None:
        sample = x[torch.randperm(len(x), generator=gen)[:min(len(x), self.config.batch_size)]]
        _, _, _, residuals = self.net.quantize(self.net.encoder(sample))
        for level in range(self.levels):
            dead = torch.nonzero(usage[level] == 0).flatten()
            if len(dead):
                pick = torch.randint(len(sample), (len(dead),), generator=gen)
                self.net.codebooks[level, dead] = residuals[level, pick]

    @torch.no_grad()
    def latent(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.encoder(x.to(torch.float32))

    @property
    def codebooks(self) -> torch.Tensor:
        return self.net.codebooks.detach()

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return residual_encode(self.latent(x), self.codebooks)[0]

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.net.decoder(residual_decode(codes, self.codebooks))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.net.state_dict().items()}

    def load_tensors(self, tensors: dict[str, torch.Tensor], in_dim: int) -> RQVAE:
        self.net = RQVAENet(in_dim, self.levels, self.codebook_size, self.config)
        self.net.load_state_dict(tensors)
        self.net.eval()
        return self
