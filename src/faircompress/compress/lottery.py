"""Lottery tickets (Frankle & Carbin 2019) in the one-shot form Dixit et al. ran on SFEW (sections 3.4-3.5).

Written ``{ticket: {sparsity: 0.5, control: none, epochs: null}}``. The step takes the trained model
(the baseline, or what earlier steps of the recipe made of it) and:

1. measures its test accuracy: the unpruned accuracy the ticket has to reach;
2. prunes ``sparsity`` of every conv and dense kernel by percentile (`pruning.percentile_masks`: per
   kernel, the smallest magnitudes among the non-zero weights; ``scope: global`` ranks all kernels
   together), on the trained weights;
3. resets the survivors to the weights training started from: the baseline's initial model rebuilt
   exactly as the baseline built it (the same seed, so the same random initialisation; a pretrained
   model's weights file, so the ImageNet weights). Every parameter (weights, biases, BatchNorm's scale
   and shift) and the normalisation layers' running statistics are reset; every other buffer is the
   trained model's (fixed maps, and state fitted to the training data such as pca_mlp's PCA, which the
   baseline fitted before training and which is not a weight);
4. retrains for ``epochs`` (null: the baseline's training epochs) with the training recipe (a fresh
   Adam, the same learning rate and plateau rule, best selection epoch kept), the mask held fixed: the
   pruned weights are zeroed again after every optimiser step, so they stay exactly zero.

Controls (``control``): ``random_mask`` prunes, per kernel, exactly as many weights as the ticket's mask
(chosen uniformly at random among the non-zero ones, from the run's tuning seed) and is reset and
retrained the same way (Dixit et al.'s control); ``random_init`` keeps the ticket's mask but resets the
survivors to a fresh random initialisation (the architecture built from scratch, without a weights file,
under a seed drawn from the run's tuning seed: Frankle & Carbin's control).

What is recorded (the run's details, ``steps.ticket``): the unpruned model's test accuracy, the
mask's per-kernel counts, what the weights were reset to, and per retraining epoch the training and
selection (validation) accuracy and the TEST accuracy the papers plot; the best test accuracy and its
epoch, the selected epoch and its test accuracy, and the first epoch whose test accuracy reaches the
unpruned model's (None when none does). Frankle & Carbin's iterative form (several rounds, rewinding
to an early training iteration) is not implemented.
"""
from __future__ import annotations

import hashlib
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from .pruning import FixedMaskPruner, percentile_masks, prunable, random_masks_counted
from .recipes import STEPS, StepParams, TrainStep, TuneContext
from .retraining import first_reaching, summarise  # noqa: F401  (moved there; imported from here too)

CONTROLS = ("none", "random_mask", "random_init")


