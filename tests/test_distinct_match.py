"""Distinctiveness pruning's matched percentile control (Dixit et al. 3.3, Fig. 1): it prunes by
percentile at exactly the largest share of units a layer would lose, its masks leave the existing
zeros out, both it and distinctiveness record test accuracy per retraining epoch, and the report's
table and figure set them side by side."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_DATA, finished_mlp_study
from torch import nn

from faircompress.compress.distinctiveness import distinctiveness_prune, matched_percentile
from faircompress.compress.pruning import percentile_masks
from faircompress.compress.recipes import STEPS, TuneContext, parse_recipe
from faircompress.config import TrainConfig, load_config
from faircompress.data.synthetic import SyntheticParams, generate
from faircompress.train import fit


@pytest.fixture(scope="module")
def tiny():
    return generate(SyntheticParams(**TINY_DATA))


def _net() -> nn.Sequential:
    """8 -> 6 -> 4 -> 3 sigmoid MLP: two of the six first-layer units copy others (a share of 1/3),
    one of the four second-layer units copies another (1/4); the head has zeros of an earlier step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.Sigmoid(), nn.Linear(6, 4), nn.Sigmoid(), nn.Linear(4, 3)).eval()
    q, _ = torch.linalg.qr(torch.randn(8, 8))
    r, _ = torch.linalg.qr(torch.randn(6, 6))
    with torch.no_grad():
        model[0].weight.copy_(torch.cat([q[:4], q[1:2], q[2:3]]))  # units 4 and 5 copy units 1 and 2
        model[0].bias.zero_()
        model[2].weight.copy_(torch.cat([3 * r[:3], 3 * r[1:2]]))  # unit 3 copies unit 1
        model[2].bias.zero_()
        model[4].weight[0, :2] = 0
    return model


def _inputs(n: int = 512) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32)


def test_the_control_prunes_every_kernel_at_the_largest_share_distinctiveness_finds():
    _, found = distinctiveness_prune(_net(), _inputs())
    assert [(r["layer"], r["removed"], r["units"]) for r in found["layers"]] == [("0", 2, 6), ("2", 1, 4)]

    model = _net()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    masks, record = matched_percentile(model, _inputs())
    assert record["percent"] == pytest.approx(2 / 6) and record["largest_layer"] == "0" and record["control"] == "percentile"
    assert [layer["share"] for layer in record["found"]["layers"]] == pytest.approx([2 / 6, 1 / 4])
    expected = percentile_masks({k: before[k] for k in ("0.weight", "2.weight", "4.weight")}, 2 / 6)
    for k, keep in expected.items():
        w = model.state_dict()[k]
        alive = before[k] != 0
        assert torch.equal(w != 0, keep) and torch.equal(w[keep], before[k][keep]), k  # the rest as it was: nothing merged
        assert record["kernels"][k]["pruned"] == int((alive & ~keep).sum()) == round(2 / 6 * int(alive.sum())), k
    assert record["kernels"]["4.weight"] == {"size": 12, "zeros_before": 2, "pruned": round(2 / 6 * 10)}  # zeros not counted
    for k in ("0.bias", "2.bias", "4.bias"):
        assert torch.equal(model.state_dict()[k], before[k]), k  # biases untouched, no merge's compensation
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # an optimiser step
    masks.after_step(1)
    assert all(torch.equal(model.state_dict()[k] != 0, keep) for k, keep in expected.items())


def test_the_control_prunes_only_the_kinds_of_layer_distinctiveness_looks_at():
    model = nn.Sequential(nn.Conv2d(2, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 3, 3, padding=1), nn.Flatten(), nn.Linear(48, 2)).eval()
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(18, 18))
    with torch.no_grad():
        model[0].weight.copy_(torch.cat([q[:4], q[1:2]]).view(5, 2, 3, 3))  # filter 4 duplicates filter 1: 1/5
    images = np.random.default_rng(0).standard_normal((32, 2, 4, 4)).astype(np.float32)
    _, record = matched_percentile(model, images, layers="conv")
    assert record["percent"] == pytest.approx(1 / 5) and set(record["kernels"]) == {"0.weight", "2.weight"}
    assert (model[4].weight != 0).all()  # the dense head is left whole


