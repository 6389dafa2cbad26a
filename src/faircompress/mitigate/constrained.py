"""Group-constrained fine-tuning (Hashemizadeh et al. 2023, "Balancing Act: Constraining Disparate
Impact in Sparse Models", arXiv 2310.20673; their code: github.com/merajhashemi/balancing-act).

One constraint per group g of the chosen ``attribute``: the group's accuracy drop against the dense
(uncompressed) baseline may exceed the overall drop by at most ``epsilon``,

    (acc_dense(g) - acc(g)) - (acc_dense - acc) <= epsilon.

Accuracy is not differentiable, so the method plays the paper's proxy-Lagrangian game:

* the min player (the model) minimises  CE + sum_g lambda_g * s_g,  where the surrogate s_g is the
  group's *excess loss* over the dense model minus the overall excess loss, on the batch:
  s_g = (L(g) - L_dense(g)) - (L - L_dense), L the mean cross-entropy (over the batch for the model,
  over all training images for the dense baseline). This is the paper's loss-based surrogate (its
  `UniformAccuracyGapProblem.compute_surrogate`); the dense terms shift its value, not its gradient.
  A group absent from a batch adds nothing (the paper's indexed constraints);
* the max player (one multiplier per group) ascends on the *measured* violations:
  lambda_g <- max(0, lambda_g + dual_lr * (gap_g - epsilon)), gap_g = the group's drop minus the
  overall drop, every batch, before the model's step on that batch (the paper's alternating
  dual-primal optimiser). The model's accuracies are those of the training passes over the last
  ``memory`` training images of each group (the paper's cyclic buffer, 40 per group; all of a group's
  images when it has fewer) and over the last ``memory`` x (number of groups) training images for the
  overall accuracy; a group's multiplier moves only once its window is full. The dense baseline's accuracies and losses are measured once, at `start`,
  on the training images (unaugmented, in eval mode) by the teacher.

Images whose group is unknown count in the cross-entropy and in the overall accuracy and loss only.

Defaults: epsilon 0.02 (the issue's example; the paper's UTKFace and FairFace configs use 0.01).
dual_lr 0.01, not the paper's 1e-4: the paper's multipliers take thousands of steps (47-60 epochs of
pruning and fine-tuning with batches of 128-256), ours a few hundred (2-3 fine-tuning epochs of a few
thousand images at batch 32), and at 1e-4 they would stay near 1e-3, changing nothing.
The multipliers are not part of `fit`'s resumable state: a resumed fine-tuning restarts them at 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from ..data.dataset import UNKNOWN, FaceDataset
from ..train import predict_logits
from . import OBJECTIVES, Objective, ObjectiveInputs, ObjectiveParams

EVAL_BATCH = 256  # the dense baseline's pass over the training images at start


class ConstrainedParams(ObjectiveParams):
    attribute: str = Field(min_length=1, description="the attribute whose groups are constrained, e.g. gender")
    epsilon: float = Field(0.02, ge=0, le=1, description="how far a group's accuracy drop may exceed the overall drop")
    dual_lr: float = Field(0.01, gt=0, description="the multipliers' step size (one step per batch)")
    memory: int = Field(40, ge=1, description="training images per group over which a group's accuracy is measured")


def training_groups(data: FaceDataset, train_rows: np.ndarray, attribute: str) -> np.ndarray:
    """The training images' group codes of ``attribute``; refused (ValueError naming the attribute) when
    the dataset lacks it, or fewer than two of its groups have labelled training images."""
    try:
        codes = data.attribute_codes(attribute, train_rows)
    except ValueError as e:
        raise ValueError(f"constrained: {e}") from None
    present = np.unique(codes[codes != UNKNOWN])
    if len(present) == 0:
        raise ValueError(f"constrained: attribute {attribute!r}: none of the {len(codes)} training images of dataset {data.name} "
                         "has a known group; the constraints need group labels of the training split")
    if len(present) == 1:
        raise ValueError(f"constrained: attribute {attribute!r}: only group {data.attribute_groups[attribute][present[0]]!r} has "
                         f"labelled training images in dataset {data.name}; constraining a group against the overall drop "
                         "needs two groups or more")
    return codes


def group_means(values: torch.Tensor, codes: torch.Tensor, n_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean of ``values`` per group, images per group); unknown codes left out, 0 for an empty group."""
    bins = torch.where(codes == UNKNOWN, n_groups, codes)  # unknown into a last bin, dropped (no host sync on a GPU)
    sums = torch.zeros(n_groups + 1, device=values.device, dtype=values.dtype).index_add_(0, bins, values)[:n_groups]
    counts = torch.zeros(n_groups + 1, device=values.device, dtype=torch.long).index_add_(0, bins, torch.ones_like(bins))[:n_groups]
    return sums / counts.clamp(min=1), counts


