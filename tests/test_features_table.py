"""A features table (SFEW's precomputed LPQ + PHOG components, CSV or XLSX) as a dataset, and pca_mlp
taking its 10 raw features: the loader's reading, dropping, errors and splits; the standardisation
fitted on the training rows only and carried into the ONNX file; the study's refusals; and a tiny
study through pruning, clustering and int8 quantisation whose files run in plain ONNX Runtime."""
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from faircompress.compress.export import export_onnx
from faircompress.config import ConfigError, TrainConfig, load_config
from faircompress.data.common import report_of
from faircompress.data.dataset import UNKNOWN
from faircompress.data.examples import make_sfew_features, write_csv
from faircompress.data.loaders.sfew_features import movie
from faircompress.data.problems import DatasetError
from faircompress.data.registry import identify, load_dataset
from faircompress.models import build_model
from faircompress.plan import plan
from faircompress.store import ResultStore
from faircompress.study import run_study
from faircompress.train import fit, fit_to_training, load_checkpoint

HEADER = ["Image", "Label", *[f"LPQ{i}" for i in range(1, 6)], *[f"PHOG{i}" for i in range(1, 6)]]
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pca-mlp-sfew-features.yaml"


def _load(path: Path, **params):
    return load_dataset("sfew_features", {"root": str(path), **params})


def _row(name: str, label, values=None) -> list:
    return [name, label, *(values if values is not None else [float(i) for i in range(10)])]


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    return make_sfew_features(tmp_path_factory.mktemp("sfew"), per_class=12)


@pytest.fixture(scope="module")
def data(table):
    return _load(table, features=10)


def _model(ds):
    torch.manual_seed(0)
    shape = ds.input_shape
    return build_model("pca_mlp", in_channels=shape.channels, num_classes=shape.num_classes, input_size=shape.size,
                       input="features").eval()


# --- reading ----------------------------------------------------------------------------------
def test_csv_and_xlsx_of_one_table_load_alike(tmp_path):
    csv_ds = _load(make_sfew_features(tmp_path / "csv"), features=10)
    xlsx_ds = _load(make_sfew_features(tmp_path / "xlsx", xlsx=True), features=10)
    assert csv_ds.is_features and csv_ds.images.dtype == np.float32 and csv_ds.images.shape == (68, 10, 1, 1)
    assert tuple(csv_ds.input_shape) == (10, 7, 1)
    for a, b in ((csv_ds.images, xlsx_ds.images), (csv_ds.labels, xlsx_ds.labels), (csv_ds.subjects, xlsx_ds.subjects),
                 (csv_ds.split, xlsx_ds.split)):
        assert np.array_equal(a, b)
    assert csv_ds.class_names == ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    assert report_of(xlsx_ds).kinds()["missing value"] == 2  # the example's two empty / NaN cells
    assert any("10 features per image: LPQ1" in n for n in report_of(csv_ds).notes)


def test_labels_by_name_in_any_case_and_a_table_without_header(tmp_path):
    f = tmp_path / "t.csv"
    rows = [_row("A_001_1", "Happy", [1.0] * 10), _row("A_001_2", "SAD", [2.0] * 10), _row("B_002_1", 1, [3.0] * 10),
            _row("B_002_2", "7", [4.0] * 10)]
    write_csv(f, rows[0], rows[1:])  # no header: the first row is data
    ds = _load(f, test_fraction=0.25, val_fraction=0)
    assert len(ds) == 4 and [ds.class_names[i] for i in ds.labels[np.argsort(ds.subjects)]] == ["happy", "sad", "angry", "surprise"]
    assert ds.images[np.argsort(ds.subjects)][:, 0, 0, 0].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_rows_with_a_missing_value_are_dropped_and_counted(tmp_path):
    f = tmp_path / "t.csv"
    ok = [float(i) for i in range(10)]
    rows = [_row("A_001_1", 1), _row("A_001_2", 2, ["", *ok[1:]]), _row("A_001_3", 3, [*ok[:9], "NaN"]),
            _row("B_002_1", 4, [*ok[:4], "n/a", *ok[5:]]), _row("B_002_2", "", ok), _row("B_002_3", 5), _row("C_003_1", 6)]
    write_csv(f, [*HEADER, "Notes"], [r + ["seen"] for r in rows])  # a text column: not a feature
    ds = _load(f, features=10, test_fraction=0.3, val_fraction=0)
    assert sorted(ds.subjects) == ["A_001_1", "B_002_3", "C_003_1"]
    report = report_of(ds)
    assert report.kinds()["missing value"] == 4
    details = " ".join(d for _, _, d in report.problems)
    for line, column in ((3, "LPQ1"), (4, "PHOG5"), (5, "LPQ5"), (6, "Label")):
        assert f"row {line} " in details and column in details
    assert any("Notes" in n for n in report.notes) and any("4 of 7 rows dropped" in n for n in report.notes)


