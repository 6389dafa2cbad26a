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

    def header(params, **dataset):
        cfg = {"dataset": {"name": "sfew", "params": params, **dataset}, "model": {"name": "paper_cnn"}}
        runs = pd.DataFrame([{"study": "s", "config_json": json.dumps(cfg), "selection": "val", "versions_json": None,
                              "git_commit": None}])
        return _header(runs, None)

    said = header({"root": "/data/sfew", "test_split": "random", "test_fraction": 0.1})
    assert said["test split"] == split_note("sfew", {"root": "/data/sfew", "test_split": "random"})
    assert "a random 10 % of the Train and Val images" in said["test split"] and "not subject-disjoint" in said["test split"]
    assert "not subject-disjoint" in _html(said, [], [])
    plain = header({"root": "/data/sfew"})
    assert "test split" not in plain and "augmentation" not in plain  # SFEW's own person-independent protocol: nothing to add
    aug = header({"root": "/data/sfew"}, augment={"copies": 2, "seed": 0})["augmentation"]
    assert aug.startswith("offline: 2 augmented copies of every training image") and "val and test not augmented" in aug


# --- offline augmentation ----------------------------------------------------------------------------
from faircompress.data import augment as A  # noqa: E402
from faircompress.data.augment import AugmentSpec, augment_offline  # noqa: E402
from faircompress.data.dataset import FaceDataset  # noqa: E402


