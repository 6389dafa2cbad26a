"""distill: knowledge distillation from the uncompressed baseline (teacher) into the compressed student.

Sources: Blakeney et al. (2021), "Simon Says: Evaluating and Mitigating Bias in Pruned Neural Networks
with Knowledge Distillation" (arXiv 2106.07849): fine-tuning a pruned network with distillation from the
unpruned one narrows the pruning-induced bias; Hinton, Vinyals & Dean (2015), "Distilling the Knowledge
in a Neural Network" (arXiv 1503.02531): the softened targets and the T² factor; Romero et al. (2015),
"FitNets: Hints for Thin Deep Nets" (ICLR, arXiv 1412.6550): matching intermediate activations.

The batch loss, per fine-tuning batch (``fine_tune: {objective: distill, alpha, temperature, features}``)::

    alpha * CE(student logits, labels)
      + (1 - alpha) * T² * KL(softmax(teacher logits / T) || softmax(student logits / T))
      + features * MSE(student activations, teacher activations)

CE and KL are means over the batch (KL summed over the classes of each image, as ``F.kl_div`` with
``batchmean``). The factor T² is Hinton et al.'s: the soft targets' gradients scale as 1/T², so T²
keeps their weight against the labels' comparable as the temperature changes. With ``alpha`` 1 and
``features`` 0 the loss is cross-entropy exactly (the KL term enters multiplied by 0), so the fine-tuning
equals plain fine-tuning bit for bit; the teacher still runs, so its KL is recorded.

The teacher is the study's baseline checkpoint, in evaluation mode (no dropout, BatchNorm's running
statistics), its weights frozen; it sees the same augmented batch as the student, without gradients, in
the training precision (bf16 autocast where training uses it).

``features`` > 0 adds an MSE between intermediate activations, chosen without knowing the model: the
input of the *final* ``nn.Linear`` layer (the last one ``model.modules()`` lists; in the built-in models
the classifier, so the penultimate representation), caught by forward hooks on teacher and student
(as of that layer's last call in a forward). Pruning and clustering keep every shape, so the two
match; a model without an ``nn.Linear`` layer is refused. The student runs in training mode: where a
dropout layer precedes that layer (paper_cnn), its activations carry the dropout, the teacher's do not,
so the MSE also counts that noise. The hooks are removed when fine-tuning ends.

``record()`` keeps the last epoch's means (unweighted by alpha and T²): ``ce``, ``kl`` and, with
``features``, ``feature_mse``.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..train import autocast
from . import OBJECTIVES, Objective, ObjectiveInputs, ObjectiveParams


class DistillParams(ObjectiveParams):
    alpha: float = Field(0.5, ge=0, le=1, description="weight of cross-entropy with the labels; 1 - alpha weighs the teacher's KL")
    temperature: float = Field(4.0, gt=0, description="softmax temperature of teacher and student in the KL term")
    features: float = Field(0.0, ge=0, description="weight of an MSE between the inputs of teacher's and student's final "
                                                    "nn.Linear layer (0: none)")


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)), summed over classes, mean over the batch."""
    return F.kl_div(F.log_softmax(student_logits / temperature, dim=1), F.log_softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean", log_target=True)


def final_linear(model: nn.Module, role: str) -> nn.Linear:
    """The last ``nn.Linear`` module of ``model`` (whose input the ``features`` term compares)."""
    found = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ValueError(f"features: the {role} has no nn.Linear layer whose input could be compared; use features: 0")
    return found[-1]


def _catch_input(store: dict[str, torch.Tensor], key: str, only_training: bool) -> Callable[..., None]:
    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        if module.training or not only_training:
            store[key] = args[0]

    return hook


@OBJECTIVES.register("distill")
class Distill(Objective):
    """alpha·CE + (1 − alpha)·T²·KL(teacher_T ‖ student_T) [+ features·MSE of the final Linear layer's inputs]."""

    name, Params = "distill", DistillParams
    example = {"alpha": 0.5, "temperature": 4.0, "features": 0.1}
    params: DistillParams

    def __init__(self, params: ObjectiveParams, inputs: ObjectiveInputs) -> None:
        super().__init__(params, inputs)
        self.teacher: nn.Module | None = None
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._caught: dict[str, torch.Tensor] = {}
        self._sums = torch.zeros(4)  # ce, kl, feature mse (each times the batch size), images
        self._last: dict[str, Any] = {}

    def start(self, model: nn.Module) -> None:
        teacher = self.inputs.teacher().eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher = teacher.to(memory_format=torch.channels_last)
        self._sums = torch.zeros(4, device=self.inputs.device)
        if self.params.features > 0:
            self._hooks = [final_linear(teacher, "teacher").register_forward_hook(_catch_input(self._caught, "teacher", False)),
                           final_linear(model, "student").register_forward_hook(_catch_input(self._caught, "student", True))]

    def loss(self, model: nn.Module, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
             rows: torch.Tensor) -> torch.Tensor:
        p = self.params
        assert self.teacher is not None, "distill: loss before start"
        with torch.no_grad(), autocast(self.inputs.device, self.inputs.precision):
            teacher_logits = self.teacher(x).float()
        ce = F.cross_entropy(logits, y)
        kl = distillation_kl(logits, teacher_logits, p.temperature)
        total = p.alpha * ce + (1 - p.alpha) * p.temperature ** 2 * kl
        mse = torch.zeros((), device=logits.device)
        if p.features > 0:
            mse = self._feature_mse()
            total = total + p.features * mse
        self._sums += torch.stack([ce.detach(), kl.detach(), mse.detach(), torch.ones((), device=ce.device)]).to(self._sums) * len(y)
        return total

    def _feature_mse(self) -> torch.Tensor:
        student, teacher = self._caught.pop("student", None), self._caught.pop("teacher", None)
        if student is None or teacher is None:
            raise RuntimeError("features: the final nn.Linear layer of the " + ("student" if student is None else "teacher")
                               + " did not run in this batch")
        if student.shape != teacher.shape:
            raise ValueError(f"features: the student's final nn.Linear layer gets inputs of shape {tuple(student.shape)}, "
                             f"the teacher's {tuple(teacher.shape)}; use features: 0")
        return F.mse_loss(student.float(), teacher.float())

    def end_epoch(self, model: nn.Module, epoch: int) -> None:
        ce, kl, mse, n = self._sums.tolist()
        if n:
            self._last = {"epoch": epoch, "ce": ce / n, "kl": kl / n} | ({"feature_mse": mse / n} if self.params.features > 0 else {})
        self._sums.zero_()

    def end(self, model: nn.Module) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks, self._caught, self.teacher = [], {}, None

    def record(self) -> dict[str, Any]:
        """The last epoch's mean cross-entropy, KL (without T²) and feature MSE: ``{last_epoch: {...}}``."""
        return {"last_epoch": self._last}