def _ctx(tiny, epochs_seen: list) -> TuneContext:
    cfg = TrainConfig(epochs=2, batch_size=8, precision="fp32", device="cpu")

    def fine_tune(model, e, after, on_epoch=None):
        def each(log):
            epochs_seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            on_epoch(log)

        return fit(model, tiny, cfg.model_copy(update={"epochs": e}), 0, after_step=after, on_epoch=each)

    def accuracy(model, split):
        idx = tiny.indices(split)
        with torch.no_grad():
            model.eval()
            return float((model(torch.from_numpy(tiny.images[idx]).float()).argmax(1).numpy() == tiny.labels[idx]).mean())

    return TuneContext(fine_tune=fine_tune, seed=0, images=lambda: tiny.images[:64], accuracy=accuracy)


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                         nn.Linear(128, 32), nn.ReLU(), nn.Linear(32, 8))


@pytest.mark.parametrize("control", ["none", "percentile"])
def test_distinct_and_its_control_record_test_accuracy_per_retraining_epoch(tiny, control):
    cls = STEPS.get("distinct")
    step = cls(cls.Params(similar_below=80, complementary_above=100, epochs=2, control=control))
    model, seen = _cnn(), []
    ctx = _ctx(tiny, seen)
    unpruned = ctx.accuracy(_cnn(), "test")
    step.apply(model, ctx)
    rec = ctx.details["distinct"]
    assert rec["unpruned_test_acc"] == unpruned and rec["epochs"] == 2 and rec["start_test_acc"] is not None
    assert [e["epoch"] for e in rec["per_epoch"]] == [1, 2] and len(seen) == 2
    tests = [e["test_acc"] for e in rec["per_epoch"]]
    assert all(0 <= t <= 1 for t in tests) and rec["best_test_acc"] == max(tests) and tests[rec["best_test_epoch"] - 1] == max(tests)
    reach = rec["reaches_unpruned_epoch"]
    assert reach is None and max(tests) < unpruned or tests[reach - 1] >= unpruned > max(tests[: reach - 1], default=-1)
    if control == "percentile":
        assert rec["percent"] == max(r["share"] for r in rec["found"]["layers"]) > 0
        for k, r in rec["kernels"].items():  # the pruned weights stayed zero in every epoch
            assert all(int((state[k] == 0).sum()) >= r["zeros_before"] + r["pruned"] for state in seen), k
    json.dumps(rec)


def test_the_control_is_its_own_family_and_leaves_older_recipes_ids():
    plain = parse_recipe([{"distinct": {"similar_below": 45, "epochs": 25}}])
    control = parse_recipe([{"distinct": {"similar_below": 45, "epochs": 25, "control": "percentile"}}])
    assert plain.to_config() == [{"distinct": {"similar_below": 45.0, "complementary_above": 165.0, "layers": "both", "epochs": 25}}]
    assert (plain.technique, control.technique) == ("distinct", "distinct-percentile") and control.level == 45
    assert control.label == "distinct 45°/165° percentile control [epochs=25]" and plain.key() != control.key()


def test_a_tiny_study_sets_distinct_beside_its_exact_control_and_else_the_nearest(tiny_overrides):
    from faircompress.report.build import write_report
    from faircompress.report.lottery import distinct_curves, distinct_match_table
    from faircompress.report.results import load_results
    recipes = [[{"distinct": {"similar_below": 85, "complementary_above": 95, "epochs": 1}}],
               [{"distinct": {"similar_below": 85, "complementary_above": 95, "epochs": 1, "control": "percentile"}}],
               [{"distinct": {"similar_below": 80, "complementary_above": 100}}],
               [{"prune": {"sparsity": 0.5, "method": "percentile", "epochs": 0}}]]
    out, store, runs = finished_mlp_study(tiny_overrides, recipes, epochs=1)
    res = load_results(store)
    table = distinct_match_table(res).set_index("similar_below")
    exact, nearest = table.loc[85.0], table.loc[80.0]
    assert exact.match == "exact" and exact.matched_percentile == "distinct 85°/95° percentile control [epochs=1]"
    assert exact.percentile_level == pytest.approx(exact.largest_layer_share) and exact.reached_unpruned_percentile.endswith("of 1")
    assert nearest.match == "nearest" and nearest.matched_percentile == "prune 50% percentile [epochs=0]"
    assert nearest.reached_unpruned_distinct == "—"  # not retrained: nothing recorded per epoch
    path = distinct_curves(res, out / "figures")
    assert path is not None and path.exists()
    store.close()
    report = write_report(out, n_boot=20, faces=False)
    assert "distinct_match" in report.tables and (out / "figures" / "distinct_match.png").exists()
    assert "own control (control: percentile, the same analysis and retraining)" in report.html.read_text()


