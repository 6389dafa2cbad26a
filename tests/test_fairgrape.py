"""FairGRAPE pruning (`prune: {method: fairgrape, attribute: ...}`): its defining property (a weight
only the minority group's loss depends on is kept where magnitude pruning drops it), the importance
against a hand computation, exact per-kernel counts, the recipe's validation and identity, a study
that runs it (paired with magnitude pruning in the report's mitigation section), and the refusal of
data without group labels."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY_DATA
from torch import nn

from faircompress.compress import fairgrape as fg
from faircompress.compress.fairgrape import balanced_keep, fairgrape_prune, group_codes, group_importance, level_schedule
from faircompress.compress.pruning import magnitude_masks, prunable
from faircompress.compress.recipes import STEPS, RecipeError, TuneContext, parse_recipe
from faircompress.config import ConfigError, TrainConfig
from faircompress.data.dataset import UNKNOWN, FaceDataset
from faircompress.data.synthetic import SyntheticParams, generate
from faircompress.train import fit


def _features(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> FaceDataset:
    """A features table (N, F, 1, 1) with two classes and a two-group attribute, all in train."""
    n = len(x)
    return FaceDataset(name="toy", images=x.astype(np.float32)[:, :, None, None], labels=y.astype(np.int64), class_names=["a", "b"],
                       attributes={"group": groups.astype(np.int64)}, attribute_groups={"group": ["majority", "minority"]},
                       subjects=np.arange(n).astype(str), split=np.zeros(n, dtype=np.int8))


def _minority_case() -> tuple[nn.Module, FaceDataset]:
    """A linear model whose weight (0, 3), small, is the only one the minority's loss depends on: the
    minority's images have feature 3 alone, the majority's features 0-2 alone; weight (1, 3) is 0."""
    rng = np.random.default_rng(0)
    maj, mino = 48, 8
    x = np.zeros((maj + mino, 4))
    x[:maj, :3] = rng.normal(size=(maj, 3))
    x[maj:, 3] = rng.choice([-1.0, 1.0], size=mino)
    y = np.concatenate([(x[:maj, 0] > 0), (x[maj:, 3] > 0)]).astype(int)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, -0.8, 0.9, 0.05], [-1.0, 0.7, -0.6, 0.0]]))
    return model, _features(x, y, np.r_[np.zeros(maj), np.ones(mino)])


def _ctx(data: FaceDataset, fine_tune=None) -> TuneContext:
    return TuneContext(fine_tune=fine_tune or (lambda *a, **k: None), seed=0, training_data=lambda: data)


# --- the defining property ---------------------------------------------------------------------
@pytest.mark.parametrize("rounds", [1, 3])
def test_a_weight_only_the_minority_needs_is_kept_where_magnitude_drops_it(rounds):
    model, data = _minority_case()
    w = model[1].weight.detach().clone()
    assert not magnitude_masks({"w": w}, 0.5)["w"][0, 3]  # magnitude prunes the small weight
    masks, record = fairgrape_prune(model, lambda: prunable(model), {"1.weight": 0.5}, "group", rounds, _ctx(data), lambda m: None)
    kept = masks["1.weight"]
    assert kept[0, 3] and int(kept.sum()) == 4
    assert torch.equal(model[1].weight.detach() != 0, kept)  # the model holds the mask
    last = record["rounds"][-1]
    assert record["groups"] == ["majority", "minority"] and len(record["rounds"]) == rounds
    assert last["minority"] == pytest.approx(1.0)  # all of the minority's importance kept (magnitude: none)


def test_kept_shares_track_each_groups_share_of_the_kernel():
    """On a large kernel (steps of several weights), every group keeps about the same fraction of its own importance."""
    gen = torch.Generator().manual_seed(0)
    imp = torch.rand(3, 20_000, generator=gen) ** 4 * torch.tensor([[1.0], [0.2], [5.0]])
    alive = torch.rand(20_000, generator=gen) > 0.1
    kept = balanced_keep(imp, alive, 2_000)
    assert int(kept.sum()) == 2_000 and not (kept & ~alive).any()
    retained = (imp * kept).sum(1) / (imp * alive).sum(1)
    assert float(retained.max() / retained.min()) < 1.05
    assert torch.equal(balanced_keep(imp, alive, 30_000), alive)  # keeping more than is alive keeps what is alive


def test_greedy_by_one_weight_follows_the_authors_rule():
    """Two groups, one kernel of 4: group 0 (larger target) first, then the group furthest below its share."""
    imp = torch.tensor([[4.0, 3.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.5]])
    assert balanced_keep(imp, torch.ones(4, dtype=torch.bool), 2).tolist() == [True, False, True, False]
    assert balanced_keep(imp, torch.tensor([False, True, True, True]), 2).tolist() == [False, True, True, False]


# --- importance against a hand computation --------------------------------------------------------
def test_importance_equals_a_hand_computation(monkeypatch):
    monkeypatch.setattr(fg, "SCORE_BATCH", 3)  # two batches: importance sums over them
    W = np.array([[0.5, -1.0], [2.0, 0.25]])
    x = np.array([[1.0, 2.0], [0.5, -1.0], [-1.0, 1.0], [2.0, 0.0], [1.0, 1.0]])
    y, g = np.array([0, 1, 1, 0, 1]), np.array([0, 1, 0, UNKNOWN, 1])
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor(W))
    data = _features(x, y, np.maximum(g, 0))
    got = group_importance(model, prunable(model), data.images, y, g, 2)["1.weight"].numpy()
    want = np.zeros((2, 4))
    for rows in ([0, 1, 2], [3, 4]):
        for c in (0, 1):
            mine = [r for r in rows if g[r] == c]
            if not mine:
                continue
            logits = x[mine] @ W.T
            p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
            grad = (p - np.eye(2)[y[mine]]).T @ x[mine] / len(mine)  # d mean CE / dW
            want[c] += ((W * grad) ** 2).flatten()
    np.testing.assert_allclose(got, want, rtol=1e-5)


# --- counts, rounds, the step ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    return generate(SyntheticParams(**TINY_DATA))


def _small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                         nn.Linear(128, 32), nn.ReLU(), nn.Linear(32, 8))


def _step(**params):
    cls = STEPS.get("prune")
    return cls(cls.Params(**params))


@pytest.mark.parametrize("sparsity", [0.7, {"0.weight": 0.3, "default": 0.8}])
def test_each_kernel_ends_at_exactly_its_level_and_stays_there_through_fine_tuning(tiny, sparsity):
    model = _small_cnn()
    cfg = TrainConfig(epochs=1, batch_size=8, precision="fp32", device="cpu")
    tunes = []

    def fine_tune(m, epochs, after, **kw):
        tunes.append(epochs)
        return fit(m, tiny, cfg.model_copy(update={"epochs": epochs}), 0, after_step=after)

    ctx = _ctx(tiny.subset("train"), fine_tune)
    _step(sparsity=sparsity, method="fairgrape", attribute="skin_tone", rounds=3, round_epochs=1, epochs=1).apply(model, ctx)
    levels = {"0.weight": 0.3, "4.weight": 0.8, "6.weight": 0.8} if isinstance(sparsity, dict) else dict.fromkeys(prunable(model), 0.7)
    for k, w in prunable(model).items():
        assert int((w == 0).sum()) == int(round(levels[k] * w.numel())), k
    assert tunes == [1, 1, 1]  # between the three rounds, then the step's own fine-tuning
    record = ctx.details["prune"]["fairgrape"]
    assert record["groups"] == ["light", "medium", "dark"] and len(record["rounds"]) == 3
    assert all(0 < v <= 1 for r in record["rounds"] for v in r.values() if v is not None)
    assert level_schedule(0.7, 3)[-1] == 0.7 and level_schedule(0.7, 3)[0] == pytest.approx(1 - 0.3 ** (1 / 3))


def test_the_recipe_is_validated_and_names_its_own_family():
    r = parse_recipe([{"prune": {"method": "fairgrape", "sparsity": 0.9, "attribute": "gender"}}])
    assert r.technique == "prune-fairgrape" and r.label == "prune 90% fairgrape gender" and r.level == 0.9
    assert r.to_config()[0]["prune"]["attribute"] == "gender" and "rounds" not in r.to_config()[0]["prune"]
    assert parse_recipe(r.to_config()).key() == r.key()
    assert parse_recipe([{"prune": {"sparsity": 0.5}}]).key() == "d9048a4a879f"  # older recipes keep their keys
    for bad, message in [({"method": "fairgrape", "sparsity": 0.9}, "attribute: required with method fairgrape"),
                         ({"sparsity": 0.9, "attribute": "gender"}, "attribute: only fairgrape pruning has it, not magnitude"),
                         ({"method": "random", "sparsity": 0.9, "rounds": 2}, "rounds: only fairgrape pruning has it"),
                         ({"method": "fairgrape", "sparsity": 0.9, "attribute": "gender", "scope": "global"}, "scope: fairgrape keeps")]:
        with pytest.raises(RecipeError, match=message):
            parse_recipe([{"prune": bad}])


# --- data without group labels, and a study -------------------------------------------------------
def test_data_without_group_labels_is_refused(tiny, tiny_overrides):
    with pytest.raises(ValueError, match="no attribute 'race' .*its attributes: gender, skin_tone, age"):
        group_codes(tiny, "race")
    unknown = tiny.take(np.arange(len(tiny)))
    unknown.attributes["gender"][:] = UNKNOWN
    with pytest.raises(ValueError, match="no training image of dataset synthetic has a known 'gender' group"):
        _step(sparsity=0.5, method="fairgrape", attribute="gender").apply(_small_cnn(), _ctx(unknown))
    from faircompress.config import load_config
    from faircompress.study import run_study

    cfg = load_config(None, {**tiny_overrides, "recipes": [[{"prune": {"method": "fairgrape", "sparsity": 0.5, "attribute": "race"}}]]})
    with pytest.raises(ConfigError, match=r"recipe 1 \(prune\): attribute: dataset synthetic has no attribute 'race'"):
        run_study(cfg)


def test_a_study_with_fairgrape_pruning_finishes(tiny_overrides):
    from conftest import finished_mlp_study

    from faircompress.report.mitigation import twins
    from faircompress.report.results import load_results

    fairgrape = {"method": "fairgrape", "sparsity": 0.5, "attribute": "gender", "epochs": 1}
    recipes = [[{"prune": fairgrape}], [{"prune": {**fairgrape, "sparsity": 0.7, "rounds": 2, "round_epochs": 1}}],
               [{"prune": {"sparsity": 0.5, "epochs": 1}}], [{"prune": {"sparsity": 0.7, "epochs": 1}}],
               [{"prune": {"sparsity": 0.5, "epochs": 1, "method": "percentile"}}]]
    out, store, runs = finished_mlp_study(tiny_overrides, recipes, epochs=1)
    pairs = twins(load_results(store))  # the report's mitigation section: fairgrape beside a fixed mask where it can
    store.close()
    assert [(p.mitigated.label, p.twin.label, p.objective) for p in pairs] == [
        ("prune 50% fairgrape gender [epochs=1]", "prune 50% percentile [epochs=1]", "fairgrape (gender)"),
        ("prune 70% fairgrape gender [epochs=1, rounds=2, round_epochs=1]", "prune 70% [epochs=1]",
         "fairgrape (gender, +1 epochs between rounds)")]
    row = runs[runs.technique == "prune-fairgrape"].iloc[0]
    assert row.label.startswith("prune 50% fairgrape gender")
    record = json.loads(row.details_json)["steps"]["prune"]["fairgrape"]
    assert record["attribute"] == "gender" and len(record["rounds"]) == 5
    kernels = json.loads(row.details_json)["kernels"]
    assert kernels  # the exported file's kernels were measured
