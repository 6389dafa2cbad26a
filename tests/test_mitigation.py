"""Mitigation's plumbing: a step's `fine_tune` option is validated strictly, names its own report
family and label, keeps older recipes' ids, and its objective replaces cross-entropy in the
fine-tuning a study runs (an objective equal to cross-entropy reproduces plain fine-tuning exactly)."""
import pytest
import torch
import torch.nn.functional as F

from faircompress.compress.recipes import RecipeError, parse_recipe
from faircompress.mitigate import OBJECTIVES, Objective, ObjectiveParams


class _CEParams(ObjectiveParams):
    scale: float = 1.0


class PlainCE(Objective):
    """Cross-entropy times ``scale``, counting its calls and checking what it is given."""

    name, Params = "test-plain-ce", _CEParams
    calls: dict = {}

    def start(self, model):
        teacher = self.inputs.teacher()
        assert not teacher.training and sum(p.numel() for p in teacher.parameters()) == sum(p.numel() for p in model.parameters())
        PlainCE.calls = {"start": 1, "loss": 0, "end_epoch": [], "rows": set()}

    def loss(self, model, logits, y, x, rows):
        PlainCE.calls["loss"] += 1
        PlainCE.calls["rows"] |= set(rows.tolist())
        assert len(rows) == len(y) == len(x) == len(logits) and logits.dtype == torch.float32
        assert torch.equal(torch.from_numpy(self.inputs.data.labels[self.inputs.train_rows[rows.cpu().numpy()]]).to(y.device), y)
        return self.params.scale * F.cross_entropy(logits, y)

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
    mitigated = parse_recipe([{"prune": {"sparsity": 0.5, "fine_tune": {"objective": "test-plain-ce", "scale": 2}}}])
    assert mitigated.to_config()[0]["prune"]["fine_tune"] == {"objective": "test-plain-ce", "scale": 2.0}
    assert mitigated.technique == "prune-test-plain-ce" and mitigated.label == "prune 50% [test-plain-ce scale=2.0]"
    assert mitigated.key() != plain.key() and mitigated.level == plain.level
    cluster = parse_recipe([{"cluster": {"clusters": 4, "fine_tune": {"objective": "test-plain-ce"}}}])
    assert cluster.technique == "cluster-test-plain-ce" and cluster.label == "cluster 4 [test-plain-ce]"
    assert parse_recipe([{"cluster": {"clusters": 4}}]).technique == "cluster"
    for bad, message in [({"objective": "nope"}, "fine_tune: objective: unknown objective 'nope'"),
                         ({"scale": 2}, "fine_tune: a mapping naming its objective"),
                         ({"objective": "test-plain-ce", "scal": 2}, "fine_tune: scal: Extra inputs are not permitted")]:
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
    n_train = len(plain_ce.calls["rows"])
    assert n_train > 0 and plain_ce.calls["rows"] <= set(range(n_train + 1))
    assert mitigated["details"]["steps"]["fine_tune"] == [{"objective": "test-plain-ce", "scale": 1.0, "batches": plain_ce.calls["loss"]}]
