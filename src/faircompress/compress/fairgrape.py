"""FairGRAPE (Lin, Kim & Joo 2022, "Fairness-aware GRAdient Pruning mEthod for Face Attribute
Classification", ECCV; arXiv 2207.10888): `prune: {method: fairgrape, sparsity: 0.9, attribute: gender}`.

What is scored: per group g of the attribute and per weight w of every conv and dense kernel, the
first-order Taylor importance ``I_g(w) = sum over batches (w * dL_g/dw)^2``, ``L_g`` the mean
cross-entropy of the batch's images of group g (images whose group is unknown count for no group).
The batches are the training images in order, 64 a batch (the authors' batch size), without
augmentation, the model in eval mode (BatchNorm's running statistics, no dropout: the function
that is deployed; the authors score in train mode and, in their code, step an optimiser while
scoring, which we do not copy). Weights already pruned have w = 0, so importance 0.

How shares are kept (their Algorithm 1 and `fairness_grad`): per kernel, group g's target share is
its share of the kernel's total importance, ``t_g = sum_w I_g(w) / sum_h sum_w I_h(w)``. Weights are
selected greedily: the group whose share of the importance selected so far is furthest below its
target (uniform shares before anything is selected) adds its most important weight not yet
selected, and every group's selected importance grows by that weight's importance for it, until
the kernel keeps ``n - round(sparsity * n)`` weights; the rest are pruned. A kernel's kept shares
thus track its targets, so every group keeps about the same fraction of its own importance.
Vectorised: the authors add one weight per greedy step; we let the chosen group add its next
``ceil(keep / 256)`` unselected weights at once, so a kernel takes at most 256 steps of tensor
operations (exactly their greedy for kernels keeping up to 256 weights). Ties fall by position.

Iterations: ``rounds`` prunings (default 5), each re-scoring the model as the last left it, at
levels that keep the same fraction each round, ``1 - (1 - sparsity)^(i / rounds)``, the last one
exactly ``sparsity`` (the authors' ``keep_per_iter`` schedule, cut to a fixed number of rounds);
a weight pruned in one round stays pruned. The authors retrain between rounds (3 epochs at a low
learning rate); ``round_epochs`` (default 0: re-scoring only) fine-tunes that many epochs with the
training recipe between rounds. The mask after the last round is fixed through the step's fine-tuning.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from ..data.dataset import FaceDataset

SCORE_BATCH = 64  # images per scoring batch (the authors' batch size)
MAX_STEPS = 256  # greedy steps per kernel at most (see the module docstring)


def group_codes(data: "FaceDataset", attribute: str, rows: np.ndarray | None = None) -> np.ndarray:
    """The attribute's group codes of ``rows`` (all rows when None); a `ValueError` naming the
    attribute when the dataset lacks it or none of those rows has a known group."""
    try:
        codes = data.attribute_codes(attribute, rows)
    except ValueError as e:
        raise ValueError(f"attribute: {e}; fairgrape scores weights per group of the attribute and needs the training images' "
                         "group labels") from None
    if not (codes >= 0).any():
        raise ValueError(f"attribute: no training image of dataset {data.name} has a known {attribute!r} group; "
                         "fairgrape scores weights per group and needs the training images' group labels")
    return codes


def group_importance(model: nn.Module, weights: dict[str, torch.Tensor], images: np.ndarray, labels: np.ndarray,
                     codes: np.ndarray, n_groups: int, device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """Per kernel of ``weights`` (parameters of ``model``), a (n_groups, numel) tensor: each group's
    ``sum over batches (w * dL_g/dw)^2`` (see the module docstring), on ``device``."""
    device = device or torch.device("cpu")
    was_training = model.training
    model.to(device).eval()
    params = list(weights.values())
    out = {k: torch.zeros(n_groups, w.numel(), device=device) for k, w in weights.items()}
    try:
        for i in range(0, len(images), SCORE_BATCH):
            x = torch.as_tensor(images[i : i + SCORE_BATCH]).to(device).float()
            y = torch.as_tensor(labels[i : i + SCORE_BATCH]).to(device)
            g = torch.as_tensor(codes[i : i + SCORE_BATCH]).to(device)
            losses = F.cross_entropy(model(x).float(), y, reduction="none")
            present = [int(c) for c in torch.unique(g) if c >= 0]
            for j, c in enumerate(present):
                grads = torch.autograd.grad(losses[g == c].mean(), params, retain_graph=j < len(present) - 1, allow_unused=True)
                for k, w, d in zip(weights, params, grads):
                    if d is not None:
                        out[k][c] += (w.detach() * d).flatten().square()
    finally:
        model.train(was_training)
    return out


def balanced_keep(importance: torch.Tensor, alive: torch.Tensor, keep: int) -> torch.Tensor:
    """A (numel,) keep-mask of exactly ``keep`` entries among ``alive`` ones, chosen greedily so each
    group's share of the kept importance tracks its share of the kernel's (``importance``: (G, numel))."""
    n_groups, n = importance.shape
    if keep >= int(alive.sum()):
        return alive.clone()
    imp = torch.where(alive, importance, torch.zeros_like(importance)).double()
    total = imp.sum(1)
    target = total / total.sum() if total.sum() > 0 else torch.full_like(total, 1 / n_groups)
    order = torch.argsort(torch.where(alive, imp, torch.full_like(imp, -1.0)), dim=1, descending=True, stable=True)
    chosen = torch.zeros(n, dtype=torch.bool, device=imp.device)
    got, start = torch.zeros_like(total), [0] * n_groups
    step, count = max(1, math.ceil(keep / MAX_STEPS)), 0
    while count < keep:
        share = got / got.sum() if got.sum() > 0 else torch.full_like(got, 1 / n_groups)
        g = int(torch.argmin(share - target))
        take = min(step, keep - count)
        window = order[g, start[g] : start[g] + take + count]  # at most `count` of these are chosen already
        fresh = torch.nonzero(~chosen[window]).flatten()[:take]
        picked = window[fresh]
        chosen[picked] = True
        got += imp[:, picked].sum(1)
        start[g] += int(fresh[-1]) + 1
        count += len(picked)
    return chosen


def level_schedule(level: float, rounds: int) -> list[float]:
    """The sparsity after each round: the same fraction of the weights kept each round, the last ``level``."""
    return [1 - (1 - level) ** (i / rounds) for i in range(1, rounds)] + [level]


def fairgrape_masks(importance: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
                    levels: dict[str, float]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Each kernel's new keep-mask at its level (within its current mask ``masks``), and per kernel
    the (kept, total) importance per group, as a (2, G) tensor."""
    out, kept = {}, {}
    for k, imp in importance.items():
        alive = masks[k].flatten().to(imp.device)
        n = alive.numel()
        new = balanced_keep(imp, alive, n - int(round(levels.get(k, 0.0) * n)))
        out[k] = new.view_as(masks[k]).to(masks[k].device)
        kept[k] = torch.stack([(imp * new).sum(1), (imp * alive).sum(1)]).double().cpu()
    return out, kept