def random_masks_like(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
                      generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Keep-masks pruning, in each tensor, as many of its non-zero entries as ``masks`` prunes, chosen
    uniformly at random among them; its zeros stay pruned (as percentile's masks keep them)."""
    counts = {k: int(((w.detach() != 0) & ~masks[k]).sum()) for k, w in weights.items()}
    return random_masks_counted(weights, counts, generator, among_nonzero=True)


def reset_keys(model: nn.Module) -> list[str]:
    """The state-dict entries a ticket resets: every parameter, and the running statistics of the
    normalisation layers (BatchNorm, InstanceNorm). The other buffers (fixed maps, state fitted to the
    training data) are not training's starting point and stay as the trained model has them."""
    keys = [k for k, _ in model.named_parameters()]
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._NormBase):
            keys += [f"{name}.{b}" if name else b for b, t in m.named_buffers(recurse=False) if t is not None]
    return keys


@torch.no_grad()
def reset_to(model: nn.Module, initial: nn.Module) -> list[str]:
    """Copy `reset_keys` from ``initial`` into ``model`` (in place); returns them. The two must be the
    same architecture (names and shapes), else a ValueError names the first difference."""
    target, source = model.state_dict(), initial.state_dict()
    keys = reset_keys(model)
    for k in keys:
        if k not in source or source[k].shape != target[k].shape:
            found = "missing" if k not in source else f"shape {tuple(source[k].shape)}"
            raise ValueError(f"ticket: the initial model does not match the trained one at {k!r} "
                             f"(trained {tuple(target[k].shape)}, initial {found})")
        target[k].copy_(source[k].to(target[k].device, target[k].dtype))
    return keys


def same_state(a: nn.Module, b: nn.Module) -> str | None:
    """The first state-dict entry where two models differ (None when they are equal)."""
    sa, sb = a.state_dict(), b.state_dict()
    if set(sa) != set(sb):
        return next(iter(sorted(set(sa) ^ set(sb))))
    return next((k for k in sa if sa[k].shape != sb[k].shape or not torch.equal(sa[k].cpu(), sb[k].cpu())), None)


def derived_seed(seed: int, what: str) -> int:
    """A seed of its own for ``what``, drawn from ``seed`` (never equal to it by construction of the hash)."""
    return int.from_bytes(hashlib.sha256(f"{what}:{seed}".encode()).digest()[:4], "little") & 0x7FFFFFFF


# ----------------------------------------------------------------------------- recipe step

class TicketParams(StepParams):
    sparsity: float = Field(..., gt=0, lt=1, description="share of each kernel's non-zero weights pruned (percentile)")
    control: Literal["none", "random_mask", "random_init"] = Field(
        "none", description="random_mask: random pruning with the ticket's per-kernel counts; random_init: the ticket's mask, "
        "survivors reset to a fresh random initialisation")
    epochs: int | None = Field(None, ge=1, description="retraining epochs (null: the baseline's training epochs)")
    scope: Literal["per_tensor", "global"] = Field("per_tensor", description="percentile per kernel (Dixit et al.) or over all kernels")


@STEPS.register("ticket")
class TicketStep(TrainStep):
    name, Params, level = "ticket", TicketParams, "sparsity"
    example = {"sparsity": 0.5, "epochs": 1}
    needs_initial = True  # resets to the baseline's initial weights: only a baseline the study trains has them

    def technique(self) -> str:
        """'ticket'; each control is its own family ('ticket-random_mask', 'ticket-random_init')."""
        return "ticket" if self.params.control == "none" else f"ticket-{self.params.control}"

    def short(self) -> str:
        p = self.params
        control = {"none": "", "random_mask": " random mask", "random_init": " random init"}[p.control]
        return f"ticket {p.sparsity:.0%}{control}" + (" global" if p.scope == "global" else "") + self._extras("sparsity", "control", "scope")

    def apply(self, model: nn.Module, ctx: TuneContext) -> None:
        p = self.params
        if ctx.initial_model is None:
            raise ValueError("ticket resets weights to the baseline's initial ones: this context gives none (TuneContext.initial_model)")
        epochs = p.epochs if p.epochs is not None else ctx.train_epochs
        if epochs is None:
            raise ValueError("ticket: epochs is null (the baseline's training epochs), but this context does not say how many "
                             "(TuneContext.train_epochs)")
        test_acc = (lambda m: ctx.accuracy(m, "test")) if ctx.accuracy is not None else None  # noqa: E731
        unpruned = test_acc(model) if test_acc else None
        weights = prunable(model)
        masks = percentile_masks(weights, p.sparsity, p.scope)
        record: dict[str, Any] = {"sparsity": p.sparsity, "control": p.control, "scope": p.scope, "epochs": epochs}
        if p.control == "random_mask":
            seed = ctx.seed
            masks = random_masks_like(weights, masks, torch.Generator().manual_seed(seed))
            record["mask_seed"] = seed
        if p.control == "random_init":
            seed = derived_seed(ctx.seed, "ticket random_init")
            build = lambda: ctx.initial_model(seed)  # noqa: E731
            record["init_seed"] = seed
            record["reset_to"] = f"a fresh random initialisation (from scratch, seed {seed})"
        else:
            build = ctx.initial_model
            record["reset_to"] = "the baseline's initial weights (what its training started from)"
        initial = build()
        again = same_state(initial, build())
        if again is not None:
            raise ValueError(f"ticket: the model's initial weights are not reproducible: two builds from one seed differ "
                             f"at {again!r} (does the model draw random numbers outside torch's seeded generator?)")
        record["reset"] = len(reset_to(model, initial))
        pruner = FixedMaskPruner(model, masks)
        record["layers"] = {k: {"size": int(m.numel()), "pruned": int((~m).sum())} for k, m in masks.items()}
        total = sum(int(m.numel()) for m in masks.values())
        record["pruned_share"] = sum(int((~m).sum()) for m in masks.values()) / total if total else 0.0
        record["unpruned_test_acc"] = unpruned
        record["start_test_acc"] = test_acc(model) if test_acc else None  # reset and masked, before retraining
        per_epoch: list[float] = []
        if test_acc:
            res = ctx.fine_tune(model, epochs, pruner.after_step, on_epoch=lambda log: per_epoch.append(test_acc(model)))
        else:
            res = ctx.fine_tune(model, epochs, pruner.after_step)
        pruner.finalize()
        history = list(getattr(res, "history", []) or [])
        record["per_epoch"] = [{"epoch": i + 1, "train_acc": h.train_acc, "sel_acc": h.sel_acc,
                                "test_acc": per_epoch[i] if i < len(per_epoch) else None} for i, h in enumerate(history)]
        record |= summarise(per_epoch, unpruned, getattr(res, "best_epoch", None))
        ctx.details[self.name] = record
        reached = record["reaches_unpruned_epoch"]
        ctx.note(f"{self.short()}: {record['pruned_share']:.1%} of the kernels' weights pruned, reset to {record['reset_to']}"
                 + (f"; best test accuracy {record['best_test_acc']:.1%} at epoch {record['best_test_epoch']}, unpruned "
                    f"{unpruned:.1%}, " + (f"first reached at epoch {reached}" if reached else "never reached")
                    if unpruned is not None and per_epoch else ""))
