"""Distillation fine-tuning (mitigate/distill.py): with alpha 1 it is plain fine-tuning bit for bit;
its loss is alpha·CE + (1 − alpha)·T²·KL(teacher_T ‖ student_T) [+ features·MSE] computed by hand;
a student equal to its teacher gets no gradient from the KL term; the teacher is never updated and no
hook outlives the fine-tuning; its parameters are validated naming the field."""
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from faircompress.compress.recipes import RecipeError, parse_recipe
from faircompress.mitigate import ObjectiveInputs, parse_fine_tune
from faircompress.mitigate.distill import Distill, DistillParams


def _distill(teacher: nn.Module, precision: str = "fp32", **params) -> Distill:
    inputs = ObjectiveInputs(data=None, train_rows=np.arange(8), teacher=lambda: teacher, device=torch.device("cpu"),
                             precision=precision)
    return Distill(DistillParams(**params), inputs)


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def _log_softmax(z: list[float], t: float) -> list[float]:
    m = max(v / t for v in z)
    lse = m + math.log(sum(math.exp(v / t - m) for v in z))
    return [v / t - lse for v in z]


def test_the_loss_is_alpha_ce_plus_t_squared_kl_as_computed_by_hand():
    student = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    teacher = [[2.0, 0.0, 1.0], [0.5, 0.5, 2.0]]
    y = [1, 2]
    alpha, t = 0.3, 2.0
    ce = sum(-_log_softmax(s, 1.0)[k] for s, k in zip(student, y)) / 2
    kl = sum(sum(math.exp(lt) * (lt - ls) for lt, ls in zip(_log_softmax(tz, t), _log_softmax(sz, t)))
             for sz, tz in zip(student, teacher)) / 2
    objective = _distill(nn.Flatten(), alpha=alpha, temperature=t)  # the teacher's logits are its input
    objective.start(nn.Flatten())
    x = torch.tensor(teacher)[:, :, None, None]
    loss = objective.loss(nn.Flatten(), torch.tensor(student), torch.tensor(y), x, torch.arange(2))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(alpha * ce + (1 - alpha) * t * t * kl, rel=1e-6)
    objective.end_epoch(nn.Flatten(), 1)
    assert objective.record() == {"last_epoch": {"epoch": 1, "ce": pytest.approx(ce, rel=1e-6), "kl": pytest.approx(kl, rel=1e-6)}}


def test_the_features_term_is_the_mse_of_the_final_linear_layers_inputs():
    teacher, student = _mlp(0), _mlp(1)
    x, y = torch.randn(4, 6, 1, 1), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        by_hand = ((student[2](student[1](x.flatten(1))) - teacher[2](teacher[1](x.flatten(1)))) ** 2).mean().item()
    losses = {}
    for w in (0.0, 0.7):
        objective = _distill(teacher, alpha=0.5, temperature=3.0, features=w)
        objective.start(student)
        losses[w] = objective.loss(student, student(x), y, x, torch.arange(4)).item()
        objective.end_epoch(student, 1)
        assert ("feature_mse" in objective.record()["last_epoch"]) == (w > 0)
        objective.end(student)
    assert by_hand > 0 and losses[0.7] - losses[0.0] == pytest.approx(0.7 * by_hand, rel=1e-5)
    assert not any(m._forward_hooks for m in [*student.modules(), *teacher.modules()])
    with pytest.raises(ValueError, match="features: the student has no nn.Linear layer"):
        _distill(teacher, features=1.0).start(nn.Flatten())


def test_a_student_equal_to_its_teacher_gets_no_gradient_from_the_kl_term():
    x, y = torch.randn(8, 6, 1, 1), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    grads = {}
    for alpha in (0.0, 0.5):
        teacher, student = _mlp(0), _mlp(0)  # the same weights
        objective = _distill(teacher, alpha=alpha, temperature=4.0)
        objective.start(student)
        objective.loss(student, student(x), y, x, torch.arange(8)).backward()
        grads[alpha] = max(p.grad.abs().max().item() for p in student.parameters())
    assert grads[0.0] < 1e-6 and grads[0.5] > 1e-3  # only rounding of the softmax left; the labels' CE does pull


def test_the_teacher_runs_in_the_training_precision():
    teacher, student = _mlp(0), _mlp(1)
    x, y = torch.randn(4, 6, 1, 1), torch.tensor([0, 1, 2, 0])
    losses = {}
    for precision in ("fp32", "bf16"):
        objective = _distill(teacher, precision=precision, alpha=0.0)
        objective.start(student)
        losses[precision] = objective.loss(student, student(x).float(), y, x, torch.arange(4))
    assert losses["bf16"].dtype == torch.float32 and losses["bf16"].item() != losses["fp32"].item()
    assert losses["bf16"].item() == pytest.approx(losses["fp32"].item(), rel=0.05, abs=0.01)


