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
- ``fairgrape``: Lin et al.'s fairness-aware pruning (``attribute`` names the groups): per kernel,
  the weights kept so that each group keeps its share of the kernel's Taylor importance, in
  ``rounds`` re-scored rounds; the final mask is fixed through fine-tuning. See `compress/fairgrape.py`.

Per-layer sparsities (``sparsity: {layer: fraction, default: fraction}``, layer names as `prunable`
gives them; or ``from_sensitivity``, chosen from the stored layer-wise sensitivity scan when the study
starts, see `compress/layerwise.py`): each kernel pruned per tensor at its own level, layers not listed
at ``default`` (0: left dense). Every method above works per layer the same way.

After fine-tuning the zeros are simply part of the weights: nothing of the pruning machinery is left
in the model.
"""
from __future__ import annotations

from typing import Any, Callable, Literal, Union

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from ..mitigate import FINE_TUNE_DESCRIPTION, FineTuneOption, check_tunes, describe, family
from ..mitigate import check_data as check_fine_tune_data
from .fairgrape import fairgrape_prune, group_codes
from .recipes import STEPS, StepParams, TrainStep, TuneContext


def prunable(model: nn.Module) -> dict[str, nn.Parameter]:
    """The kernels pruning and clustering act on: conv and dense weights."""
    return {f"{name}.weight": m.weight for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


Sparsity = Union[float, dict[str, float]]  # one level for every kernel, or each kernel's own (missing: 0)


def _level(sparsity: Sparsity, name: str) -> float:
    return sparsity.get(name, 0.0) if isinstance(sparsity, dict) else sparsity


def magnitude_masks(weights: dict[str, torch.Tensor], sparsity: Sparsity, scope: str = "per_tensor") -> dict[str, torch.Tensor]:
    """Boolean keep-masks zeroing exactly ``round(sparsity * n)`` smallest-magnitude entries.

    per_tensor: each tensor on its own (tfmot's default); global: one ranking across all tensors.
    Ties are broken by position, so the count is exact. ``sparsity`` may give each tensor its own
    level ({name: level}, per tensor only; a tensor not named keeps every entry).
    """
    return _masks(weights, sparsity, scope, lambda w, level: _keep_largest(w.abs(), level))


def _masks(weights: dict[str, torch.Tensor], sparsity: Sparsity, scope: str,
           keep: Callable[[torch.Tensor, float], torch.Tensor]) -> dict[str, torch.Tensor]:
    """``keep(flat weights, level)`` per tensor, or once over all tensors together (global), as masks."""
    if scope == "per_tensor":
        return {k: keep(w.detach().flatten(), _level(sparsity, k)).view_as(w) for k, w in weights.items()}
    assert not isinstance(sparsity, dict), "per-layer sparsities are per tensor"
    kept = keep(torch.cat([w.detach().flatten() for w in weights.values()]), sparsity)
    out, i = {}, 0
    for k, w in weights.items():
        out[k] = kept[i : i + w.numel()].view_as(w)
        i += w.numel()
    return out


def _keep_largest(mag: torch.Tensor, sparsity: float) -> torch.Tensor:
    n_prune = int(round(sparsity * mag.numel()))
    keep = torch.ones_like(mag, dtype=torch.bool)
    if n_prune:
        keep[torch.topk(mag, n_prune, largest=False, sorted=False).indices] = False
    return keep


def random_masks(weights: dict[str, torch.Tensor], sparsity: Sparsity, scope: str = "per_tensor",
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Keep-masks dropping, in each tensor, as many entries as `magnitude_masks` would (per tensor, or
    the global ranking's per-tensor counts), chosen uniformly at random."""
    counts = {k: int((~m).sum()) for k, m in magnitude_masks(weights, sparsity, scope).items()}
    return random_masks_counted(weights, counts, generator)


def random_masks_counted(weights: dict[str, torch.Tensor], counts: dict[str, int], generator: torch.Generator | None = None,
                         among_nonzero: bool = False) -> dict[str, torch.Tensor]:
    """Keep-masks dropping ``counts[name]`` entries of each tensor, chosen uniformly at random (with
    ``among_nonzero``, among its non-zero entries only, and its zeros dropped too)."""
    out = {}
    for k, w in weights.items():
        alive = (w.detach() != 0).flatten().cpu() if among_nonzero else torch.ones(w.numel(), dtype=torch.bool)
        where = torch.nonzero(alive).flatten()
        keep = alive.clone()
        keep[where[torch.randperm(len(where), generator=generator)[: counts[k]]]] = False
        out[k] = keep.view_as(w).to(w.device)
    return out


def percentile_masks(weights: dict[str, torch.Tensor], percent: Sparsity, scope: str = "per_tensor") -> dict[str, torch.Tensor]:
    """Keep-masks dropping the ``round(percent * nonzeros)`` smallest-magnitude non-zero entries of
    each tensor (global: of all tensors together), and the zeros: existing zeros do not count.
    ``percent`` may give each tensor its own ({name: percent}, per tensor only)."""
    return _masks(weights, percent, scope, _keep_largest_nonzero)


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

    def __init__(self, model: nn.Module, sparsity: Sparsity, frequency: int = 32, scope: str = "per_tensor") -> None:
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

METHODS = ("magnitude", "random", "percentile", "fairgrape")
FAIRGRAPE_ONLY = ("attribute", "rounds", "round_epochs")  # parameters of fairgrape pruning alone
DEFAULT_LAYER = "default"  # in a per-layer sparsity mapping: the level of every layer not named


class FromSensitivity(StepParams):
    """Per-layer sparsities chosen from the study's layer-wise sensitivity scan (our rule; see
    `compress/layerwise.py`): per layer, the largest scanned level up to which every level's accuracy
    drop on the validation split (and, with ``gaps``, each attribute's gap increase) is at most ``tolerance``."""

    tolerance: float = Field(..., ge=0, lt=1, description="largest accepted drop, as a fraction of accuracy (0.01 = 1 pp)")
    gaps: bool = Field(False, description="also hold each attribute's gap increase (pp as a fraction) under the tolerance")


class PruneParams(StepParams):
    sparsity: Union[float, dict[str, float], None] = Field(
        None, description="fraction of each kernel set to zero (percentile: of its non-zeros); or per layer "
                          "{layer: fraction, default: fraction}, layers as `prunable` names them (not named: default, else dense)")
    scope: Literal["per_tensor", "global"] = "per_tensor"
    frequency: int = Field(32, ge=1, description="optimiser steps between mask updates (magnitude only)")
    epochs: int = Field(2, ge=0, description="fine-tuning epochs")
    method: Literal["magnitude", "random", "percentile", "fairgrape"] = Field("magnitude", description="which weights go")
    attribute: str | None = Field(None, description="fairgrape: the attribute whose groups' importance each kernel keeps in proportion")
    rounds: int = Field(5, ge=1, le=100, description="fairgrape: pruning rounds, re-scored between them (1: one-shot)")
    round_epochs: int = Field(0, ge=0, description="fairgrape: fine-tuning epochs between rounds (the authors retrain there)")
    from_sensitivity: FromSensitivity | None = Field(
        None, description="per-layer sparsities from the stored sensitivity scan (`faircompress sensitivity` first); "
                          "faircompress writes them into `sparsity` when the study starts")
    overall: float | None = Field(None, ge=0, le=1, description="per-layer sparsities: the share of all prunable weights "
                                  "they zero (weighted by size); derived from the model when the study starts, not given")
    fine_tune: FineTuneOption = Field(None, description=FINE_TUNE_DESCRIPTION)

    @field_validator("sparsity")
    @classmethod
    def _fractions(cls, v: Union[float, dict[str, float], None]) -> Union[float, dict[str, float], None]:
        if isinstance(v, dict):
            if not v:
                raise ValueError("a per-layer mapping needs at least one layer (or default)")
            bad = {k: x for k, x in v.items() if not 0 <= x < 1}
            if bad:
                raise ValueError(f"each layer's fraction must be at least 0 and below 1: {bad}")
        elif v is not None and not 0 < v < 1:
            raise ValueError(f"must be above 0 and below 1, not {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "PruneParams":
        if self.method != "magnitude" and self.frequency != type(self).model_fields["frequency"].default:
            raise ValueError(f"frequency: only magnitude pruning updates its masks; {self.method} pruning's mask is fixed")
        if self.sparsity is None and self.from_sensitivity is None:
            raise ValueError("sparsity: required (a fraction, or per layer {layer: fraction}), unless from_sensitivity chooses it")
        if self.from_sensitivity is not None and isinstance(self.sparsity, float):
            raise ValueError("give sparsity or from_sensitivity, not both")
        if self.per_layer and self.scope == "global":
            raise ValueError("scope: global ranks all layers together; per-layer sparsities are per tensor")
        if self.overall is not None and not self.per_layer:
            raise ValueError("overall: only per-layer sparsities have one (it is derived, not given)")
        check_tunes(self.fine_tune, self.epochs + ((self.rounds - 1) * self.round_epochs if self.method == "fairgrape" else 0))
        self._fairgrape_consistent()
        return self

    def _fairgrape_consistent(self) -> None:
        if self.method != "fairgrape":
            fields = type(self).model_fields
            for name in FAIRGRAPE_ONLY:
                if getattr(self, name) != fields[name].default:
                    raise ValueError(f"{name}: only fairgrape pruning has it, not {self.method} pruning")
            return
        if self.attribute is None:
            raise ValueError("attribute: required with method fairgrape (the attribute whose groups it balances, e.g. gender)")
        if self.scope == "global":
            raise ValueError("scope: fairgrape keeps each group's share per kernel; global ranking is not supported")

    @property
    def per_layer(self) -> bool:
        return isinstance(self.sparsity, dict) or self.from_sensitivity is not None

    def layer_sparsities(self, names: list[str]) -> dict[str, float]:
        """Each of ``names`` (the model's prunable layers) with its level; a name the mapping gives
        that the model lacks is a `ValueError` naming the valid ones."""
        if not isinstance(self.sparsity, dict):
            if self.from_sensitivity is not None:
                raise ValueError(UNRESOLVED)
            return {n: float(self.sparsity or 0.0) for n in names}
        given = {named_layer(k, names): v for k, v in self.sparsity.items() if k != DEFAULT_LAYER}
        unknown = [k for k in given if k not in names]
        if unknown:
            raise ValueError(unknown_layers(unknown, names))
        rest = self.sparsity.get(DEFAULT_LAYER, 0.0)
        return {n: float(given.get(n, rest)) for n in names}


FIRST_LAST = ("first", "last")  # the first and last prunable layers, whatever the model calls them (tfmot prunes both by default)


def named_layer(key: str, names: list[str]) -> str:
    """A layer key of a recipe as the model names it: 'first' and 'last' are its first and last prunable layers."""
    return {"first": names[0], "last": names[-1]}.get(key, key) if names else key


UNRESOLVED = ("prune from_sensitivity: no per-layer sparsities chosen yet: they come from the study's layer-wise "
              "sensitivity scan; run `faircompress sensitivity CONFIG` first")


def unknown_layers(unknown: list[str], names: list[str]) -> str:
    """One line: the layer names a recipe gives that the model does not have, and those it has."""
    return (f"prune sparsity: no layer {', '.join(map(repr, unknown))} in this model; its prunable layers are "
            f"{', '.join(names)} (or default, first, last)")


def overall_sparsity(levels: dict[str, float], sizes: dict[str, int]) -> float:
    """The share of all prunable weights that per-layer levels zero, weighted by size (counts as
    magnitude pruning rounds them)."""
    total = sum(sizes.values())
    return sum(int(round(levels.get(k, 0.0) * n)) for k, n in sizes.items()) / total if total else 0.0


@STEPS.register("prune")
class PruneStep(TrainStep):
    name, Params, level = "prune", PruneParams, "sparsity"
    example = {"sparsity": 0.5, "epochs": 1}
    quiet_defaults = ("method", "from_sensitivity", "overall", "fine_tune", *FAIRGRAPE_ONLY)  # added later: older recipes keep their keys and run ids

    def technique(self) -> str:
        """'prune' for magnitude pruning; 'prune-random', 'prune-percentile', 'prune-fairgrape' are their own families
        in the report (their own curves beside magnitude's), and so are per-layer sparsities
        ('prune-layerwise', 'prune-sensitivity' when chosen from the scan)."""
        p = self.params
        base = "prune" if p.method == "magnitude" else f"prune-{p.method}"
        return family(base + ("-sensitivity" if p.from_sensitivity is not None else "-layerwise" if p.per_layer else ""), p.fine_tune)

    def short(self) -> str:
        p = self.params
        method = ("" if p.method == "magnitude" else f" {p.method}") + (f" {p.attribute}" if p.attribute else "")
        extras = self._extras("sparsity", "scope", "method", "from_sensitivity", "overall", "fine_tune", "attribute") + describe(p.fine_tune)
        if p.from_sensitivity is not None:
            fs = p.from_sensitivity
            inner = f"tol {100 * fs.tolerance:g}%" + (", gaps" if fs.gaps else "") + (f", {p.overall:.0%}" if p.overall is not None else "")
            return f"prune from sensitivity ({inner}){method}{extras}"
        if p.per_layer:
            return "prune per-layer" + (f" ({p.overall:.0%})" if p.overall is not None else "") + method + extras
        return f"prune {p.sparsity:.0%}" + method + (" global" if p.scope == "global" else "") + extras

    def level_value(self) -> float | None:
        """The sparsity; for per-layer sparsities the overall share of prunable weights they zero
        (None until the study derives it)."""
        p = self.params
        return p.overall if p.per_layer else float(p.sparsity)  # type: ignore[arg-type]

    def apply(self, model: nn.Module, ctx: TuneContext) -> None:
        p = self.params
        weights = prunable(model)
        sparsity = p.layer_sparsities(list(weights)) if p.per_layer else p.sparsity
        if p.method == "magnitude":
            pruner = MagnitudePruner(model, sparsity, p.frequency, p.scope)
        elif p.method == "random":
            gen = torch.Generator(device="cpu").manual_seed(ctx.seed)
            pruner = FixedMaskPruner(model, random_masks(weights, sparsity, p.scope, gen))
        elif p.method == "fairgrape":
            pruner = FixedMaskPruner(model, self._fairgrape(model, ctx, weights, sparsity))
        else:
            pruner = FixedMaskPruner(model, percentile_masks(weights, sparsity, p.scope))
        if p.epochs:
            ctx.fine_tune(model, p.epochs, pruner.after_step, **({"objective": p.fine_tune} if p.fine_tune else {}))
        pruner.finalize()
        if p.per_layer:  # what each layer ended at, in the run's details
            found = pruner.sparsity_report()
            sizes = {k: w.numel() for k, w in prunable(model).items()}
            zeros = sum(found[k] * n for k, n in sizes.items())
            ctx.details["prune"] = {**ctx.details.get("prune", {}), "sparsity": found, "overall": zeros / sum(sizes.values()) if sizes else 0.0}

    def check_data(self, data: Any, rows: Any) -> None:
        """fairgrape needs the training images' groups of its attribute; so may the fine-tuning's objective."""
        if self.params.method == "fairgrape":
            group_codes(data, self.params.attribute, rows)  # type: ignore[arg-type]
        check_fine_tune_data(self.params.fine_tune, data, rows)

    def _fairgrape(self, model: nn.Module, ctx: TuneContext, weights: dict[str, nn.Parameter], sparsity: Sparsity) -> dict[str, torch.Tensor]:
        """The fixed masks of fairgrape's rounds (fine-tuned between them with ``round_epochs``); the rounds'
        record (each group's retained share of its importance) in ``details['prune']['fairgrape']``."""
        p = self.params
        levels = {k: _level(sparsity, k) for k in weights}
        objective = {"objective": p.fine_tune} if p.fine_tune else {}

        def between(masks: dict[str, torch.Tensor]) -> None:
            if p.round_epochs:
                ctx.fine_tune(model, p.round_epochs, FixedMaskPruner(model, masks).after_step, **objective)

        masks, record = fairgrape_prune(model, lambda: prunable(model), levels, p.attribute, p.rounds, ctx, between)  # type: ignore[arg-type]
        ctx.details["prune"] = {**ctx.details.get("prune", {}), "fairgrape": record}
        return masks
