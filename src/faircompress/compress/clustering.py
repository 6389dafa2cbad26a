"""Weight clustering as in tfmot's cluster_weights (the paper's setting).

Each conv and dense kernel gets N trainable centroids, initialised linearly between the tensor's min
and max (k-means++ as an option). Every forward pass assigns each weight to its nearest centroid and
uses ``c[idx] + (w - w.detach())``: the centroid gradient is the sum of its weights' gradients, and
the latent weights get the gradient straight through, so assignments can change as they move.
Stripping replaces each kernel by ``c[idx]``: at most N distinct values (plus exact zeros with
``preserve_sparsity``), and no parametrization left in the model.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils import parametrize

from .pruning import prunable
from .recipes import STEPS, Step, StepParams, TuneContext


def linear_init(w: torch.Tensor, n: int) -> torch.Tensor:
    return torch.linspace(float(w.min()), float(w.max()), n, device=w.device)


def kmeans_pp_init(w: torch.Tensor, n: int, generator: torch.Generator, sample: int = 20000) -> torch.Tensor:
    """k-means++ seeding on (a sample of) the weights, then a few Lloyd steps; 1-D, vectorised."""
    flat = w.detach().flatten()
    if flat.numel() > sample:
        flat = flat[torch.randint(flat.numel(), (sample,), generator=generator, device=flat.device)]
    cents = flat[torch.randint(flat.numel(), (1,), generator=generator, device=flat.device)]
    for _ in range(n - 1):
        d2 = (flat[:, None] - cents[None]).pow(2).min(1).values
        if float(d2.sum()) == 0:
            break
        cents = torch.cat([cents, flat[torch.multinomial(d2, 1, generator=generator)]])
    cents = torch.sort(cents).values
    if len(cents) < n:  # fewer distinct weights than clusters: pad between min and max
        cents = torch.sort(torch.cat([cents, linear_init(flat, n - len(cents))])).values
    for _ in range(10):
        idx = nearest(flat, cents)
        sums = torch.zeros_like(cents).index_add_(0, idx, flat)
        counts = torch.zeros_like(cents).index_add_(0, idx, torch.ones_like(flat))
        cents = torch.where(counts > 0, sums / counts.clamp(min=1), cents)
        cents = torch.sort(cents).values
    return cents


def nearest(w: torch.Tensor, cents: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid for each weight; memory O(numel), not O(numel x N)."""
    order = torch.argsort(cents)
    sorted_c = cents[order]
    mids = (sorted_c[1:] + sorted_c[:-1]) / 2
    return order[torch.bucketize(w.contiguous(), mids)]


class _GatherStraightThrough(torch.autograd.Function):
    """c[nearest(w)] whose backward passes the gradient straight to ``w`` and sums it per centroid.

    Same values and gradients as ``c[idx] + (w - w.detach())``, without autograd's scatter-add for
    the indexing (slow on CPU for millions of weights) or the extra elementwise ops."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        idx = nearest(w.detach(), c.detach())
        ctx.save_for_backward(idx)
        ctx.k = c.numel()
        return c[idx]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (idx,) = ctx.saved_tensors
        grad_c = torch.bincount(idx.reshape(-1), weights=grad.reshape(-1).float(), minlength=ctx.k)
        return grad, grad_c.to(grad.dtype)


class Clustered(nn.Module):
    """Parametrization: weight = centroids[nearest(latent)] with straight-through gradients."""

    def __init__(self, centroids: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        super().__init__()
        self.centroids = nn.Parameter(centroids.clone())
        self.register_buffer("keep", keep)  # preserve_sparsity: where the weight was non-zero

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        out = _GatherStraightThrough.apply(w, self.centroids)
        return out if self.keep is None else out * self.keep


def cluster_model(model: nn.Module, clusters: int, init: str = "linear", preserve_sparsity: bool = False, seed: int = 0) -> nn.Module:
    """Attach a clustering parametrization to every conv and dense kernel (in place)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for m in model.modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        w = m.weight.detach()
        keep = (w != 0) if preserve_sparsity else None
        source = w[keep] if keep is not None and keep.any() else w
        cents = linear_init(source, clusters) if init == "linear" else kmeans_pp_init(source.cpu(), clusters, gen).to(w.device)
        parametrize.register_parametrization(m, "weight", Clustered(cents, keep))
    return model


def strip_clustering(model: nn.Module) -> nn.Module:
    """Bake ``c[idx]`` into plain weights and remove the parametrizations (in place)."""
    for m in model.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return model


def distinct_values(model: nn.Module) -> dict[str, int]:
    return {k: int(torch.unique(w.detach()).numel()) for k, w in prunable(model).items()}

# ----------------------------------------------------------------------------- recipe step

class ClusterParams(StepParams):
    clusters: int = Field(..., ge=2, le=65536, description="centroids per kernel")
    init: Literal["linear", "kmeans++"] = "linear"
    preserve_sparsity: bool = Field(False, description="keep zeros (e.g. from pruning) at zero")
    epochs: int = Field(3, ge=0, description="fine-tuning epochs")


@STEPS.register("cluster")
class ClusterStep(Step):
    name, stage, Params = "cluster", "train", ClusterParams
    example = {"clusters": 8, "epochs": 1}

    def short(self) -> str:
        p = self.params
        return f"cluster {p.clusters}" + self._extras("clusters")

    def apply(self, model: nn.Module, ctx: TuneContext) -> None:
        p = self.params
        cluster_model(model, p.clusters, p.init, p.preserve_sparsity, seed=ctx.seed)
        if p.epochs:
            ctx.fine_tune(model, p.epochs, None)
        strip_clustering(model)
