"""Every registered plug-in, as discovered (not as imported by this file): each dataset loaded from
its own example of its layout, each model built, run, exported and passed through every compression
step. A plug-in dropped into its folder is tested here the moment it exists."""
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import TINY_DATA

from faircompress.compress.export import export_onnx
from faircompress.compress.recipes import STEPS, ExportStep, TrainStep, TuneContext, parse_recipe
from faircompress.config import StudyConfig, TrainConfig
from faircompress.data.dataset import SPLITS, UNKNOWN
from faircompress.data.registry import DATASETS, load_dataset
from faircompress.data.synthetic import SyntheticParams, generate
from faircompress.evaluate.metrics import GROUP_METRICS, evaluate_predictions
from faircompress.mitigate import OBJECTIVES, parse_fine_tune
from faircompress.evaluate.size import zipped_size
from faircompress.models import MODELS, build_model
from faircompress.plugins import describe_plugins
from faircompress.train import fit, fit_to_training

SIDE, CLASSES = 16, 8


@pytest.fixture(scope="module")
def tiny():
    return generate(SyntheticParams(**TINY_DATA))


SMALL = {"resnet18": {"width": 16}}  # the same architecture, thinner: every step's path, a sixteenth of the weights


def _model(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, in_channels=1, num_classes=CLASSES, input_size=SIDE, **SMALL.get(name, {})).eval()


def _ort(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _pixels(n: int = 4) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 1, SIDE, SIDE)).astype(np.float32)


def test_discovery_finds_the_built_in_plug_ins_and_describes_them():
    assert {"synthetic", "ckplus", "rafdb", "fer2013", "sfew", "sfew_features", "folder"} <= set(DATASETS.names())
    assert {"paper_cnn", "resnet18"} <= set(MODELS.names()) and {"prune", "cluster", "quantize"} <= set(STEPS.names())
    described = describe_plugins()
    assert [r.name for r in described["compression steps"]] == STEPS.names()
    assert [r.name for r in described["datasets"]] == DATASETS.names()
    assert [r.name for r in described["fine-tuning objectives (a step's fine_tune option)"]] == OBJECTIVES.names()


# --- datasets --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_loads_its_example_layout(name, tmp_path):
    source = DATASETS.get(name)
    assert source.example is not None, f"dataset {name!r} has no example: give its DatasetSource an example writer"
    params = source.example(tmp_path / name)
    ds = load_dataset(name, params)
    n = len(ds)
    assert n > 0 and ds.images.ndim == 4 and ds.images.shape[0] == n
    assert ds.images.dtype == np.uint8 or ds.is_features and ds.images.shape[2:] == (1, 1)  # pixels, or a features table's rows
    assert ds.labels.shape == (n,) and 0 <= ds.labels.min() and ds.labels.max() < ds.num_classes
    for split in ("train", "test"):
        assert len(ds.indices(split)) > 0, f"{name}: the example's {split} split is empty"
    assert len(set(ds.labels[ds.indices("train")])) >= 2
    assert set(np.unique(ds.split)) <= set(range(len(SPLITS)))
    for attr, codes in ds.attributes.items():
        assert codes.shape == (n,) and codes.min() >= UNKNOWN and codes.max() < len(ds.attribute_groups[attr]), attr
    cfg = StudyConfig.model_validate({"dataset": {"name": name, "params": params}, "recipes": []})  # config validation knows it
    assert cfg.dataset.name == name


# --- models ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_runs_and_exports_to_the_same_function(name, tmp_path):
    model = _model(name)
    x = _pixels()
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert ref.shape == (4, CLASSES) and np.isfinite(ref).all()
    path = export_onnx(model, tmp_path / "m.onnx", (1, SIDE, SIDE))
    assert np.allclose(_ort(path, x), ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())
    StudyConfig.model_validate({"model": {"name": name}, "recipes": []})


# --- steps -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", STEPS.names())
def test_every_step_is_typed_and_parses_its_example(name):
    cls = STEPS.get(name)
    assert issubclass(cls, (TrainStep, ExportStep))
    recipe = parse_recipe([{name: cls.example}])
    step = recipe.steps[0]
    assert recipe.label and step.label().startswith(name) and recipe.technique == name
    if cls.level is not None:
        assert cls.level in cls.Params.model_fields and recipe.level == step.level_value() is not None


@pytest.mark.parametrize("model_name,step_name", [(m, s) for m in MODELS.names() for s in STEPS.names()])
def test_every_step_on_every_model_gives_a_smaller_deployable_file(model_name, step_name, tiny, tmp_path):
    recipe = parse_recipe([{step_name: STEPS.get(step_name).example}])
    model = _model(model_name)
    cfg = TrainConfig(epochs=1, batch_size=8, precision="fp32", device="cpu")
    few = tiny.take(np.concatenate([tiny.indices(split)[:16] for split in SPLITS]))  # fine-tuning runs; what it learns is not tested here
    tune = TuneContext(fine_tune=lambda m, e, after: fit(m, few, cfg.model_copy(update={"epochs": e}), 0, after_step=after), seed=0,
                       images=lambda: few.images[:64], input_shape=(1, SIDE, SIDE),  # as a study gives: a sample of training images
                       initial_model=lambda seed=None: _model(model_name, 0 if seed is None else seed))  # the model's seeded start
    for s in recipe.train_steps:
        s.apply(model, tune)
    path = export_onnx(model, tmp_path / "m.onnx", (1, SIDE, SIDE), fp16=recipe.export_precision == "fp16")
    for s in recipe.export_steps:
        s.transform(path, tmp_path / "q.onnx", tiny.images[:32])
        path = tmp_path / "q.onnx"
    out = _ort(path, _pixels())
    assert out.shape == (4, CLASSES) and np.isfinite(out).all()
    reference = _model(model_name)
    fit_to_training(reference, few, "val")  # e.g. pca_mlp's fitted PCA maps: dense values, where the unfitted ones are an identity
    assert zipped_size(path) < zipped_size(export_onnx(reference, tmp_path / "ref.onnx", (1, SIDE, SIDE)))  # it shrinks


# --- group metrics -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", GROUP_METRICS.names())
def test_every_group_metric_is_stored_for_every_group(name):
    y_true, y_pred = np.array([0, 1, 1, 0, 1, 0]), np.array([0, 1, 0, 0, 1, 1])
    ev = evaluate_predictions(y_true, y_pred, ["a", "b"], {"g": np.array([0, 0, 0, 1, 1, 1])}, {"g": ["x", "y"]})
    long = ev.long()
    rows = long[(long.metric == name) & (long.group != "")]
    assert set(zip(rows.attribute, rows.group)) == {("class", "a"), ("class", "b"), ("g", "x"), ("g", "y")}
    assert np.isfinite(rows.value).all()


# --- fine-tuning objectives ------------------------------------------------------------------------
@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_every_objective_fine_tunes_a_tiny_study_with_its_example(name, tiny_overrides):
    from conftest import finished_mlp_study

    spec = parse_fine_tune({"objective": name, **OBJECTIVES.get(name).example})
    recipes = [[{"prune": {"sparsity": 0.5, "epochs": 1, "fine_tune": spec}}]]
    _, store, runs = finished_mlp_study(tiny_overrides, recipes, epochs=1)  # every run finished
    store.close()
    [variant] = runs[runs.technique == f"prune-{name}"].itertuples()
    [entry] = json.loads(variant.details_json)["steps"]["fine_tune"]
    assert {k: entry[k] for k in spec} == spec
