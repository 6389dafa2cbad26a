"""Magnitude pruning as in tfmot's ConstantSparsity schedule (the paper's setting).

Conv and dense kernels only (not biases, not BatchNorm); the target sparsity holds from step 0; the
masks are recomputed from the weights' magnitudes every ``frequency`` optimiser steps, and the weights
are re-zeroed after every step. Pruned weights get no gradient through the mask, but Adam's momentum
can still move them, so a weight can come back at a mask update, as in tfmot. After fine-tuning the
zeros are simply part of the weights: nothing of the pruning machinery is left in the model.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
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

# ----------------------------------------------------------------------------- recipe step

class PruneParams(StepParams):
    sparsity: float = Field(..., gt=0, lt=1, description="fraction of each kernel set to zero")
    scope: Literal["per_tensor", "global"] = "per_tensor"
    frequency: int = Field(32, ge=1, description="optimiser steps between mask updates")
    epochs: int = Field(2, ge=0, description="fine-tuning epochs")


@STEPS.register("prune")
class PruneStep(TrainStep):
    name, Params, level = "prune", PruneParams, "sparsity"
    example = {"sparsity": 0.5, "epochs": 1}

    def short(self) -> str:
        p = self.params
        return f"prune {p.sparsity:.0%}" + (" global" if p.scope == "global" else "") + self._extras("sparsity", "scope")

    def apply(self, model: nn.Module, ctx: TuneContext) -> None:
        p = self.params
        pruner = MagnitudePruner(model, p.sparsity, p.frequency, p.scope)
        if p.epochs:
            ctx.fine_tune(model, p.epochs, pruner.after_step)
        pruner.finalize()