def _dataset(channels=1, n=24, size=16, seed=0):
    rng = np.random.default_rng(seed)
    split = np.array([0, 0, 0, 1, 2, 0] * (n // 6), dtype=np.int8)  # 12 train, 4 val, 4 test ... interleaved
    return FaceDataset(name="tiny", images=rng.integers(0, 256, (n, channels, size, size), dtype=np.uint8),
                       labels=rng.integers(0, 3, n), class_names=["a", "b", "c"],
                       attributes={"gender": rng.integers(-1, 2, n)}, attribute_groups={"gender": ["f", "m"]},
                       subjects=np.array([f"s{i % 5}" for i in range(n)]), split=split, meta={"source": "here"})


@pytest.mark.parametrize("channels", [1, 3])
def test_only_train_grows_by_the_copies_and_copies_follow_their_source(channels):
    ds = _dataset(channels)
    out = augment_offline(ds, AugmentSpec(copies=2))
    n, train = len(ds), ds.indices("train")
    assert _counts(out) == {"train": 3 * len(train), "val": _counts(ds)["val"], "test": _counts(ds)["test"]}
    assert np.array_equal(out.images[:n], ds.images) and np.array_equal(out.split[:n], ds.split)  # originals keep their indices
    for s in ("val", "test"):
        assert np.array_equal(out.indices(s), ds.indices(s)) and np.array_equal(out.images[out.indices(s)], ds.images[ds.indices(s)])
    source = np.tile(train, 2)                                  # copy k of image i sits at n + k * len(train) + its rank
    assert np.array_equal(out.labels[n:], ds.labels[source]) and np.array_equal(out.subjects[n:], ds.subjects[source])
    assert np.array_equal(out.attributes["gender"][n:], ds.attributes["gender"][source]) and (out.split[n:] == 0).all()
    assert out.images.shape[1:] == ds.images.shape[1:] and out.images.dtype == np.uint8
    assert not np.array_equal(out.images[n:], ds.images[source])  # the copies are transformed
    assert json.loads(out.meta[A.META_KEY])["copies"] == 2 * len(train) and out.meta["source"] == "here"
    assert augment_offline(ds, None) is ds


def test_augmentation_is_deterministic_given_its_seed():
    ds = _dataset()
    one, two = augment_offline(ds, {"copies": 1, "seed": 0}), augment_offline(ds, {"copies": 1, "seed": 0})
    assert one.images.tobytes() == two.images.tobytes()
    assert one.images.tobytes() != augment_offline(ds, {"copies": 1, "seed": 1}).images.tobytes()
    # a copy depends on its image, copy and seed only: not on the other images
    fewer = ds.take(np.arange(12))
    n_train = len(fewer.indices("train"))
    assert np.array_equal(augment_offline(fewer, {"copies": 1}).images[12:], one.images[len(ds):len(ds) + n_train])


def test_each_transform_does_what_it_says():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (16, 16, 1), dtype=np.uint8)
    assert np.array_equal(A.hflip(A.hflip(img)), img) and np.array_equal(A.hflip(img)[:, 0], img[:, -1])
    assert np.array_equal(A.shift_scale_rotate(img, 0, 1, 0, 0), img)
    assert np.array_equal(A.shift_scale_rotate(img, 90, 1, 0, 0), np.rot90(img))  # about the centre pixel
    assert np.array_equal(A.shift_scale_rotate(img, 0, 1, 0.25, 0)[:, 4:], img[:, :-4])  # a quarter of the width to the right
    smooth = np.tile(np.linspace(60, 200, 16).astype(np.uint8), (16, 1))[..., None]
    assert A.shift_scale_rotate(smooth, 0, 1.1, 0, 0)[8, 15] < smooth[8, 15]  # zoomed in: the edge comes from further in

    def high_freq(x):
        x = x.astype(float)
        return (np.diff(x, axis=0) ** 2).sum() + (np.diff(x, axis=1) ** 2).sum()

    assert high_freq(A.box_blur(img, 3)) < 0.5 * high_freq(img) and high_freq(A.box_blur(img, 7)) < high_freq(A.box_blur(img, 3))
    assert A.box_blur(img, 5).mean() == pytest.approx(img.mean(), abs=8)
    mid = np.full((4, 4, 1), 100, np.uint8)
    assert A.brightness_contrast(mid, 1.0, 0.1).mean() == pytest.approx(125, abs=1)   # + 0.1 * 255
    assert A.brightness_contrast(mid, 1.2, 0.0).mean() == pytest.approx(120, abs=1)   # x 1.2
    assert A.brightness_contrast(np.full((2, 2, 1), 250, np.uint8), 1.2, 0.2).max() == 255  # clipped
    spec = AugmentSpec(flip=0, shift_scale_rotate=0, blur=0, brightness_contrast=0)  # nothing applies: the image itself
    assert np.array_equal(augment_offline(_dataset(), spec.model_copy(update={"copies": 1})).images[24:],
                          _dataset().images[_dataset().indices("train")])


def test_augment_spec_is_checked():
    with pytest.raises(ValueError, match="blur_limit must be odd"):
        AugmentSpec(blur_limit=6)
    with pytest.raises(ValueError):
        AugmentSpec(copies=0)


def test_augment_is_in_the_study_identity_only_when_set():
    from faircompress.config import load_config
    from faircompress.plan import plan, result_fields

    plain, unset = load_config(None), load_config(None, {"dataset.augment": None})
    assert "augment" not in plain.model_dump(mode="json")["dataset"] and set(result_fields(plain)["dataset"]) == {"name", "params"}
    ids = [r.run_id for r in plan(plain)]
    assert [r.run_id for r in plan(unset)] == ids
    aug = load_config(None, {"dataset.augment": {}})  # an empty mapping: the paper's defaults, two copies
    assert aug.dataset.augment == AugmentSpec() and result_fields(aug)["dataset"]["augment"]["copies"] == 2
    assert set(r.run_id for r in plan(aug)).isdisjoint(ids)
    other = load_config(None, {"dataset.augment": {"seed": 1}})
    assert set(r.run_id for r in plan(other)).isdisjoint(r.run_id for r in plan(aug))
    # SFEW's parameters dump as they did before test_split existed: its dataset key is the one studies were made with
    assert identify("sfew", {"root": "/nonexistent/sfew"}).key == "c2c78f3c7a94d103"


def test_a_study_trains_on_the_tripled_training_set_and_the_report_counts_it(tmp_path, tiny_overrides, monkeypatch):
    from faircompress import study
    from faircompress.execute import worker
    from faircompress.binding import test_rows
    from faircompress.config import load_config
    from faircompress.data.registry import load_dataset as load
    from faircompress.plan import Hooks
    from faircompress.store import ResultStore

    class Notes(Hooks):
        def __init__(self):
            self.said = []

        def note(self, text):
            self.said.append(text)

    trained_on = []

    def execute(cfg, run, data, out, hooks):  # what each run would train on; no training here (a fast test)
        trained_on.append(data)
        raise RuntimeError("not trained in this test")

    monkeypatch.setattr(worker, "_execute", execute)
    cfg = load_config(None, {**tiny_overrides, "dataset.augment": {"copies": 2}})
    hooks = Notes()
    study.run_study(cfg, hooks)
    plain = load("synthetic", cfg.dataset.params)
    n = len(plain.indices("train"))
    assert f"train: {n} images + {2 * n} augmented copies" in " ".join(hooks.said)
    assert trained_on and all(_counts(d) == {**_counts(plain), "train": 3 * n} for d in trained_on)
    store = ResultStore(tmp_path / "study")
    try:
        key = store.conn.execute("SELECT dataset_key FROM datasets").fetchone()[0]
        counts = store.split_counts(key)  # what the report's data tables show
        assert counts[counts.split == "train"].n.sum() == 3 * n and counts[counts.split == "val"].n.sum() == len(plain.indices("val"))
        assert store.sample_rows(key) == [tuple(r) for r in test_rows(plain)]  # the test samples of the unaugmented dataset
    finally:
        store.close()