@dataclass
class DenseReference:
    """The dense baseline on the training images: accuracy and mean cross-entropy per group and overall."""

    group_acc: torch.Tensor   # (G,)
    acc: torch.Tensor         # ()
    group_loss: torch.Tensor  # (G,)
    loss: torch.Tensor        # ()
    counts: torch.Tensor      # (G,) training images per group

    @classmethod
    def measure(cls, logits: torch.Tensor, y: torch.Tensor, codes: torch.Tensor, n_groups: int) -> "DenseReference":
        correct = (logits.argmax(1) == y).float()
        ce = F.cross_entropy(logits, y, reduction="none")
        group_acc, counts = group_means(correct, codes, n_groups)
        return cls(group_acc, correct.mean(), group_means(ce, codes, n_groups)[0], ce.mean(), counts)


def lagrangian(ce: torch.Tensor, codes: torch.Tensor, multipliers: torch.Tensor, dense: DenseReference) -> torch.Tensor:
    """The min player's loss: mean ``ce`` (per-image cross-entropy) plus sum_g lambda_g * s_g, s_g the
    group's excess loss over the dense model minus the overall excess loss (0 for a group absent here)."""
    overall = ce.mean()
    group_loss, counts = group_means(ce, codes, len(multipliers))
    surrogate = (group_loss - dense.group_loss) - (overall - dense.loss)
    return overall + (multipliers * torch.where(counts > 0, surrogate, torch.zeros_like(surrogate))).sum()


def ascend(multipliers: torch.Tensor, gaps: torch.Tensor, ready: torch.Tensor, epsilon: float, dual_lr: float) -> torch.Tensor:
    """The max player's step: lambda_g + dual_lr * (gap_g - epsilon), kept >= 0, for the groups whose
    measurement is ``ready``; the others keep theirs. ``gaps``: each group's drop minus the overall drop."""
    stepped = (multipliers + dual_lr * (gaps - epsilon)).clamp(min=0)
    return torch.where(ready, stepped, multipliers)


def windows(counts: torch.Tensor, n_train: int, memory: int) -> torch.Tensor:
    """The windows' sizes: per group ``memory`` training images, or all of a smaller group's (a group
    without training images gets ``memory`` and is never measured); for the overall accuracy ``memory``
    per group with images, or all training images."""
    per_group = torch.where(counts > 0, counts.clamp(max=memory), torch.full_like(counts, memory))
    overall = min(memory * int((counts > 0).sum()), n_train)
    return torch.cat([per_group, torch.tensor([overall], device=counts.device)])