def _garbled_xlsx(d: Path) -> Path:
    (d / "t.xlsx").write_bytes(b"PK\x03\x04 not really a workbook" * 20)
    return d / "t.xlsx"


def _csv_of(rows: list[list], header: list | None = None):
    def write(d: Path) -> Path:
        write_csv(d / "t.csv", header if header is not None else HEADER, rows)
        return d / "t.csv"
    return write


def _latin1(d: Path) -> Path:
    (d / "t.csv").write_bytes(",".join(HEADER).encode() + b"\nCaf\xe9_001_1,1," + b",".join([b"1.0"] * 10) + b"\n")
    return d / "t.csv"


BAD = {
    "garbled xlsx": (_garbled_xlsx, {}, "not a readable XLSX workbook"),
    "not utf-8": (_latin1, {}, "line 2: not UTF-8"),
    "missing file": (lambda d: d / "absent.xlsx", {}, "file not found"),
    "unknown label": (_csv_of([_row("A_001_1", 1), _row("A_001_2", "contempt")]), {}, "row 3, column 'Label': unknown label 'contempt'"),
    "label out of range": (_csv_of([_row("A_001_1", 8)]), {}, "row 2, column 'Label': unknown label '8'"),
    "missing label column": (_csv_of([["A_001_1"], ["A_001_2"]], header=["Image"]), {}, "missing label column"),
    "no feature columns": (_csv_of([["A_001_1", 1]], header=["Image", "Label"]), {}, "no feature columns"),
    "text features only": (_csv_of([["A_001_1", 1, "x"]], header=["Image", "Label", "Notes"]), {}, "no feature columns"),
    "wrong feature count": (_csv_of([_row("A_001_1", 1)]), {"features": 12}, "10 feature column(s)"),
    "no image name": (_csv_of([_row("", 1)]), {}, "row 2, column 'Image': no image name"),
    "cell beyond the header": (_csv_of([_row("A_001_1", 1) + [5.0]]), {}, "row 2: a value in column 13"),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_table_gets_one_line_naming_the_file(case, tmp_path):
    make, params, expected = BAD[case]
    path = make(tmp_path)
    with pytest.raises(DatasetError) as e:
        _load(path, **params)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and expected in msg, msg


# --- splits and attributes ----------------------------------------------------------------------
def test_random_split_is_seeded_and_grouped_keeps_each_movie_in_one_split(table):
    assert movie("Airheads_000519240_00000005") == "Airheads" and movie("Harry_Potter_001_2") == "Harry_Potter"
    assert movie("nodigits") == "nodigits"
    a, b, other = _load(table), _load(table), _load(table, seed=1)
    assert np.array_equal(a.split, b.split) and not np.array_equal(a.split, other.split)
    assert abs(len(a.indices("test")) - 0.1 * len(a)) <= 1 and len(a.indices("val")) > 0
    grouped = _load(table, test_split="grouped", test_fraction=0.3, val_fraction=0.25)
    movies = {s: set(grouped.subjects[grouped.indices(s)]) for s in ("train", "val", "test")}
    assert all(movies.values()) and not (movies["train"] & movies["test"] or movies["train"] & movies["val"]
                                         or movies["val"] & movies["test"])


def test_attributes_come_from_a_csv_keyed_by_name_or_path(tmp_path, table):
    ds = _load(table)
    names = sorted(ds.subjects)
    for column, key in (("name", lambda n: n), ("path", lambda n: f"Train/Angry/{n}.png")):
        attrs = tmp_path / f"{column}.csv"
        write_csv(attrs, [column, "gender"], [[key(n), "female" if i % 2 else "male"] for i, n in enumerate(names[:-1])])
        with_groups = _load(table, attributes_csv=str(attrs))
        assert with_groups.attribute_groups == {"gender": ["female", "male"]}
        codes = dict(zip(with_groups.subjects, with_groups.attributes["gender"]))
        assert codes[names[0]] == 1 and codes[names[1]] == 0 and codes[names[-1]] == UNKNOWN  # no row: unknown


def test_the_cache_keeps_the_features_and_the_identity_follows_the_table(tmp_path, table):
    cache = tmp_path / "cache"
    first = load_dataset("sfew_features", {"root": str(table)}, cache_dir=cache)
    again = load_dataset("sfew_features", {"root": str(table)}, cache_dir=cache)  # from the .npz
    assert len(list(cache.glob("sfew_features-*.npz"))) == 1
    assert again.is_features and np.array_equal(first.images, again.images) and again.images.dtype == np.float32
    copy = tmp_path / "copy.csv"
    copy.write_text(table.read_text().replace("Airheads", "Airheadz"))
    assert identify("sfew_features", {"root": str(table)}).key != identify("sfew_features", {"root": str(copy)}).key


# --- the model ----------------------------------------------------------------------------------
def _scaling(ds, selection: str = "val") -> dict[str, torch.Tensor]:
    model = _model(ds)
    fit_to_training(model, ds, selection)
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("lpq_", "phog_"))}