def fairgrape_prune(model: nn.Module, weights: Callable[[], dict[str, nn.Parameter]], levels: dict[str, float],
                    attribute: str, rounds: int, ctx: Any, between: Callable[[dict[str, torch.Tensor]], None]) -> tuple[dict, dict]:
    """Prune ``model`` in ``rounds`` rounds (see the module docstring): score on ``ctx.training_data()``,
    select, zero the pruned weights, and call ``between(masks)`` after every round but the last (the
    fine-tuning between rounds). Returns the final keep-masks and a record of the rounds."""
    if getattr(ctx, "training_data", None) is None:
        raise ValueError("prune fairgrape: needs the training images with their labels and groups, which this caller does not give")
    data = ctx.training_data()
    codes = group_codes(data, attribute)
    groups = data.attribute_groups[attribute]
    masks = {k: torch.ones_like(w, dtype=torch.bool) for k, w in weights().items()}
    record: dict[str, Any] = {"attribute": attribute, "groups": list(groups), "rounds": []}
    schedule = {k: level_schedule(levels.get(k, 0.0), rounds) for k in masks}
    for r in range(rounds):
        ws = weights()
        imp = group_importance(model, ws, data.images, data.labels, codes, len(groups), getattr(ctx, "device", None))
        masks, kept = fairgrape_masks(imp, masks, {k: s[r] for k, s in schedule.items()})
        with torch.no_grad():
            for k, w in ws.items():
                w.mul_(masks[k].to(w.device))
        record["rounds"].append(_retained(kept, groups))
        if r < rounds - 1:
            between(masks)
    return masks, record


def _retained(kept: dict[str, torch.Tensor], groups: list[str]) -> dict[str, float | None]:
    """Per group, the share of its importance (summed over kernels) the round kept (None: it had none)."""
    both = sum(kept.values()) if kept else torch.zeros(2, len(groups), dtype=torch.float64)
    return {g: (float(both[0, i] / both[1, i]) if both[1, i] > 0 else None) for i, g in enumerate(groups)}