class Window:
    """Ring buffers: the last ``capacity[r]`` values added to each row r (a group, or all images)."""

    def __init__(self, capacity: torch.Tensor) -> None:
        self.capacity = capacity
        self.width = int(capacity.max())
        self.values = torch.zeros(len(capacity), self.width + 1, device=capacity.device)  # the last column: discarded writes
        self.pos = torch.zeros_like(capacity)
        self.filled = torch.zeros_like(capacity)

    def add(self, row: torch.Tensor, value: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """Append ``value[i]`` to row ``row[i]`` in order, where ``valid[i]`` (default all). Of a row's
        values in one call only its last ``capacity`` are written, so no slot is written twice; no host sync."""
        valid = torch.ones_like(row, dtype=torch.bool) if valid is None else valid
        onehot = ((row[:, None] == torch.arange(len(self.capacity), device=row.device)) & valid[:, None]).long()
        rank = (onehot.cumsum(0) - 1).gather(1, row[:, None]).squeeze(1)  # position among this call's values of its row
        count = onehot.sum(0)
        cap = self.capacity[row]
        keep = valid & (rank >= count[row] - cap)
        slot = torch.where(keep, (self.pos[row] + rank) % cap, self.width)
        self.values[row, slot] = value.to(self.values.dtype)
        self.pos = (self.pos + count) % self.capacity
        self.filled = torch.minimum(self.filled + count, self.capacity)

    def means(self) -> torch.Tensor:
        return self.values[:, : self.width].sum(1) / self.filled.clamp(min=1)

    def full(self) -> torch.Tensor:
        return self.filled == self.capacity


@OBJECTIVES.register("constrained")
class Constrained(Objective):
    """Group-constrained fine-tuning (Balancing Act): per-group accuracy-drop constraints enforced by
    Lagrange multipliers updated from the measured drops, per-group excess-loss gaps as surrogate."""

    name, Params = "constrained", ConstrainedParams
    example = {"attribute": "gender"}
    params: ConstrainedParams

    def __init__(self, params: ConstrainedParams, inputs: ObjectiveInputs) -> None:
        super().__init__(params, inputs)
        self.groups = list(inputs.data.attribute_groups.get(params.attribute, []))
        self._codes_np = training_groups(inputs.data, inputs.train_rows, params.attribute)  # refused before any training
        self.trajectory: list[list[float]] = []
        self.gaps: torch.Tensor | None = None

    @classmethod
    def check_data(cls, params: ConstrainedParams, data: FaceDataset, train_rows: np.ndarray) -> None:  # type: ignore[override]
        training_groups(data, train_rows, params.attribute)

    def start(self, model: torch.nn.Module) -> None:
        inp, n_groups = self.inputs, len(self.groups)
        self.codes = torch.from_numpy(self._codes_np.astype(np.int64)).to(inp.device)
        y = torch.from_numpy(inp.data.labels[inp.train_rows].astype(np.int64)).to(inp.device)
        logits = predict_logits(inp.teacher(), torch.from_numpy(inp.data.images[inp.train_rows]), EVAL_BATCH, inp.device,
                                inp.precision)
        self.dense = DenseReference.measure(logits, y, self.codes, n_groups)
        self.window = Window(windows(self.dense.counts, len(self.codes), self.params.memory))
        self.multipliers = torch.zeros(n_groups, device=inp.device)
        self.gaps = torch.full((n_groups,), math.nan, device=inp.device)
        self.trajectory = []

    def loss(self, model: torch.nn.Module, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
             rows: torch.Tensor) -> torch.Tensor:
        codes = self.codes[rows]
        self.observe(codes, (logits.detach().argmax(1) == y).float())
        return lagrangian(F.cross_entropy(logits, y, reduction="none"), codes, self.multipliers, self.dense)

    def observe(self, codes: torch.Tensor, correct: torch.Tensor) -> None:
        """The max player's turn: add a batch's per-image correctness (``codes`` its images' groups) to
        the windows, measure each group's drop gap and step the multipliers of the groups measured."""
        n_groups = len(self.groups)
        known = codes != UNKNOWN
        self.window.add(torch.cat([codes.clamp(min=0), torch.full_like(codes, n_groups)]), torch.cat([correct, correct]),
                        torch.cat([known, torch.ones_like(known)]))
        acc, ready = self.window.means(), self.window.full()[:n_groups]
        gaps = (self.dense.group_acc - acc[:n_groups]) - (self.dense.acc - acc[n_groups])
        self.multipliers = ascend(self.multipliers, gaps, ready, self.params.epsilon, self.params.dual_lr)
        self.gaps = torch.where(ready, gaps, self.gaps)

    def end_epoch(self, model: torch.nn.Module, epoch: int) -> None:
        self.trajectory.append(self.multipliers.tolist())

    def record(self) -> dict[str, Any]:
        """Per group: the multipliers after every epoch, the last measured drop gap (the group's drop minus
        the overall drop; None: never measured) and the dense baseline's training accuracy (None: no images)."""
        gaps = [math.nan] * len(self.groups) if self.gaps is None else self.gaps.tolist()
        dense = getattr(self, "dense", None)
        acc = {} if dense is None else {g: round(a, 6) if n else None
                                        for g, a, n in zip(self.groups, dense.group_acc.tolist(), dense.counts.tolist())}
        return {"multipliers": {g: [round(epoch[i], 6) for epoch in self.trajectory] for i, g in enumerate(self.groups)},
                "drop_gaps": {g: None if math.isnan(v) else round(v, 6) for g, v in zip(self.groups, gaps)},
                "dense_train_accuracy": acc | ({"overall": round(dense.acc.item(), 6)} if dense is not None else {})}
