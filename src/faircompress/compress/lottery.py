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

Frankle & Carbin's iterative form (``rounds: k``, usually with ``scope: global``): each round prunes
``sparsity`` of the weights still non-zero, resets the survivors and retrains, so after k rounds
1 - (1 - sparsity)^k are pruned (the variant's level). The variant with ``rounds: k`` is round k: it
takes the ticket of round k - 1 (the same parameters, ``rounds: k - 1``, no control; a study makes it
once, as its own variant or for this one, and keeps it), prunes it by percentile again (its zeros stay
pruned), resets and retrains. So one recipe per round (rounds 1..k) gives accuracy and fairness against
sparsity, each round measured like any variant. Controls branch off the ticket's chain at each round:
``random_init`` takes round k's mask; ``random_mask`` prunes, per kernel, as many weights as round k's
mask does in all, drawn among all its weights (round 1: among the non-zero ones, as above).
``rewind_epoch: e`` resets to the baseline's weights after e epochs of its training instead of its
initial ones (Frankle et al. 2019's late resetting; 0, the default, is the original ticket). The study
keeps no copy of the baseline's early weights, so the step replays them: the baseline's initial model,
fitted to the training images as it was, trained e epochs with its recipe and seed. The record says
whether the replay's per-epoch loss and accuracies equal the ones the baseline recorded (they do where
training is deterministic, as on a CPU in fp32); where they do not, a note says the rewind point is the
replay's. ``random_init`` still resets to a fresh initialisation.

What is recorded (the run's details, ``steps.ticket``): the unpruned model's test accuracy (round 1's,
for every round), the mask's per-kernel counts, what the weights were reset to, and per retraining
epoch the training and selection (validation) accuracy and the TEST accuracy the papers plot; the best
test accuracy and its epoch, the selected epoch and its test accuracy, and the first epoch whose test
accuracy reaches the unpruned model's (None when none does).
"""
from __future__ import annotations

import hashlib
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from .pruning import FixedMaskPruner, percentile_masks, prunable, random_masks_counted
from .recipes import STEPS, StepParams, TrainStep, TuneContext
from .retraining import accuracy_on_test, first_reaching, retrain_recorded, retraining_note, summarise  # noqa: F401  (moved there)

CONTROLS = ("none", "random_mask", "random_init")


def random_masks_like(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
                      generator: torch.Generator | None = None, among_nonzero: bool = True) -> dict[str, torch.Tensor]:
    """Keep-masks pruning, in each tensor, as many of its non-zero entries as ``masks`` prunes, chosen
    uniformly at random among them; its zeros stay pruned (as percentile's masks keep them).
    ``among_nonzero=False``: as many entries as ``masks`` prunes in all, drawn among all entries."""
    if among_nonzero:
        counts = {k: int(((w.detach() != 0) & ~masks[k]).sum()) for k, w in weights.items()}
    else:
        counts = {k: int((~masks[k]).sum()) for k in weights}
    return random_masks_counted(weights, counts, generator, among_nonzero=among_nonzero)


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


def overall_sparsity(per_round: float, rounds: int) -> float:
    """The share pruned after ``rounds`` rounds that each prune ``per_round`` of what is left (rounded
    to 12 places, so that one round's is its sparsity exactly)."""
    return round(1.0 - (1.0 - per_round) ** rounds, 12)


# ----------------------------------------------------------------------------- recipe step

class TicketParams(StepParams):
    sparsity: float = Field(..., gt=0, lt=1, description="share of each kernel's non-zero weights pruned (percentile), per round")
    control: Literal["none", "random_mask", "random_init"] = Field(
        "none", description="random_mask: random pruning with the ticket's per-kernel counts; random_init: the ticket's mask, "
        "survivors reset to a fresh random initialisation")
    epochs: int | None = Field(None, ge=1, description="retraining epochs (null: the baseline's training epochs)")
    scope: Literal["per_tensor", "global"] = Field("per_tensor", description="percentile per kernel (Dixit et al.) or over all kernels")
    rounds: int = Field(1, ge=1, le=50, description="Frankle & Carbin's iterative form: this variant is the ticket after this many "
                        "rounds of prune, reset, retrain (each round continues from the ticket of the round before)")
    rewind_epoch: int = Field(0, ge=0, description="reset survivors to the baseline's weights after this many epochs of its "
                              "training (0: its initial weights), replayed from its seed")


@STEPS.register("ticket")
class TicketStep(TrainStep):
    name, Params, level = "ticket", TicketParams, "sparsity"
    example = {"sparsity": 0.5, "epochs": 1}
    needs_initial = True  # resets to the baseline's initial weights: only a baseline the study trains has them
    quiet_defaults = ("rounds", "rewind_epoch")  # added later: recipes without them keep their ids

    def technique(self) -> str:
        """'ticket'; each control is its own family ('ticket-random_mask', 'ticket-random_init')."""
        return "ticket" if self.params.control == "none" else f"ticket-{self.params.control}"

    def level_value(self) -> float:
        """The share of the weights pruned after all rounds: 1 - (1 - sparsity)^rounds."""
        return overall_sparsity(self.params.sparsity, self.params.rounds)

    def short(self) -> str:
        p = self.params
        control = {"none": "", "random_mask": " random mask", "random_init": " random init"}[p.control]
        level = f"{p.sparsity:.0%}" if p.rounds == 1 else f"{self.level_value():.1%} ({p.rounds} rounds of {p.sparsity:.0%})"
        return (f"ticket {level}{control}" + (" global" if p.scope == "global" else "")
                + (f" rewind {p.rewind_epoch}" if p.rewind_epoch else "") + self._extras("sparsity", "control", "scope", "rounds", "rewind_epoch"))

    def apply(self, model: nn.Module, ctx: TuneContext) -> None:
        p = self.params
        epochs = _retraining_epochs(p, ctx)
        test_acc = accuracy_on_test(ctx)
        record: dict[str, Any] = {"sparsity": p.sparsity, "control": p.control, "scope": p.scope, "epochs": epochs,
                                  "rounds": p.rounds, "rewind_epoch": p.rewind_epoch}
        unpruned = self._continue_chain(model, ctx, record) if p.rounds > 1 else (test_acc(model) if test_acc else None)
        weights = prunable(model)
        masks = percentile_masks(weights, p.sparsity, p.scope)
        if p.control == "random_mask":
            masks = random_masks_like(weights, masks, torch.Generator().manual_seed(ctx.seed), among_nonzero=p.rounds == 1)
            record["mask_seed"] = ctx.seed
        record["reset"] = len(reset_to(model, self._reset_point(ctx, record)))
        pruner = FixedMaskPruner(model, masks)
        record["layers"] = {k: {"size": int(m.numel()), "pruned": int((~m).sum())} for k, m in masks.items()}
        total = sum(int(m.numel()) for m in masks.values())
        record["pruned_share"] = sum(int((~m).sum()) for m in masks.values()) / total if total else 0.0
        record |= retrain_recorded(model, ctx, epochs, pruner.after_step, unpruned)
        pruner.finalize()
        ctx.details[self.name] = record
        self._note(ctx, record)

    def _continue_chain(self, model: nn.Module, ctx: TuneContext, record: dict[str, Any]) -> float | None:
        """Rounds > 1: put the ticket of the round before (no control: controls branch off the ticket's
        chain) in ``model``; returns the unpruned model's test accuracy, as round 1 measured it."""
        p = self.params
        if ctx.earlier is None:
            raise ValueError("ticket: rounds > 1 continues from the round before, which this context cannot give (TuneContext.earlier)")
        before = type(self)(p.model_copy(update={"rounds": p.rounds - 1, "control": "none"}))
        earlier, details = ctx.earlier(before)
        model.load_state_dict(earlier.state_dict())
        record["continues_from"] = before.short()
        return details.get(self.name, {}).get("unpruned_test_acc")

    def _reset_point(self, ctx: TuneContext, record: dict[str, Any]) -> nn.Module:
        """The model whose weights the survivors are reset to, checked reproducible; ``record`` says which."""
        p = self.params
        if ctx.initial_model is None:
            raise ValueError("ticket resets weights to the baseline's initial ones: this context gives none (TuneContext.initial_model)")
        if p.control == "random_init":
            seed = derived_seed(ctx.seed, "ticket random_init")
            build = lambda: ctx.initial_model(seed)  # noqa: E731
            record |= {"init_seed": seed, "reset_to": f"a fresh random initialisation (from scratch, seed {seed})"}
        elif p.rewind_epoch:
            if ctx.train_epochs is not None and p.rewind_epoch > ctx.train_epochs:
                raise ValueError(f"ticket: rewind_epoch {p.rewind_epoch} is beyond the baseline's {ctx.train_epochs} training epochs")
            if ctx.rewind is None:
                raise ValueError("ticket: rewind_epoch needs the baseline's training replayed, which this context cannot do (TuneContext.rewind)")
            rewound, replay = ctx.rewind(p.rewind_epoch)
            record |= {"reset_to": f"the baseline's weights after epoch {p.rewind_epoch} of its training (replayed)", "rewind": replay}
            if not replay.get("replay_matches_baseline", True):
                ctx.note(f"{self.short()}: the replay of the baseline's first {p.rewind_epoch} epoch(s) does not reproduce the figures its "
                         "training recorded (training is not deterministic here): the rewind point is the replay's")
            return rewound
        else:
            build = ctx.initial_model
            record["reset_to"] = "the baseline's initial weights (what its training started from)"
        initial = build()
        again = same_state(initial, build())
        if again is not None:
            raise ValueError(f"ticket: the model's initial weights are not reproducible: two builds from one seed differ "
                             f"at {again!r} (does the model draw random numbers outside torch's seeded generator?)")
        return initial

    def _note(self, ctx: TuneContext, record: dict[str, Any]) -> None:
        ctx.note(f"{self.short()}: {record['pruned_share']:.1%} of the kernels' weights pruned, reset to {record['reset_to']}"
                 + retraining_note(record))


def _retraining_epochs(p: TicketParams, ctx: TuneContext) -> int:
    epochs = p.epochs if p.epochs is not None else ctx.train_epochs
    if epochs is None:
        raise ValueError("ticket: epochs is null (the baseline's training epochs), but this context does not say how many "
                         "(TuneContext.train_epochs)")
    return epochs
