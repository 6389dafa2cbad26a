"""Pruning methods (random, percentile) and distinctiveness pruning: their defining properties on
tiny hand-built models, the exported file's zeros, and the recipes' identity left as it was."""
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import TINY_DATA
from onnx import numpy_helper
from torch import nn

from faircompress.compress.distinctiveness import distinctiveness_prune, find_links
from faircompress.compress.export import export_onnx
from faircompress.compress.pruning import FixedMaskPruner, magnitude_masks, percentile_masks, prunable, random_masks
from faircompress.compress.recipes import STEPS, RecipeError, TuneContext, parse_recipe
from faircompress.config import TrainConfig, load_config
from faircompress.data.synthetic import SyntheticParams, generate
from faircompress.models import build_model
from faircompress.store import ResultStore
from faircompress.study import run_study
from faircompress.train import fit


@pytest.fixture(scope="module")
def tiny():
    return generate(SyntheticParams(**TINY_DATA))


def _ctx(tiny, seed=0):
    cfg = TrainConfig(epochs=1, batch_size=8, precision="fp32", device="cpu")
    return TuneContext(fine_tune=lambda m, e, after: fit(m, tiny, cfg.model_copy(update={"epochs": e}), seed, after_step=after),
                       seed=seed, images=lambda: tiny.images[:64])


def _small_cnn(seed=0):
    """A conv, a pooled dense layer and a head: 16 x 16 grey images in, 8 classes out."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                         nn.Linear(128, 32), nn.ReLU(), nn.Linear(32, 8))


def _step(name, **params):
    cls = STEPS.get(name)
    return cls(cls.Params(**params))


def _initializers(path):
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


# --- recipes: identity, labels, families ----------------------------------------------------------
def test_magnitude_recipes_keep_their_config_keys_and_labels():
    plain = parse_recipe([{"prune": {"sparsity": 0.5}}])
    spelled = parse_recipe([{"prune": {"sparsity": 0.5, "method": "magnitude"}}])
    assert plain.to_config() == spelled.to_config() == [{"prune": {"sparsity": 0.5, "scope": "per_tensor", "frequency": 32, "epochs": 2}}]
    assert plain.key() == spelled.key() == "d9048a4a879f"  # the key recipes had before `method` existed
    assert plain.label == "prune 50%" and plain.technique == "prune" and plain.steps[0].label() == "prune(sparsity=0.5)"
    for method in ("random", "percentile"):
        r = parse_recipe([{"prune": {"sparsity": 0.5, "method": method}}])
        assert r.label == f"prune 50% {method}" and r.technique == f"prune-{method}" and r.level == 0.5
        assert r.to_config()[0]["prune"]["method"] == method and r.key() != plain.key()
        assert parse_recipe(r.to_config()).key() == r.key()  # the normalised form parses to the same recipe
    with pytest.raises(RecipeError, match=r"\(prune\): frequency: only magnitude"):
        parse_recipe([{"prune": {"sparsity": 0.5, "method": "random", "frequency": 8}}])


# --- random ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("scope", ["per_tensor", "global"])
def test_random_pruning_removes_magnitudes_count_per_layer_at_random(scope):
    weights = prunable(_small_cnn())
    mag = magnitude_masks(weights, 0.6, scope)
    rand = random_masks(weights, 0.6, scope, torch.Generator().manual_seed(1))
    again = random_masks(weights, 0.6, scope, torch.Generator().manual_seed(1))
    other = random_masks(weights, 0.6, scope, torch.Generator().manual_seed(2))
    for k in weights:
        assert int((~rand[k]).sum()) == int((~mag[k]).sum()), k  # magnitude's count, layer by layer
        assert not torch.equal(rand[k], mag[k]) and torch.equal(rand[k], again[k]) and not torch.equal(rand[k], other[k])


def test_random_mask_is_fixed_through_fine_tuning_and_exported(tiny, tmp_path):
    model = _small_cnn()
    expected = random_masks(prunable(model), 0.5, generator=torch.Generator().manual_seed(7))
    _step("prune", sparsity=0.5, method="random", epochs=1).apply(model, _ctx(tiny, seed=7))
    inits = _initializers(export_onnx(model, tmp_path / "r.onnx", (1, 16, 16)))
    for name, keep in expected.items():
        w = inits[name]
        assert (w == 0).sum() == round(0.5 * w.size), name
        assert np.array_equal(w != 0, keep.numpy()), name  # the seed's mask, never recomputed by magnitude


def test_fixed_masks_are_not_updated_on_magnitudes_schedule():
    model = _small_cnn()
    masks = random_masks(prunable(model), 0.5, generator=torch.Generator().manual_seed(0))
    pruner = FixedMaskPruner(model, {k: m.clone() for k, m in masks.items()})
    with torch.no_grad():
        for w in pruner.weights.values():
            w.add_(1.0)  # an optimiser step moved every weight, pruned ones too
    pruner.after_step(32)  # magnitude's mask update step
    for k, w in pruner.weights.items():
        assert torch.equal(pruner.masks[k], masks[k]) and torch.equal(w != 0, masks[k]), k


# --- percentile ------------------------------------------------------------------------------------
def test_percentile_ignores_existing_zeros_where_magnitude_counts_them():
    w = torch.randn(20, 10, generator=torch.Generator().manual_seed(0))
    w.view(-1)[torch.randperm(200, generator=torch.Generator().manual_seed(1))[:80]] = 0  # 40 % zeros
    pct = percentile_masks({"w": w}, 0.5)["w"]
    assert int((~pct).sum()) == 140  # 1 - (1 - 0.4)(1 - 0.5) = 70 %
    survivors = w[pct].abs()
    assert survivors.min() >= w[(w != 0) & ~pct].abs().max()  # the smaller half of the non-zeros went
    assert int((~magnitude_masks({"w": w}, 0.5)["w"]).sum()) == 100  # magnitude: 50 % in all


def test_percentile_step_prunes_the_survivors_and_holds_the_zeros(tiny, tmp_path):
    model = _small_cnn()
    n = model[4].weight.numel()
    with torch.no_grad():
        model[4].weight.view(-1)[: int(0.4 * n)] = 0  # a layer with 40 % zeros
    _step("prune", sparsity=0.5, method="percentile", epochs=1).apply(model, _ctx(tiny))
    inits = _initializers(export_onnx(model, tmp_path / "p.onnx", (1, 16, 16)))
    assert (inits["4.weight"] == 0).sum() == int(0.4 * n) + round(0.5 * (n - int(0.4 * n)))  # 70 %, not magnitude's 50 %
    for name in ("0.weight", "6.weight"):  # dense kernels: the same count as magnitude's
        assert (inits[name] == 0).sum() == round(0.5 * inits[name].size), name


# --- distinctiveness -------------------------------------------------------------------------------
def _mlp(act):
    """8 inputs -> 6 hidden (5 orthogonal units and one to be set by the test) -> 3 outputs."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), act, nn.Linear(6, 3)).eval()
    q, _ = torch.linalg.qr(torch.randn(8, 8))
    with torch.no_grad():
        model[0].weight.copy_(torch.cat([q[:5], q[5:6]]))
        model[0].bias.zero_()
    return model


