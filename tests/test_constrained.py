"""Group-constrained fine-tuning (Balancing Act): a group whose accuracy drop exceeds the overall drop
by more than epsilon gets a rising multiplier, the others stay at 0; the loss is the proxy-Lagrangian
computed by hand; a dataset that cannot name the groups is refused; a study runs it and records the
multipliers."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from faircompress.compress.recipes import RecipeError, parse_recipe
from faircompress.config import TrainConfig
from faircompress.data.dataset import UNKNOWN, FaceDataset
from faircompress.mitigate import ObjectiveInputs, build_objective, parse_fine_tune
from faircompress.mitigate.constrained import DenseReference, Window, ascend, lagrangian, windows
from faircompress.train import fit

# Group "a" images carry their class in features 0-1, group "b" in features 2-3; unknown-group images in both.
GROUPS = ["a", "b"]


def _dataset(codes=None, per_group=32) -> FaceDataset:
    rng = np.random.default_rng(0)
    n = 3 * per_group
    group = np.repeat([0, 1, UNKNOWN], per_group) if codes is None else codes
    labels = rng.integers(0, 2, n)
    x = np.zeros((n, 4, 1, 1), np.float32)
    for g, dims in [(0, [0]), (1, [2]), (UNKNOWN, [0, 2])]:
        for d in dims:
            rows = np.flatnonzero(np.repeat([0, 1, UNKNOWN], per_group) == g)
            x[rows, d + labels[rows], 0, 0] = 1.0
    split = np.zeros(n, np.int8)
    split[::4] = 1  # a quarter validates
    return FaceDataset(name="toy", images=x, labels=labels.astype(np.int64), class_names=["c0", "c1"],
                       attributes={"gender": np.asarray(group, np.int64)}, attribute_groups={"gender": GROUPS},
                       subjects=np.arange(n).astype(str), split=split)


def _linear(swap_b: bool) -> nn.Module:
    """Right for every group; with ``swap_b`` always wrong on group b's images (features 2-3 swapped)."""
    w = torch.tensor([[1.0, 0, 0, 1], [0, 1, 1, 0]] if swap_b else [[1.0, 0, 1, 0], [0, 1, 0, 1]])
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False))
    model[1].weight.data.copy_(w * 5)
    return model


def _objective(data, **params):
    rows = data.indices("train")
    spec = parse_fine_tune({"objective": "constrained", "attribute": "gender", **params})
    inputs = ObjectiveInputs(data, rows, lambda: _linear(False).eval(), torch.device("cpu"))
    return build_objective(spec, inputs), rows


def test_the_max_player_raises_only_the_multipliers_of_groups_beyond_epsilon():
    lam = torch.tensor([0.0, 0.0, 0.5, 0.2])
    gaps = torch.tensor([0.10, 0.01, -0.2, 0.5])
    ready = torch.tensor([True, True, True, False])
    out = ascend(lam, gaps, ready, epsilon=0.02, dual_lr=0.5)
    assert torch.allclose(out, torch.tensor([0.04, 0.0, 0.39, 0.2]))  # up, stays 0, down (kept >= 0), not measured yet
    for _ in range(5):
        lam, before = ascend(lam, gaps, ready, 0.02, 0.5), lam
        assert lam[0] > before[0] and lam[1] == 0
    assert ascend(torch.tensor([0.01]), torch.tensor([-1.0]), torch.tensor([True]), 0.0, 1.0).item() == 0.0


