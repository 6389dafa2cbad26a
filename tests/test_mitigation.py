"""Mitigation's plumbing: a step's `fine_tune` option is validated strictly, names its own report
family and label, keeps older recipes' ids, and its objective replaces cross-entropy in the
fine-tuning a study runs (an objective equal to cross-entropy reproduces plain fine-tuning exactly)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from faircompress.compress.recipes import RecipeError, parse_recipe
from faircompress.mitigate import OBJECTIVES, Objective, ObjectiveParams


class _CEParams(ObjectiveParams):
    smoothing: float = 0.0


class PlainCE(Objective):
    """Cross-entropy (with label smoothing), counting its calls and checking what it is given."""

    name, Params = "test-plain-ce", _CEParams
    calls: dict = {}

    def start(self, model):
        teacher = self.inputs.teacher()
        assert not teacher.training and sum(p.numel() for p in teacher.parameters()) == sum(p.numel() for p in model.parameters())
        PlainCE.calls = {"start": 1, "loss": 0, "end_epoch": [], "rows": set(), "n_train": len(self.inputs.train_rows)}

    def loss(self, model, logits, y, x, rows):
        PlainCE.calls["loss"] += 1
        PlainCE.calls["rows"] |= set(rows.tolist())
        assert len(rows) == len(y) == len(x) == len(logits) and logits.dtype == torch.float32
        assert torch.equal(torch.from_numpy(self.inputs.data.labels[self.inputs.train_rows[rows.cpu().numpy()]]).to(y.device), y)
        return F.cross_entropy(logits, y, label_smoothing=self.params.smoothing)

    def end_epoch(self, model, epoch):
        PlainCE.calls["end_epoch"].append(epoch)

    def end(self, model):
        PlainCE.calls["end"] = PlainCE.calls.get("end", 0) + 1

    def record(self):
        return {"batches": PlainCE.calls["loss"]}


@pytest.fixture()
def plain_ce():
    OBJECTIVES.discover()
    OBJECTIVES._items[PlainCE.name] = PlainCE
    yield PlainCE
    OBJECTIVES._items.pop(PlainCE.name)


def test_the_option_is_validated_and_named_in_labels_families_and_keys(plain_ce):
    plain = parse_recipe([{"prune": {"sparsity": 0.5}}])
    assert plain.to_config() == [{"prune": {"sparsity": 0.5, "scope": "per_tensor", "frequency": 32, "epochs": 2}}]  # ids kept
    mitigated = parse_recipe([{"prune": {"sparsity": 0.5, "fine_tune": {"objective": "test-plain-ce", "smoothing": 0.2}}}])
    assert mitigated.to_config()[0]["prune"]["fine_tune"] == {"objective": "test-plain-ce", "smoothing": 0.2}
    assert mitigated.technique == "prune-test-plain-ce" and mitigated.label == "prune 50% [test-plain-ce smoothing=0.2]"
    assert mitigated.key() != plain.key() and mitigated.level == plain.level
    cluster = parse_recipe([{"cluster": {"clusters": 4, "fine_tune": {"objective": "test-plain-ce"}}}])
    assert cluster.technique == "cluster-test-plain-ce" and cluster.label == "cluster 4 [test-plain-ce]"
    assert parse_recipe([{"cluster": {"clusters": 4}}]).technique == "cluster"
    for bad, message in [({"objective": "nope"}, "fine_tune: objective: unknown objective 'nope'"),
                         ({"smoothing": 0.2}, "fine_tune: a mapping naming its objective"),
                         ({"objective": "test-plain-ce", "smooth": 2}, "fine_tune: smooth: Extra inputs are not permitted")]:
        with pytest.raises(RecipeError, match=message):
            parse_recipe([{"prune": {"sparsity": 0.5, "fine_tune": bad}}])
    with pytest.raises(RecipeError, match="epochs is 0"):
        parse_recipe([{"cluster": {"clusters": 4, "epochs": 0, "fine_tune": {"objective": "test-plain-ce"}}}])


def test_an_objective_equal_to_cross_entropy_fine_tunes_exactly_as_plain_fine_tuning(plain_ce, tiny_overrides):
    from conftest import plain_and_mitigated

    found = plain_and_mitigated(tiny_overrides, {"objective": "test-plain-ce"})
    plain, mitigated = found["plain"], found["mitigated"]
    assert plain["preds"] == mitigated["preds"]
    assert plain["weights"].keys() == mitigated["weights"].keys()
    assert all(torch.equal(plain["weights"][k], mitigated["weights"][k]) for k in plain["weights"])  # bit for bit
    assert plain_ce.calls["end_epoch"] == [1, 2] and plain_ce.calls["loss"] > 0 and plain_ce.calls["end"] == 1
    n_train = plain_ce.calls["n_train"]  # every batch's rows index the training split; all but a skipped last one seen
    assert plain_ce.calls["rows"] <= set(range(n_train)) and len(plain_ce.calls["rows"]) >= n_train - 1
    assert mitigated["details"]["steps"]["fine_tune"] == [{"objective": "test-plain-ce", "smoothing": 0.0, "batches": plain_ce.calls["loss"]}]


def test_the_report_sets_each_mitigated_variant_beside_its_twin(plain_ce, tiny_overrides):
    from conftest import finished_mlp_study

    from faircompress.report import analysis as A
    from faircompress.report.mitigation import mitigation_figure, mitigation_table, twins
    from faircompress.report.results import load_results

    ce = {"objective": "test-plain-ce", "smoothing": 0.5}
    recipes = [[{"prune": {"sparsity": 0.5, "epochs": 1}}], [{"prune": {"sparsity": 0.5, "epochs": 1, "fine_tune": ce}}],
               [{"prune": {"sparsity": 0.7, "epochs": 1, "fine_tune": ce}}]]  # no twin: left out
    out, store, runs = finished_mlp_study({**tiny_overrides, "train.lr": 0.02}, recipes, epochs=3)  # a model that learns something
    res = load_results(store)
    store.close()
    pairs = twins(res)
    assert [(p.mitigated.label, p.twin.label, p.objective) for p in pairs] == [
        ("prune 50% [epochs=1] [test-plain-ce smoothing=0.5]", "prune 50% [epochs=1]", "test-plain-ce")]
    table = mitigation_table(res, n_boot=50, seed=0)
    assert set(table.attribute) == set(A.gap_groups(res)) and (table.variant == pairs[0].mitigated.label).all()
    for r in table.itertuples():
        gg = A.gap_groups(res)[r.attribute]
        mit = A.model_gaps(res, res.population(pairs[0].mitigated), r.attribute, gg)[0].mean()
        twin = A.model_gaps(res, res.population(pairs[0].twin), r.attribute, gg)[0].mean()
        assert r.gap == mit and r.gap_twin == twin and r.gap_change == mit - twin  # mitigated minus twin
        assert r.p_holm >= r.p or np.isnan(r.p)
    acc = (res.population(pairs[0].mitigated) == res.y_true).mean() - (res.population(pairs[0].twin) == res.y_true).mean()
    assert table.accuracy_change.iloc[0] == acc and table.accuracy_ci_low.iloc[0] <= table.accuracy_ci_high.iloc[0]
    assert (res.population(pairs[0].mitigated) != res.population(pairs[0].twin)).any()  # the objective changed the fine-tuning
    assert mitigation_figure(table, out / "figures").exists()