def _changed(ds, split: str):
    changed = ds.take(np.arange(len(ds)))
    changed.images[changed.indices(split)[:3]] *= 3.0
    return changed


def test_each_block_is_standardised_on_the_training_rows_only(data):
    fitted = _scaling(data)
    for split in ("val", "test"):
        assert all(torch.equal(fitted[k], v) for k, v in _scaling(_changed(data, split)).items()), split
    assert not all(torch.equal(fitted[k], v) for k, v in _scaling(_changed(data, "train")).items())
    model = _model(data)
    fit_to_training(model, data, "val")
    train = data.images[data.indices("train")]
    with torch.no_grad():
        feats = model.features(torch.from_numpy(train)).double().numpy()
    raw = train[:, :, 0, 0].astype(np.float64)
    for block, cols in ((feats[:, :5], raw[:, :5]), (feats[:, 5:], raw[:, 5:])):  # one mean and sd per block (Dixit et al. 2.2)
        assert abs(block.mean()) < 1e-5 and abs(block.std() - 1) < 1e-5
        assert np.allclose(block, (cols - cols.mean()) / cols.std(), atol=1e-4)


def test_the_onnx_file_takes_the_raw_features_and_scales_them_inside(data, tmp_path):
    model = _model(data)
    fit_to_training(model, data, "val")
    path = export_onnx(model, tmp_path / "m.onnx", (10, 1, 1))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    dims = sess.get_inputs()[0].shape
    assert dims[1:] == [10, 1, 1]
    x = data.images[:8]
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.allclose(sess.run(None, {sess.get_inputs()[0].name: x})[0], ref, atol=1e-5)


def test_input_mismatches_and_descriptor_params_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="set model.params.input: image"):
        build_model("pca_mlp", in_channels=1, num_classes=7, input_size=48, input="features")
    with pytest.raises(ValueError, match="set model.params.input: features"):
        build_model("pca_mlp", in_channels=10, num_classes=7, input_size=1)
    with pytest.raises(ValueError, match="set components: 6"):
        build_model("pca_mlp", in_channels=12, num_classes=7, input_size=1, input="features")
    with pytest.raises(ValueError, match="two equal blocks"):
        build_model("pca_mlp", in_channels=9, num_classes=7, input_size=1, input="features")
    for params, expected in (({"input": "table"}, "image or features"), ({"input": "features", "lpq_window": 5}, "lpq_window")):
        with pytest.raises(ConfigError, match=expected):
            load_config(None, {"model": {"name": "pca_mlp", "params": params}, "recipes": []})


def test_batch_size_one_trains_every_row_and_is_refused_with_batchnorm(data):
    cfg = TrainConfig(epochs=1, batch_size=1, precision="fp32", device="cpu", augment_flip=False, augment_rotation_deg=0)
    steps = []
    fit(_model(data), data, cfg, 0, after_step=steps.append)  # the paper's batch of one: one step per training row
    assert len(steps) == len(data.indices("train"))
    with pytest.raises(ValueError, match="train.augment_flip is true"):
        fit(_model(data), data, cfg.model_copy(update={"augment_flip": True}), 0)
    with pytest.raises(ValueError, match="BatchNorm"):
        fit(build_model("paper_cnn", in_channels=1, num_classes=7, input_size=48), data, cfg, 0)


