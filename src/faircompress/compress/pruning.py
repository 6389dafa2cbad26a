"""Pruning of conv and dense kernels (not biases, not BatchNorm), three ways (``method``):

- ``magnitude`` (the default): as in tfmot's ConstantSparsity schedule (the paper's setting). The
  target sparsity holds from step 0; the masks are recomputed from the weights' magnitudes every
  ``frequency`` optimiser steps, and the weights are re-zeroed after every step. Pruned weights get no
  gradient through the mask, but Adam's momentum can still move them, so a weight can come back at a
  mask update, as in tfmot. Zeros already in a kernel count toward its target: pruning a kernel with
  40 % zeros at 50 % zeroes 10 % more.
- ``random``: the control. Per kernel, exactly as many weights as magnitude pruning would remove
  (per tensor, or the per-kernel counts of the global ranking), chosen uniformly at random from the
  run's tuning seed. The mask is fixed through fine-tuning.
- ``percentile``: Dixit et al.'s rule for SFEW: per kernel, zero the weights whose magnitude is below
  the p-th percentile of the magnitudes that are still non-zero (zeros excluded from the count), so a
  kernel with zero share z ends at sparsity 1 - (1 - z)(1 - p) (40 % zeros at 50 %: 70 %); on a dense
  kernel it zeroes the same weights as magnitude. One-shot: the mask, existing zeros included, is fixed
  through fine-tuning (recomputing it would remove p % of the survivors again each time).

After fine-tuning the zeros are simply part of the weights: nothing of the pruning machinery is left
in the model.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from .recipes import STEPS, StepParams, TrainStep, TuneContext


def prunable(model: nn.Module) -> dict[str, nn.Parameter]:
    """The kernels pruning and clustering act on: conv and dense weights."""
    return {f"{name}.weight": m.weight for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float, scope: str = "per_tensor") -> dict[str, torch.Tensor]:
    """Boolean keep-masks zeroing exactly ``round(sparsity * n)`` smallest-magnitude entries.

    per_tensor: each tensor on its own (tfmot's default); global: one ranking across all tensors.
    Ties are broken by position, so the count is exact.
    """
    if scope == "per_tensor":
        return {k: _keep_largest(w.detach().abs().flatten(), sparsity).view_as(w) for k, w in weights.items()}
    flat = torch.cat([w.detach().abs().flatten() for w in weights.values()])
    keep = _keep_largest(flat, sparsity)
    out, i = {}, 0
    for k, w in weights.items():
        out[k] = keep[i : i + w.numel()].view_as(w)
        i += w.numel()
    return out


def _keep_largest(mag: torch.Tensor, sparsity: float) -> torch.Tensor:
    n_prune = int(round(sparsity * mag.numel()))
    keep = torch.ones_like(mag, dtype=torch.bool)
    if n_prune:
        keep[torch.topk(mag, n_prune, largest=False, sorted=False).indices] = False
    return keep


def random_masks(weights: dict[str, torch.Tensor], sparsity: float, scope: str = "per_tensor",
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Keep-masks dropping, in each tensor, as many entries as `magnitude_masks` would (per tensor, or
    the global ranking's per-tensor counts), chosen uniformly at random."""
    counts = {k: int((~m).sum()) for k, m in magnitude_masks(weights, sparsity, scope).items()}
    out = {}
    for k, w in weights.items():
        keep = torch.ones(w.numel(), dtype=torch.bool, device=w.device)
        keep[torch.randperm(w.numel(), generator=generator)[: counts[k]].to(w.device)] = False
        out[k] = keep.view_as(w)
    return out


def percentile_masks(weights: dict[str, torch.Tensor], percent: float, scope: str = "per_tensor") -> dict[str, torch.Tensor]:
    """Keep-masks dropping the ``round(percent * nonzeros)`` smallest-magnitude non-zero entries of
    each tensor (global: of all tensors together), and the zeros: existing zeros do not count."""
    if scope == "per_tensor":
        return {k: _keep_largest_nonzero(w.detach().flatten(), percent).view_as(w) for k, w in weights.items()}
    keep = _keep_largest_nonzero(torch.cat([w.detach().flatten() for w in weights.values()]), percent)
    out, i = {}, 0
    for k, w in weights.items():
        out[k] = keep[i : i + w.numel()].view_as(w)
        i += w.numel()
    return out


def _keep_largest_nonzero(w: torch.Tensor, percent: float) -> torch.Tensor:
    alive = w != 0
    n_prune = int(round(percent * int(alive.sum())))
    keep = alive.clone()
    if n_prune:
        mag = torch.where(alive, w.abs(), torch.full_like(w, float("inf")))  # zeros are never among the smallest
        keep[torch.topk(mag, n_prune, largest=False, sorted=False).indices] = False
    return keep


class MagnitudePruner:
    """Holds the masks during fine-tuning; call ``after_step`` after every optimiser step."""

    def __init__(self, model: nn.Module, sparsity: float, frequency: int = 32, scope: str = "per_tensor") -> None:
        self.model = model
        self.sparsity, self.frequency, self.scope = sparsity, frequency, scope
        self.masks = magnitude_masks(self.weights, sparsity, scope)
        self.apply()

    @property
    def weights(self) -> dict[str, nn.Parameter]:
        return prunable(self.model)  # looked up each time: moving a model may replace its parameters

    @torch.no_grad()
    def apply(self) -> None:
        for k, w in self.weights.items():
            if self.masks[k].device != w.device:  # built on the CPU; training may have moved the model since
                self.masks[k] = self.masks[k].to(w.device)
            w.mul_(self.masks[k])

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        if step % self.frequency == 0:
            self.masks = magnitude_masks(self.weights, self.sparsity, self.scope)
        self.apply()

    @torch.no_grad()
    def finalize(self) -> None:
        """Make the masks permanent for the weights the model holds now. After fine-tuning these are
        the selected epoch's, masked when they were saved; the masks may have changed since, so they
        are taken from these weights (their zeros are exactly the pruned ones), not re-applied."""
        self.masks = magnitude_masks(self.weights, self.sparsity, self.scope)
        self.apply()

    def sparsity_report(self) -> dict[str, float]:
        return {k: float((w == 0).float().mean()) for k, w in self.weights.items()}


class FixedMaskPruner(MagnitudePruner):
    """Holds given masks through fine-tuning unchanged (random and percentile pruning)."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
        self.model, self.masks = model, masks
        self.apply()

    def after_step(self, step: int) -> None:
        self.apply()

    def finalize(self) -> None:
        self.apply()  # the selected checkpoint was saved masked by these very masks: a no-op on it

# ----------------------------------------------------------------------------- recipe step

METHODS = ("magnitude", "random", "percentile")


class PruneParams(StepParams):
    sparsity: float = Field(..., gt=0, lt=1, description="fraction of each kernel set to zero (percentile: of its non-zeros)")
    scope: Literal["per_tensor", "global"] = "per_tensor"
    frequency: int = Field(32, ge=1, description="optimiser steps between mask updates (magnitude only)")
    epochs: int = Field(2, ge=0, description="fine-tuning epochs")
    method: Literal["magnitude", "random", "percentile"] = Field("magnitude", description="which weights go")

    @model_validator(mode="after")
    def _fixed_masks_have_no_frequency(self) -> "PruneParams":
        if self.method != "magnitude" and self.frequency != type(self).model_fields["frequency"].default:
            raise ValueError(f"frequency: only magnitude pruning updates its masks; {self.method} pruning's mask is fixed")
        return self


@STEPS.register("prune")
class PruneStep(TrainStep):
    name, Params, level = "prune", PruneParams, "sparsity"
    example = {"sparsity": 0.5, "epochs": 1}
    quiet_defaults = ("method",)  # added later: magnitude recipes keep their keys and run ids

    def technique(self) -> str:
        """'prune' for magnitude pruning; 'prune-random' and 'prune-percentile' are their own families
        in the report (their own curves beside magnitude's)."""
        return "prune" if self.params.method == "magnitude" else f"prune-{self.params.method}"

    def short(self) -> str:
        p = self.params
        return (f"prune {p.sparsity:.0%}" + ("" if p.method == "magnitude" else f" {p.method}")
                + (" global" if p.scope == "global" else "") + self._extras("sparsity", "scope", "method"))

    def apply(self, model: nn.Module, ctx: TuneContext) -> None:
        p = self.params
        if p.method == "magnitude":
            pruner = MagnitudePruner(model, p.sparsity, p.frequency, p.scope)
        elif p.method == "random":
            gen = torch.Generator(device="cpu").manual_seed(ctx.seed)
            pruner = FixedMaskPruner(model, random_masks(prunable(model), p.sparsity, p.scope, gen))
        else:
            pruner = FixedMaskPruner(model, percentile_masks(prunable(model), p.sparsity, p.scope))
        if p.epochs:
            ctx.fine_tune(model, p.epochs, pruner.after_step)
        pruner.finalize()