def test_windows_keep_the_last_values_of_each_row():
    w = Window(torch.tensor([3, 5]))
    w.add(torch.tensor([0, 0, 1, 0, 0, 0]), torch.tensor([1.0, 1, 1, 0, 0, 0]))  # row 0: 4 values, its last 3 kept
    assert w.means().tolist() == [0.0, 1.0] and w.full().tolist() == [True, False]
    w.add(torch.tensor([0, 1, 1, 1, 1]), torch.tensor([1.0, 0, 0, 0, 0]))
    assert torch.allclose(w.means(), torch.tensor([1 / 3, 1 / 5])) and w.full().tolist() == [True, True]
    w.add(torch.tensor([0, 0, 0, 1]), torch.tensor([0.0, 0, 0, 1]), valid=torch.tensor([False, False, False, True]))
    assert torch.allclose(w.means(), torch.tensor([1 / 3, 1 / 5]))  # invalid values are not written, valid ones are
    w.add(torch.tensor([1]), torch.tensor([1.0]))
    assert torch.allclose(w.means(), torch.tensor([1 / 3, 2 / 5]))
    # a group smaller than the memory is measured over all its images; one without images never
    assert windows(torch.tensor([100, 7, 0]), 107, 40).tolist() == [40, 7, 40, 80]
    assert windows(torch.tensor([10, 7]), 20, 40).tolist() == [10, 7, 20]


def test_the_loss_is_the_proxy_lagrangian_computed_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.5, 1.0], [0.0, 3.0], [1.0, 1.0], [0.2, -0.4]], requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 0])
    codes = torch.tensor([0, 0, 1, UNKNOWN, 2])  # three groups; the last image's group alone
    lam = torch.tensor([0.3, 1.5, 0.7])
    dense = DenseReference(torch.tensor([0.9, 0.8, 0.7]), torch.tensor(0.85), torch.tensor([0.2, 0.4, 0.1]), torch.tensor(0.3),
                           torch.tensor([10, 10, 10]))
    ce = [float(-torch.log_softmax(logits.detach()[i], 0)[y[i]]) for i in range(5)]
    overall = sum(ce) / 5
    by_hand = overall
    for g, members in enumerate([[0, 1], [2], [4]]):
        by_hand += lam[g].item() * ((sum(ce[i] for i in members) / len(members) - dense.group_loss[g].item()) - (overall - 0.3))
    got = lagrangian(F.cross_entropy(logits, y, reduction="none"), codes, lam, dense)
    assert got.item() == pytest.approx(by_hand, rel=1e-6)
    got.backward()  # differentiable in the logits
    absent = lagrangian(F.cross_entropy(logits[:4], y[:4], reduction="none"), codes[:4], lam, dense)  # group 2 not in the batch
    ce4 = sum(ce[:4]) / 4
    assert absent.item() == pytest.approx(ce4 + 0.3 * ((ce[0] + ce[1]) / 2 - 0.2 - (ce4 - 0.3)) + 1.5 * (ce[2] - 0.4 - (ce4 - 0.3)),
                                          rel=1e-6)


def test_a_group_whose_accuracy_drops_gets_a_rising_multiplier_and_the_loss_uses_it():
    data = _dataset()
    obj, rows = _objective(data, epsilon=0.05, dual_lr=0.1, memory=8)
    obj.start(_linear(True))
    assert obj.dense.acc.item() == 1.0 and obj.dense.group_acc.tolist() == [1.0, 1.0]
    student, x = _linear(True), torch.from_numpy(data.images[rows])
    y = torch.from_numpy(data.labels[rows])
    seen = []
    for batch in torch.arange(len(rows)).split(12):
        logits = student(x[batch]).float()
        loss = obj.loss(student, logits, y[batch], x[batch], batch)
        codes = obj.codes[batch]
        assert loss.item() == pytest.approx(lagrangian(F.cross_entropy(logits, y[batch], reduction="none"), codes,
                                                       obj.multipliers, obj.dense).item())
        seen.append(obj.multipliers.clone())
    assert seen[-1][0] == 0 and all(s[0] == 0 for s in seen)   # group a: no drop, below the overall one
    assert seen[-1][1] > seen[len(seen) // 2][1] > 0           # group b: all wrong, rising
    obj.end_epoch(student, 1)
    rec = obj.record()
    assert rec["multipliers"]["a"] == [0.0] and rec["multipliers"]["b"][0] > 0
    assert rec["drop_gaps"]["b"] > 0.05 > rec["drop_gaps"]["a"] and rec["dense_train_accuracy"]["overall"] == 1.0


def test_fine_tuning_a_model_broken_for_one_group_raises_only_that_groups_multiplier():
    data = _dataset()
    obj, _ = _objective(data, epsilon=0.02, dual_lr=0.05, memory=8)
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-7, min_lr=0, augment_flip=False, augment_rotation_deg=0, precision="fp32",
                      device="cpu")
    fit(_linear(True), data, cfg, seed=0, objective=obj)  # too small a step size to repair group b in two epochs
    rec = obj.record()
    assert rec["multipliers"]["a"] == [0.0, 0.0]
    assert 0 < rec["multipliers"]["b"][0] < rec["multipliers"]["b"][1]
    assert rec["drop_gaps"]["b"] > 0.02 and json.dumps(rec)