# --- studies ------------------------------------------------------------------------------------
QUIET = {"train.epochs": 1, "train.precision": "fp32", "train.device": "cpu", "evaluation.memory": False,
         "evaluation.latency": False, "repeats": 1}


def _features_study(table: Path, out: Path, **over) -> dict:
    return {"output_dir": str(out), "dataset": {"name": "sfew_features", "params": {"root": str(table), "features": 10}},
            "model": {"name": "pca_mlp", "params": {"input": "features", "hidden": 30}}, "train.augment_flip": False,
            "train.augment_rotation_deg": 0, **QUIET, "recipes": [], **over}


def test_a_study_refuses_augmenting_features_and_a_model_of_the_other_input(table, tmp_path, tiny_overrides):
    for over, expected in (({"train.augment_flip": True}, "train.augment_flip is true"),
                           ({"train.augment_rotation_deg": 10}, "train.augment_rotation_deg is 10"),
                           ({"model": {"name": "paper_cnn"}}, "paper_cnn takes images")):
        with pytest.raises(ConfigError, match=expected):
            run_study(load_config(None, _features_study(table, tmp_path / "s", **over)))
    with pytest.raises(ConfigError, match="set model.params.input: image"):  # features model, image dataset
        run_study(load_config(None, {**tiny_overrides, "model": {"name": "pca_mlp", "params": {"input": "features"}}}))
    assert not (tmp_path / "s").exists() and not Path(tiny_overrides["output_dir"]).exists()  # refused before anything is written


RECIPES = [[{"prune": {"sparsity": 0.5, "epochs": 1}}], [{"cluster": {"clusters": 4, "epochs": 1}}],
           [{"quantize": {"mode": "int8-weights"}}], [{"quantize": {"mode": "int8-static"}}], [{"quantize": {"mode": "int8-dynamic"}}]]


def _initializers(path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def test_a_study_on_a_features_table_compresses_pca_mlp_into_files_that_run_in_onnxruntime(table, data, tmp_path):
    cfg = load_config(None, _features_study(table, tmp_path / "study", **{"train.batch_size": 1, "recipes": RECIPES}))
    report = run_study(cfg)
    assert not report.failed, report.failed
    study = Path(cfg.output_dir)
    store = ResultStore.open_existing(study)
    runs = store.runs().set_index("label")
    assert (runs.status == "finished").all() and len(runs[runs.kind == "variant"]) == 6  # the fp32 export and five recipes
    baseline = _model(data)
    load_checkpoint(baseline, study / runs[runs.kind == "baseline"].artefact.iloc[0])
    assert np.allclose(baseline.lpq_weight.numpy(), _scaling(data)["lpq_weight"].numpy())  # the checkpoint carries the fitted scaling
    test = data.images[data.indices("test")]
    for label, run in runs[runs.kind == "variant"].iterrows():
        path = study / run.artefact
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert sess.get_inputs()[0].shape[1:] == [10, 1, 1], label
        y_pred = sess.run(None, {sess.get_inputs()[0].name: test})[0].argmax(1)
        assert list(y_pred) == list(store.predictions(run.run_id).y_pred), label  # the file is what was measured
        inits = _initializers(path)
        if "prune" in label:
            assert (inits["hidden.weight"] == 0).mean() == 0.5 and (inits["out.weight"] == 0).mean() == 0.5
        if "cluster" in label:
            assert len(np.unique(inits["hidden.weight"])) <= 4
        if "int8-weights" in label:  # every tensor is under 1,024 elements: left float, as TFLite leaves it
            assert all(v.dtype == np.float32 for v in inits.values())
        if "static" in label or "dynamic" in label:
            assert any(v.dtype in (np.int8, np.uint8) for v in inits.values()), label
    store.close()


def test_the_shipped_config_has_the_papers_settings(table):
    cfg = load_config(CONFIG, {"dataset.params.root": str(table)})
    assert cfg.dataset.name == "sfew_features" and cfg.dataset.params["features"] == 10
    assert cfg.model.params == {"input": "features", "hidden": 30}
    t = cfg.train
    assert (t.batch_size, t.lr, t.epochs, t.augment_flip, t.augment_rotation_deg) == (1, 0.001, 1200, False, 0)
    assert len(plan(cfg)) > len(cfg.recipes)