def _two_seed_results():
    """A hand-made study: distinct at 45° and its control, two runs each, with made-up records."""
    from faircompress.report.results import StudyResults, Variant

    y = np.array([0, 1, 0, 1])
    runs, variants, preds = [], [], {}
    for control, accs, preds_of in (("none", ([0.3, 0.4], [0.2, 0.5]), ([0, 0, 0, 0], [0, 1, 1, 1])),
                                    ("percentile", ([0.45, 0.5], [0.4, 0.6]), ([0, 1, 0, 1], [0, 1, 0, 0]))):
        params = {"similar_below": 45.0, "complementary_above": 165.0, "layers": "both", "epochs": 2}
        params |= {"control": control} if control != "none" else {}
        ids = []
        for seed, (per_epoch, pred) in enumerate(zip(accs, preds_of)):
            rec = {"similar_below": 45.0, "complementary_above": 165.0, "unpruned_test_acc": 0.5, "start_test_acc": 0.1, "epochs": 2,
                   "per_epoch": [{"epoch": i + 1, "test_acc": a} for i, a in enumerate(per_epoch)], "best_test_acc": max(per_epoch),
                   "reaches_unpruned_epoch": next((i + 1 for i, a in enumerate(per_epoch) if a >= 0.5), None)}
            rec |= ({"layers": [{"layer": "conv", "share": 0.25 * (seed + 1)}], "share": 0.1} if control == "none" else
                    {"percent": 0.25 * (seed + 1), "found": {}})
            ids.append(run_id := f"{control}-{seed}")
            runs.append({"run_id": run_id, "recipe_json": json.dumps([{"distinct": params}]), "details_json": json.dumps({"steps": {"distinct": rec}})})
            preds[run_id] = np.array(pred)
        label = "distinct 45°/165°" + (" percentile control" if control != "none" else "") + " [epochs=2]"
        variants.append(Variant(control, label, "distinct" if control == "none" else "distinct-percentile", 45.0, False, tuple(ids)))
    return StudyResults(["a", "b"], {}, {}, np.zeros(4), y, pd.DataFrame(runs), variants, preds)


def test_the_table_and_figure_give_means_and_spreads_over_runs(tmp_path):
    from faircompress.report.lottery import distinct_curves, distinct_match_table

    res = _two_seed_results()
    (row,) = distinct_match_table(res).to_dict("records")
    assert row["match"] == "exact" and row["runs"] == 2 and row["largest_layer_share"] == row["percentile_level"] == pytest.approx(0.375)
    assert row["accuracy_distinct"] == pytest.approx(0.625) and row["accuracy_distinct_std"] == pytest.approx(np.std([0.5, 0.75], ddof=1))
    assert row["accuracy_percentile"] == pytest.approx(0.875) and row["accuracy_percentile_std"] == pytest.approx(np.std([1, 0.75], ddof=1))
    assert row["best_test_acc_percentile"] == pytest.approx(0.55) and row["best_test_acc_percentile_std"] == pytest.approx(np.std([0.5, 0.6], ddof=1))
    assert (row["reached_unpruned_distinct"], row["reached_unpruned_percentile"]) == ("1 of 2", "2 of 2")
    assert distinct_curves(res, tmp_path).exists()