def test_the_teacher_is_never_updated_and_no_hook_outlives_fine_tuning():
    from conftest import TINY_DATA

    from faircompress.config import TrainConfig
    from faircompress.data.dataset import SPLITS
    from faircompress.data.synthetic import SyntheticParams, generate
    from faircompress.models import build_model
    from faircompress.train import fit

    data = generate(SyntheticParams(**TINY_DATA))
    few = data.take(np.concatenate([data.indices(split)[:16] for split in SPLITS]))
    torch.manual_seed(0)
    teacher = build_model("paper_cnn", in_channels=1, num_classes=data.num_classes, input_size=16).eval()  # BatchNorm and dropout
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = copy.deepcopy(teacher)
    inputs = ObjectiveInputs(few, few.indices("train"), lambda: teacher, torch.device("cpu"))
    objective = Distill(DistillParams(alpha=0.5, features=0.5), inputs)
    fit(student, few, TrainConfig(epochs=2, batch_size=8, precision="fp32", device="cpu"), 0, objective=objective)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # weights and running statistics
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert not all(torch.equal(before[k], v) for k, v in student.state_dict().items())  # the student did learn
    assert not any(m._forward_hooks for m in [*student.modules(), *teacher.modules()])
    last = objective.record()["last_epoch"]
    assert last["epoch"] == 2 and all(math.isfinite(last[k]) and last[k] >= 0 for k in ("ce", "kl", "feature_mse"))


@pytest.mark.parametrize("model", [None, {"name": "paper_cnn", "params": {}}], ids=["pca_mlp", "paper_cnn-dropout"])
def test_alpha_one_fine_tunes_exactly_as_plain_fine_tuning(tiny_overrides, model):
    """Also with dropout on the CPU, whose masks come from the seeded stream: building the teacher
    must not draw from it."""
    from conftest import plain_and_mitigated

    found = plain_and_mitigated(tiny_overrides, {"objective": "distill", "alpha": 1.0, "temperature": 2.0}, model=model)
    plain, distilled = found["plain"], found["mitigated"]
    assert plain["preds"] == distilled["preds"]
    assert plain["weights"].keys() == distilled["weights"].keys()
    assert all(torch.equal(plain["weights"][k], distilled["weights"][k]) for k in plain["weights"])  # bit for bit
    [entry] = distilled["details"]["steps"]["fine_tune"]
    assert {k: entry[k] for k in ("objective", "alpha", "temperature", "features")} == {
        "objective": "distill", "alpha": 1.0, "temperature": 2.0, "features": 0.0}
    assert entry["last_epoch"]["epoch"] == 2 and entry["last_epoch"]["kl"] > 0  # the teacher ran; its KL had no weight


def test_the_parameters_are_validated_naming_the_field():
    assert parse_fine_tune({"objective": "distill"}) == {"objective": "distill", "alpha": 0.5, "temperature": 4.0, "features": 0.0}
    for bad, message in [({"alpha": 1.5}, "fine_tune: alpha: Input should be less than or equal to 1"),
                         ({"alpha": -0.1}, "fine_tune: alpha: Input should be greater than or equal to 0"),
                         ({"temperature": 0}, "fine_tune: temperature: Input should be greater than 0"),
                         ({"features": -1}, "fine_tune: features: Input should be greater than or equal to 0"),
                         ({"alpah": 0.5}, "fine_tune: alpah: Extra inputs are not permitted")]:
        with pytest.raises(RecipeError, match=message):
            parse_recipe([{"prune": {"sparsity": 0.5, "fine_tune": {"objective": "distill", **bad}}}])
    recipe = parse_recipe([{"cluster": {"clusters": 4, "fine_tune": {"objective": "distill", "alpha": 0.3}}}])
    assert recipe.technique == "cluster-distill" and recipe.label == "cluster 4 [distill alpha=0.3]"


def test_plugins_lists_it():
    from faircompress.plugins import describe_plugins

    rows = {r.name: r for r in describe_plugins()["fine-tuning objectives (a step's fine_tune option)"]}
    assert rows["distill"].parameters == "alpha=0.5, temperature=4.0, features=0.0"
    assert rows["distill"].about.startswith("distill: knowledge distillation from the uncompressed baseline")
