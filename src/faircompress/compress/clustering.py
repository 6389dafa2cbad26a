"""Weight clustering as in tfmot's cluster_weights (the paper's setting).

Each conv and dense kernel gets N trainable centroids, initialised linearly between the tensor's min
and max (k-means++ as an option). Every forward pass assigns each weight to its nearest centroid and
uses ``c[idx] + (w - w.detach())``: the centroid gradient is the sum of its weights' gradients, and
the latent weights get the gradient straight through, so assignments can change as they move.
Stripping replaces each kernel by ``c[idx]``: at most N distinct values (plus exact zeros with
``preserve_sparsity``), and no parametrization left in the model.
"""
from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn
from torch.nn.utils import parametrize

from .pruning import named_layer, prunable
from ..mitigate import FINE_TUNE_DESCRIPTION, FineTuneOption, check_tunes, describe, family
from ..mitigate import check_data as check_fine_tune_data
from .recipes import STEPS, StepParams, TrainStep, TuneContext


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


_GRID_MAX = 1 << 16  # lookup cells; beyond this (centroids nearly merged) fall back to bucketize


def nearest(w: torch.Tensor, cents: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid for each weight (int32, shape of ``w``); memory O(numel).

    Runs on every forward pass of a clustered model, so it avoids ``bucketize`` (a binary search per
    weight): a uniform grid whose cells are narrower than the smallest gap between decision
    boundaries holds at most one boundary per cell, so a cell lookup plus one comparison finds the
    bucket. Weights within float rounding of a boundary may go to either side (an exact tie).
    The indices are int32: gathering with int64 ones was ~5x slower on a CPU (a 512x512x3x3 kernel:
    31 ms against 6.5 ms), and no kernel has 2**31 centroids."""
    flat = w.reshape(-1)
    sorted_c, order = torch.sort(cents)
    if bool((order == torch.arange(len(order), device=order.device)).all()):
        order = None
    mids = (sorted_c[1:] + sorted_c[:-1]) / 2
    idx = _bucket_grid(flat, mids) if len(mids) > 1 else None
    if idx is None:
        idx = torch.bucketize(flat.contiguous(), mids, out_int32=True)
    if order is not None:
        idx = order.int().index_select(0, idx)
    return idx.view(w.shape)


def _bucket_grid(flat: torch.Tensor, mids: torch.Tensor) -> torch.Tensor | None:
    lo, hi = float(mids[0]), float(mids[-1])
    gap = float((mids[1:] - mids[:-1]).min())
    if not gap > 0 or (hi - lo) / gap > _GRID_MAX / 2:
        return None
    h = gap / 2
    cells = int(math.ceil((hi - lo) / h)) + 2  # cell g starts at lo - h + g*h; the last starts >= hi
    edges = (lo - h) + h * torch.arange(cells, dtype=torch.float64, device=mids.device)
    first = torch.bucketize(edges, mids.double(), right=True, out_int32=True)  # bucket of each cell's left edge
    above = torch.cat([mids, mids.new_tensor([math.inf])]).index_select(0, first)  # next boundary
    cell = torch.add(flat.new_tensor(1.0 - lo / h), flat, alpha=1.0 / h).clamp_(0, cells - 1).int()
    idx = first.index_select(0, cell)
    return idx.add_(flat >= above.index_select(0, cell))


def _memory_order(t: torch.Tensor) -> list[int]:
    """Dimension order in which ``t`` is laid out in memory (e.g. NHWC for channels_last)."""
    return sorted(range(t.dim()), key=lambda d: (-t.stride(d), d))


class _GatherStraightThrough(torch.autograd.Function):
    """c[nearest(w)] whose backward passes the gradient straight to ``w`` and sums it per centroid.

    Same values and gradients as ``c[idx] + (w - w.detach())``, without autograd's scatter-add for
    the indexing (slow on CPU for millions of weights) or the extra elementwise ops. The result keeps
    the latent's memory layout: a channels_last kernel must stay channels_last, or the convolutions
    (and the pooling after them) fall onto much slower paths."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        order = _memory_order(w)
        latent = w.detach().permute(order)
        dense = latent.is_contiguous()
        if not dense:  # e.g. a strided view: work in logical order, return a contiguous weight
            order, latent = list(range(w.dim())), w.detach().contiguous()
        idx = nearest(latent, c.detach())  # contiguous, elements in w's memory order
        ctx.save_for_backward(idx)
        ctx.order, ctx.k = order, c.numel()
        values = c.index_select(0, idx.reshape(-1))
        return values.as_strided(w.shape, w.stride()) if dense else values.view(w.shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (idx,) = ctx.saved_tensors
        g = grad.permute(ctx.order).reshape(-1)  # same element order as idx
        grad_c = torch.bincount(idx.reshape(-1), weights=g.float(), minlength=ctx.k)
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


def cluster_model(model: nn.Module, clusters: int, init: str = "linear", preserve_sparsity: bool = False, seed: int = 0,
                  skip: tuple[str, ...] = ()) -> nn.Module:
    """Attach a clustering parametrization to every conv and dense kernel (in place), but those
    ``skip`` names (as `prunable` names them, or 'first' / 'last')."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    names = list(prunable(model))
    skipped = {named_layer(k, names) for k in skip}
    unknown = sorted(skipped - set(names))
    if unknown:
        raise ValueError(f"cluster skip: no layer {', '.join(map(repr, unknown))} in this model; its layers are {', '.join(names)} "
                         "(or first, last)")
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)) or f"{name}.weight" in skipped:
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
    skip: list[str] = Field(default_factory=list, description="kernels left unclustered: names as `prunable` gives them, "
                            "or first / last (the first and last layers; tfmot clusters both by default)")
    fine_tune: FineTuneOption = Field(None, description=FINE_TUNE_DESCRIPTION)

    @model_validator(mode="after")
    def _tunes(self) -> "ClusterParams":
        check_tunes(self.fine_tune, self.epochs)
        return self


@STEPS.register("cluster")
class ClusterStep(TrainStep):
    name, Params, level = "cluster", ClusterParams, "clusters"
    example = {"clusters": 8, "epochs": 1}
    quiet_defaults = ("skip", "fine_tune")  # added later: older recipes keep their keys and run ids

    def technique(self) -> str:
        return family("cluster", self.params.fine_tune)

    def check_data(self, data: Any, rows: Any) -> None:
        """The fine-tuning's objective may need group labels of the training images."""
        check_fine_tune_data(self.params.fine_tune, data, rows)

    def short(self) -> str:
        p = self.params
        return f"cluster {p.clusters}" + self._extras("clusters", "fine_tune") + describe(p.fine_tune)

    def apply(self, model: nn.Module, ctx: TuneContext) -> None:
        p = self.params
        cluster_model(model, p.clusters, p.init, p.preserve_sparsity, seed=ctx.seed, skip=tuple(p.skip))
        if p.epochs:
            ctx.fine_tune(model, p.epochs, None, **({"objective": p.fine_tune} if p.fine_tune else {}))
        strip_clustering(model)
