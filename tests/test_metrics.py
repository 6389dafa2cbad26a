import numpy as np
import pytest

from faircompress.data.dataset import UNKNOWN
from faircompress.evaluate.metrics import evaluate_predictions
from faircompress.evaluate.stats import subject_bootstrap_accuracy


def test_group_accuracy_gap_ratio_and_unknown_groups():
    y_true = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    y_pred = np.array([0, 1, 1, 1, 2, 0, 0, 0])  # correct: 1 0 1 1 1 0 1 0
    gender = np.array([0, 0, 0, 0, 1, 1, 1, UNKNOWN])
    ev = evaluate_predictions(y_true, y_pred, ["a", "b", "c"], {"gender": gender}, {"gender": ["f", "m"]})
    assert ev.accuracy == pytest.approx(5 / 8) and ev.n == 8  # unknown counts toward overall
    g = ev.groups.set_index("group")
    assert g.loc["f", "accuracy"] == pytest.approx(3 / 4) and g.loc["f", "count"] == 4
    assert g.loc["m", "accuracy"] == pytest.approx(2 / 3) and g.loc["m", "count"] == 3
    d = ev.disparity.iloc[0]
    assert d.gap == pytest.approx(3 / 4 - 2 / 3) and d.ratio == pytest.approx((2 / 3) / (3 / 4))
    assert d.worst_group == "m" and d.best_group == "f"
    rec = ev.per_class.set_index("class")["recall"]
    assert rec["a"] == pytest.approx(2 / 3) and rec["b"] == pytest.approx(2 / 3) and rec["c"] == pytest.approx(1 / 2)
    long = ev.long().set_index(["metric", "attribute", "group"]).value
    assert long[("gap", "gender", "")] == pytest.approx(d.gap) and long[("accuracy", "", "")] == pytest.approx(5 / 8)
    assert long[("accuracy", "gender", "m")] == pytest.approx(2 / 3) and long[("count", "gender", "m")] == 3
    assert long[("accuracy", "class", "c")] == pytest.approx(1 / 2)  # a class's recall


def test_a_registered_group_metric_is_computed_for_every_group_and_class():
    from faircompress.evaluate.metrics import GROUP_METRICS

    def wrong(y_true, y_pred):
        """Share of wrong predictions."""
        return float(np.mean(np.asarray(y_true) != np.asarray(y_pred)))

    GROUP_METRICS.register("error_rate")(wrong)
    try:
        ev = evaluate_predictions(np.array([0, 1, 1, 0]), np.array([0, 0, 1, 1]), ["a", "b"], {"g": np.array([0, 0, 1, 1])}, {"g": ["x", "y"]})
        long = ev.long().set_index(["metric", "attribute", "group"]).value
        assert long[("error_rate", "g", "x")] == 0.5 and long[("error_rate", "class", "a")] == 0.5
    finally:
        GROUP_METRICS._items.pop("error_rate")


def test_groups_absent_from_test_set_are_left_out_not_zero():
    ev = evaluate_predictions(np.array([0, 1]), np.array([0, 1]), ["a", "b"], {"age": np.array([0, 0])}, {"age": ["young", "old"]})
    assert list(ev.groups["group"]) == ["young"]
    assert ev.disparity.iloc[0].gap == 0


def test_subject_bootstrap_keeps_subjects_together():
    # two subjects per group, all-correct vs all-wrong subjects: group accuracy can only be 0, .5 or 1
    correct = np.array([1, 1, 0, 0, 1, 1, 1, 1], bool)
    subjects = np.array(["a", "a", "b", "b", "c", "c", "d", "d"])
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    boot = subject_bootstrap_accuracy(correct, subjects, groups, n_boot=500)
    assert set(np.round(boot[0], 6)) <= {0.0, 0.5, 1.0} and len(set(boot[0])) > 1
    assert (boot[1] == 1).all()