def _inputs(n=512, features=8):
    return np.random.default_rng(0).standard_normal((n, features)).astype(np.float32)


def test_a_duplicate_dense_unit_is_merged_exactly():
    model = _mlp(nn.Sigmoid())
    with torch.no_grad():
        model[0].weight[5] = model[0].weight[2]
        model[0].bias[5] = model[0].bias[2] = 0.3
    x = torch.from_numpy(_inputs())
    before = model(x).detach()
    _, record = distinctiveness_prune(model, x.numpy())
    (layer,) = record["layers"]
    assert layer["layer"] == "0" and layer["next"] == "2" and layer["kind"] == "dense"
    assert layer["removed"] == 1 and [p[:2] for p in layer["similar"]] in ([[2, 5]], [[5, 2]]) and layer["complementary"] == []
    gone = layer["similar"][0][1]
    assert (model[0].weight[gone] == 0).all() and model[0].bias[gone] == 0 and (model[2].weight[:, gone] == 0).all()
    assert torch.allclose(model(x), before, atol=1e-5)  # the network computes what it did


def test_a_complementary_pair_is_removed_together_and_orthogonal_units_stay():
    model = _mlp(nn.Tanh())
    with torch.no_grad():
        model[0].weight[5] = -model[0].weight[1]  # tanh(-z) = -tanh(z): activations at 180 degrees
        model[2].weight[:, 5] = model[2].weight[:, 1]  # so the two contributions cancel exactly
    x = torch.from_numpy(_inputs())
    before = model(x).detach()
    masks, record = distinctiveness_prune(model, x.numpy())
    (layer,) = record["layers"]
    assert layer["similar"] == [] and [p[:2] for p in layer["complementary"]] == [[1, 5]] and layer["complementary"][0][2] > 179.9
    assert layer["removed"] == 2 and record["share"] == pytest.approx(2 / 6)
    alive = [u for u in range(6) if model[0].weight[u].abs().sum() > 0]
    assert alive == [0, 2, 3, 4]  # the orthogonal units are left alone
    assert torch.allclose(model(x), before, atol=1e-5)


