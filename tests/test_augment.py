"""The SFEW paper's data protocol (Dixit et al. 2.2) as options: SFEW's random 10 % test split (not
subject-disjoint, and said so in the report) and the offline augmentation that triples the training set."""
import json

import numpy as np
import pandas as pd
import pytest

from fakes import make_sfew
from faircompress.data.registry import identify, load_dataset, split_note


def _counts(ds):
    return {s: int((ds.split == i).sum()) for i, s in enumerate(("train", "val", "test"))}


# --- SFEW: the random 10 % test split ----------------------------------------------------------------
def test_sfew_random_split_pools_train_and_val_and_draws_a_seeded_tenth(tmp_path):
    make_sfew(tmp_path, per_class=5)  # 35 Train and 35 Val images
    base = {"root": tmp_path, "image_size": 16, "val_fraction": 0.2}
    ds = load_dataset("sfew", {**base, "test_split": "random"})
    assert len(ds) == 70 and _counts(ds) == {"train": 50, "val": 13, "test": 7}  # 10 % of 70, then 20 % of the other 63
    part = np.array([k.split("/")[0] for k in ds.subjects])                          # pooled: both folders in every split
    assert {p: set(part[ds.split == i]) for p, i in (("train", 0), ("val", 1), ("test", 2))} == dict.fromkeys(
        ("train", "val", "test"), {"Train", "Val"})
    again = load_dataset("sfew", {**base, "test_split": "random"})
    assert np.array_equal(again.split, ds.split)                                      # seeded
    other = load_dataset("sfew", {**base, "test_split": "random", "seed": 1})
    assert not np.array_equal(other.split, ds.split)
    fifth = load_dataset("sfew", {**base, "test_split": "random", "test_fraction": 0.2})
    assert _counts(fifth)["test"] == 14
    own = load_dataset("sfew", base)                                                  # the default: Val is the test split
    assert all(k.startswith("Val/") for k in own.subjects[own.split == 2]) and _counts(own)["test"] == 35
    assert any("not subject-disjoint" in n for n in _notes(ds)) and not any("not subject-disjoint" in n for n in _notes(own))


def _notes(ds):
    from faircompress.data.common import report_of

    return report_of(ds).notes


def test_sfew_split_fields_leave_the_identity_of_existing_studies_alone(tmp_path):
    ident = identify("sfew", {"root": "/data/sfew"})
    assert "test_split" not in ident.params.model_dump() and "test_fraction" not in ident.params.model_dump()
    assert identify("sfew", {"root": "/data/sfew", "test_split": "val"}).key == ident.key
    random = identify("sfew", {"root": "/data/sfew", "test_split": "random"})
    assert random.key != ident.key and random.params.model_dump(mode="json")["test_fraction"] == 0.1
    assert identify("sfew", {"root": "/data/sfew", "test_split": "random", "test_fraction": 0.1}).key == random.key
    with pytest.raises(ValueError, match="test_fraction goes with test_split 'random'"):
        identify("sfew", {"root": "/data/sfew", "test_fraction": 0.2})


def test_the_report_says_a_random_split_is_not_subject_disjoint():
    from faircompress.report.build import _header, _html

    def header(params):
        cfg = {"dataset": {"name": "sfew", "params": params}, "model": {"name": "paper_cnn"}}
        runs = pd.DataFrame([{"study": "s", "config_json": json.dumps(cfg), "selection": "val", "versions_json": None,
                              "git_commit": None}])
        return _header(runs, None)

    said = header({"root": "/data/sfew", "test_split": "random", "test_fraction": 0.1})
    assert said["test split"] == split_note("sfew", {"root": "/data/sfew", "test_split": "random"})
    assert "a random 10 % of the Train and Val images" in said["test split"] and "not subject-disjoint" in said["test split"]
    assert "not subject-disjoint" in _html(said, [], [])
    assert "test split" not in header({"root": "/data/sfew"})  # SFEW's own person-independent protocol: nothing to add
