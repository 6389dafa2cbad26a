import numpy as np
import pytest
from conftest import TINY_DATA

from faircompress.data.dataset import UNKNOWN, FaceDataset
from faircompress.data.registry import DATASETS, load_dataset
from faircompress.data.synthetic import SyntheticParams


def _tiny(n=6):
    return FaceDataset(
        name="t", images=np.arange(n * 16 * 16, dtype=np.uint8).reshape(n, 1, 16, 16) % 251,
        labels=np.array([0, 1, 2, 0, 1, 2][:n]), class_names=["a", "b", "c"],
        attributes={"gender": np.array([0, 1, UNKNOWN, 0, 1, 1][:n])}, attribute_groups={"gender": ["f", "m"]},
        subjects=np.array(["s1", "s1", "s2", "s2", "s3", "s3"][:n]), split=np.array([0, 0, 1, 1, 2, 2][:n], dtype=np.int8),
    )


def test_npz_round_trip(tmp_path):
    ds = _tiny()
    ds.save_npz(tmp_path / "d.npz")
    back = FaceDataset.load_npz(tmp_path / "d.npz")
    assert np.array_equal(back.images, ds.images) and back.class_names == ds.class_names
    assert np.array_equal(back.attributes["gender"], ds.attributes["gender"])
    assert list(back.subjects) == list(ds.subjects) and back.attribute_groups == ds.attribute_groups
    assert not list(tmp_path.glob("*.partial-*"))


def test_subset_and_counts():
    ds = _tiny()
    assert len(ds.subset("test")) == 2 and set(ds.subset("train", "val").split) == {0, 1}
    c = ds.counts()
    assert c["split"] == {"train": 2, "val": 2, "test": 2}
    assert c["gender"] == {"f": 2, "m": 3, "unknown": 1}


@pytest.mark.parametrize(
    "change,msg",
    [({"labels": np.array([0, 1, 2, 0, 1, 3])}, "labels outside"),
     ({"images": np.zeros((6, 16, 16), np.uint8)}, "uint8"),
     ({"images": np.zeros((6, 1, 16, 16), np.float64)}, "uint8"),
     ({"images": np.zeros((6, 10, 2, 1), np.float32)}, "features must be finite float32 \\(N, F, 1, 1\\)"),
     ({"images": np.full((6, 10, 1, 1), np.nan, np.float32)}, "features must be finite"),
     ({"attributes": {"gender": np.array([0, 1, 2, 0, 1, 1])}}, "outside its groups"),
     ({"subjects": np.array(["a"])}, "subjects has 1")],
)
def test_inconsistent_dataset_is_rejected(change, msg):
    ds = _tiny()
    kw = {k: getattr(ds, k) for k in ("name", "images", "labels", "class_names", "attributes", "attribute_groups", "subjects", "split")}
    with pytest.raises(ValueError, match=msg):
        FaceDataset(**{**kw, **change})


def test_registry_loads_by_name_and_caches(tmp_path):
    assert "synthetic" in DATASETS.names() or load_dataset("synthetic", TINY_DATA) is not None
    first = load_dataset("synthetic", TINY_DATA, cache_dir=tmp_path)
    files = list(tmp_path.glob("synthetic-*.npz"))
    assert len(files) == 1
    again = load_dataset("synthetic", SyntheticParams(**TINY_DATA), cache_dir=tmp_path)
    assert np.array_equal(first.images, again.images)
    load_dataset("synthetic", {**TINY_DATA, "seed": 9}, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("synthetic-*.npz"))) == 2  # the key follows the parameters


def test_corrupt_cache_is_rebuilt(tmp_path):
    load_dataset("synthetic", TINY_DATA, cache_dir=tmp_path)
    (f,) = tmp_path.glob("synthetic-*.npz")
    f.write_bytes(b"not a zip")
    ds = load_dataset("synthetic", TINY_DATA, cache_dir=tmp_path)
    assert len(ds) == 18 * 3
    FaceDataset.load_npz(f)  # rewritten whole


def test_unknown_dataset_names_the_known_ones():
    with pytest.raises(KeyError, match="synthetic"):
        load_dataset("ckplus-typo")