def test_a_duplicate_filter_is_merged_exactly_and_held_through_retraining():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 3, 3, padding=1)).eval()
    q, _ = torch.linalg.qr(torch.randn(18, 18))
    with torch.no_grad():
        model[0].weight.copy_(torch.cat([q[:4], q[1:2]]).view(5, 2, 3, 3))  # filter 4 duplicates filter 1
        model[0].bias.copy_(torch.tensor([0.1, 0.2, 0.0, -0.1, 0.2]))
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((64, 2, 6, 6)).astype(np.float32))
    before = model(x).detach()
    masks, record = distinctiveness_prune(model, x.numpy(), layers="conv")
    (layer,) = record["layers"]
    assert layer["kind"] == "conv" and [sorted(p[:2]) for p in layer["similar"]] == [[1, 4]] and layer["removed"] == 1
    assert torch.allclose(model(x), before, atol=1e-5)
    gone = layer["similar"][0][1]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # an optimiser step
    masks.after_step(1)
    assert (model[0].weight[gone] == 0).all() and model[0].bias[gone] == 0 and (model[2].weight[:, gone] == 0).all()


def test_links_are_found_through_functional_activations_and_not_across_residuals():
    mlp = build_model("pca_mlp", in_channels=10, num_classes=7, input_size=1, input="features").eval()
    links, _ = find_links(mlp, torch.from_numpy(_inputs(4, 10)).view(4, 10, 1, 1))
    assert [(l.producer, l.consumer, l.kind) for l in links] == [("hidden", "out", "dense")]  # the SFEW model: torch.sigmoid between

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.c(torch.relu(self.b(h)) + h)  # a's units also reach c past b

    links, skipped = find_links(Residual().eval(), torch.randn(4, 4))
    assert [(l.producer, l.consumer) for l in links] == [("b", "c")] and "residual" in skipped["a"]

    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)).flip(-1))  # input i of b is unit 3 - i of a

    links, skipped = find_links(Mixed().eval(), torch.randn(4, 4))
    assert links == [] and "mix" in skipped["a"]


def test_distinct_step_on_a_model_records_and_retrains(tiny):
    model = _small_cnn()
    ctx = _ctx(tiny)
    _step("distinct", similar_below=80, complementary_above=100, epochs=1).apply(model, ctx)
    record = ctx.details["distinct"]
    assert [r["layer"] for r in record["layers"]] == ["4"] and record["removed"] > 0
    assert "one for one" in record["skipped"]["0"]  # 8 filters pooled to 4 x 4 feed 128 inputs
    for r in record["layers"]:
        w = dict(model.named_parameters())[f"{r['layer']}.weight"]
        assert int((w.flatten(1).abs().sum(1) == 0).sum()) >= r["removed"], r["layer"]  # still zero after retraining
    assert parse_recipe([{"distinct": {}}]).label == "distinct 15°/165°" and parse_recipe([{"distinct": {}}]).level == 15
    with pytest.raises(ValueError, match="training images"):
        _step("distinct").apply(_small_cnn(), TuneContext(fine_tune=None, seed=0))


# --- a tiny study: the SFEW model pruned both ways ------------------------------------------------
def test_a_study_stores_the_families_and_what_distinct_found(tiny_overrides):
    recipes = [[{"prune": {"sparsity": 0.5, "method": "random", "epochs": 1}}],
               [{"distinct": {"similar_below": 60, "complementary_above": 120}}]]
    cfg = load_config(None, {**tiny_overrides, "model": {"name": "pca_mlp", "params": {"hidden": 30}}, "train.epochs": 1,
                             "evaluation.memory": False, "evaluation.latency": False, "recipes": recipes, "repeats": 1})
    run_study(cfg)
    store = ResultStore.open_existing(Path(cfg.output_dir))
    runs = store.runs()
    assert (runs.status == "finished").all(), runs[["status", "error"]]
    variants = runs[(runs.kind == "variant") & (runs.is_reference == 0)].set_index("technique")
    assert set(variants.index) == {"prune-random", "distinct"} and variants.level["distinct"] == 60
    details = json.loads(variants.details_json["distinct"])["steps"]["distinct"]
    (layer,) = details["layers"]
    assert layer["layer"] == "hidden" and layer["next"] == "out" and details["removed"] == layer["removed"] > 0
    inits = _initializers(Path(cfg.output_dir) / variants.artefact["distinct"])
    assert int((np.abs(inits["hidden.weight"]).sum(1) == 0).sum()) == layer["removed"]
    assert int((np.abs(inits["out.weight"]).sum(0) == 0).sum()) == layer["removed"]
    rand = _initializers(Path(cfg.output_dir) / variants.artefact["prune-random"])
    assert (rand["hidden.weight"] == 0).mean() == 0.5 and (rand["out.weight"] == 0).mean() == 0.5
    store.close()