def test_an_unknown_attribute_or_unlabelled_training_images_are_refused_naming_the_attribute():
    data = _dataset()
    with pytest.raises(ValueError, match=r"dataset toy has no attribute 'age' \(its attributes: gender\)"):
        _objective(data, attribute="age")
    codes = np.full(len(data), UNKNOWN)
    codes[data.indices("val")] = 0  # labels only outside the training split
    with pytest.raises(ValueError, match="attribute 'gender': none of the .* training images .* has a known group"):
        _objective(_dataset(codes))
    codes[data.indices("train")[:5]] = 1
    with pytest.raises(ValueError, match="attribute 'gender': only group 'b' has labelled training images"):
        _objective(_dataset(codes))
    for bad, message in [({}, "fine_tune: attribute: Field required"),
                         ({"attribute": "gender", "epsilon": -0.1}, "fine_tune: epsilon: Input should be greater than or equal to 0"),
                         ({"attribute": "gender", "dual_lr": 0}, "fine_tune: dual_lr: Input should be greater than 0")]:
        with pytest.raises(RecipeError, match=message):
            parse_recipe([{"cluster": {"clusters": 4, "fine_tune": {"objective": "constrained", **bad}}}])


def test_a_study_fine_tunes_with_constraints_and_records_the_multipliers(tiny_overrides):
    from conftest import finished_mlp_study

    step = {"clusters": 4, "epochs": 2, "fine_tune": {"objective": "constrained", "attribute": "gender"}}
    recipe = parse_recipe([{"cluster": step}])
    assert recipe.technique == "cluster-constrained" and recipe.label == "cluster 4 [epochs=2] [constrained attribute=gender]"
    out, store, runs = finished_mlp_study(tiny_overrides, [[{"cluster": step}]], epochs=1)
    store.close()
    details = json.loads(runs[runs.technique == "cluster-constrained"].details_json.iloc[0])["steps"]["fine_tune"]
    assert len(details) == 1
    rec = details[0]
    assert rec["objective"] == "constrained" and rec["attribute"] == "gender" and rec["epsilon"] == 0.02
    assert set(rec["multipliers"]) == {"female", "male"}
    assert all(len(v) == 2 and min(v) >= 0 for v in rec["multipliers"].values())
    assert all(v is not None for v in rec["drop_gaps"].values())  # both groups measured, though smaller than the memory
    assert set(rec["drop_gaps"]) == {"female", "male"} and 0 < rec["dense_train_accuracy"]["overall"] <= 1


def test_a_study_refuses_an_attribute_its_dataset_lacks_before_training(tiny_overrides):
    from pathlib import Path

    from faircompress.config import ConfigError, load_config
    from faircompress.study import run_study

    for step in ({"cluster": {"clusters": 4, "epochs": 1, "fine_tune": {"objective": "constrained", "attribute": "nope"}}},
                 {"prune": {"sparsity": 0.5, "epochs": 1, "fine_tune": {"objective": "constrained", "attribute": "nope"}}}):
        cfg = load_config(None, {**tiny_overrides, "recipes": [[step]]})
        with pytest.raises(ConfigError, match=r"recipe 1 \((cluster|prune)\): fine_tune: constrained: dataset synthetic has no attribute 'nope'"):
            run_study(cfg)
        assert not Path(cfg.output_dir).exists()  # nothing trained, nothing written
