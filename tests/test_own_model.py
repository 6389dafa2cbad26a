"""Your own model (a file, or 'package.module:function') and your own baseline (trained weights, or
an exported ONNX file): checked before a study writes anything, bound to the study by content."""
import hashlib
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from faircompress.binding import BindingError
from faircompress.cli import app
from faircompress.config import ConfigError, load_config
from faircompress.data.examples import make_folder
from faircompress.data.registry import DATASETS, declared_shape, load_dataset
from faircompress.plan import plan, result_fields
from faircompress.store import ResultStore
from faircompress.study import run_study
from fakes import write_config

runner = CliRunner()

TINY_MODEL = '''
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, in_channels, num_classes, width):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.features(x / 255.0))


def build(*, in_channels, num_classes, input_size, width=16):
    return Tiny(in_channels, num_classes, width)
'''
QUIET = {"evaluation.latency": False, "evaluation.memory": False, "train.epochs": 1, "repeats": 1}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def model_file(tmp_path) -> Path:
    f = tmp_path / "my_models" / "tiny.py"
    f.parent.mkdir()
    f.write_text(TINY_MODEL)
    return f


@pytest.fixture
def own(tiny_overrides, model_file) -> dict:
    """Overrides for a tiny study of the tiny model in ``model_file``."""
    return {**tiny_overrides, **QUIET, "model": {"file": str(model_file), "params": {"width": 16}}}


def _tiny_model(channels: int = 1, classes: int = 8, seed: int = 0) -> torch.nn.Module:
    """The tiny model as the study builds it (for weights and ONNX files of its own)."""
    namespace: dict = {}
    exec(TINY_MODEL, namespace)
    torch.manual_seed(seed)
    return namespace["build"](in_channels=channels, num_classes=classes, input_size=16, width=16).eval()


def _config_error(tmp_path, overrides: dict) -> str:
    f = write_config(tmp_path / "bad.yaml", overrides)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    return str(e.value)


# ----------------------------------------------------------------------------- your own model
def test_a_model_file_runs_a_study_with_prune_cluster_and_int8(tmp_path, own, model_file):
    recipes = [[{"prune": {"sparsity": 0.5, "epochs": 1}}], [{"cluster": {"clusters": 4, "epochs": 1}}],
               [{"quantize": {"mode": "int8-weights"}}]]
    cfg = write_config(tmp_path / "study.yaml", {**own, "recipes": recipes})
    res = runner.invoke(app, ["run", str(cfg)], terminal_width=300)
    assert res.exit_code == 0, res.output
    study = Path(own["output_dir"])
    store = ResultStore.open_existing(study)
    runs = store.runs()
    assert list(runs.status) == ["finished"] * 5
    assert list(runs.kind) == ["baseline"] + ["variant"] * 4 and set(runs.technique.dropna()) == {"baseline", "prune", "cluster", "quantize"}
    stored = json.loads(runs.config_json.iloc[0])["model"]
    assert stored["sha256"] == _sha(model_file) and stored["file"] == str(model_file)
    assert len(store.epochs().query(f"run_id == '{runs.run_id[0]}'")) == 1  # the baseline was trained, one epoch
    pruned = runs[runs.technique == "prune"].iloc[0]
    import onnx
    from onnx import numpy_helper

    kernels = [numpy_helper.to_array(i) for i in onnx.load(str(study / pruned.artefact)).graph.initializer if len(i.dims) == 4]
    assert kernels and np.mean([np.mean(k == 0) for k in kernels]) == pytest.approx(0.5, abs=0.02)  # the user's convs pruned
    store.close()
    assert "file SHA-256 " + _sha(model_file)[:12] in (study / "report.html").read_text()
    assert load_config(study / "config.yaml") == load_config(cfg)  # the study's resolved config loads again, its sha256 checked


def test_package_module_function_form(tmp_path, tiny_overrides, monkeypatch):
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "own_fer_models_a.py").write_text(TINY_MODEL)
    monkeypatch.syspath_prepend(str(folder))
    cfg = load_config(None, {**tiny_overrides, "model": {"name": "own_fer_models_a:build", "params": {"width": 8}}})
    assert cfg.model.is_own and cfg.model.sha256 == _sha(folder / "own_fer_models_a.py")
    assert result_fields(cfg)["model"] == {"name": "own_fer_models_a:build", "params": {"width": 8}, "sha256": cfg.model.sha256}
    net = cfg.model.build(load_dataset("synthetic", tiny_overrides["dataset.params"]).input_shape)
    assert net(torch.zeros(3, 1, 16, 16)).shape == (3, 8)


BAD_MODELS = {
    "missing file": (None, "file '{file}' does not exist"),
    "syntax error": ("def build(*, in_channels, num_classes, input_size):\n    return (\n", "cannot be imported: SyntaxError: "),
    "fails on import": ("import no_such_package_xyz\n", "cannot be imported (ModuleNotFoundError: No module named 'no_such_package_xyz')"),
    "missing function": ("def make(**kw):\n    pass\n", "has no function 'build' (it defines: make)"),
    "signature": ("def build(channels, classes):\n    pass\n", "does not take what a model gets"),
    "not a module": ("def build(**kw):\n    return [1, 2]\n", "returned a list, not a torch.nn.Module"),
    "wrong output shape": (TINY_MODEL.replace("nn.Linear(width, num_classes)", "nn.Linear(width, 5)"),
                           "returns shape (2, 5) for a batch (2, 1, 16, 16); logits must be (N, num_classes) = (2, 8)"),
    "fails in forward": (TINY_MODEL.replace("x / 255.0", "x.view(-1, 7)"), "fails on a batch of raw pixels (2, 1, 16, 16)"),
    "unexportable op": (TINY_MODEL.replace("return self.head(self.features(x / 255.0))",
                                           "return self.head(self.features(x / 255.0)) + torch.histc(x, bins=8)"),
                        "cannot be exported to ONNX (opset 17): UnsupportedOperatorError: Exporting the operator 'aten::histc'"),
    "numpy in forward": (TINY_MODEL.replace("x / 255.0", "torch.from_numpy(x.detach().numpy() / 255.0)"),
                         "takes 0 inputs instead of the pixels: its forward uses values the exporter cannot trace"),
    "python number from the input": (TINY_MODEL.replace("x / 255.0", "x / float(x.max())"),
                                     "computes other logits than the model"),
}


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_a_bad_own_model_gets_one_line_naming_the_field(tmp_path, tiny_overrides, case):
    text, expected = BAD_MODELS[case]
    f = tmp_path / "bad_model.py"
    if text is not None:
        f.write_text(text)
    msg = _config_error(tmp_path, {**tiny_overrides, "model": {"file": str(f)}})
    header, *lines = msg.splitlines()
    assert header.endswith("invalid config") and len(lines) == 1, msg
    assert lines[0].startswith("  model (line ") and expected.format(file=f) in lines[0], msg


def test_a_bad_module_name_is_refused(tmp_path, tiny_overrides):
    msg = _config_error(tmp_path, {**tiny_overrides, "model": {"name": "no_such_pkg_xyz.models:build"}})
    assert "model (line " in msg and "cannot import module 'no_such_pkg_xyz.models' (ModuleNotFoundError" in msg
    msg = _config_error(tmp_path, {**tiny_overrides, "model": {"name": "resnet"}})
    assert "unknown model 'resnet'" in msg and "package.module:function" in msg


def test_a_dataset_that_declares_no_shape_is_checked_at_study_start(tmp_path, tiny_overrides):
    make_folder(tmp_path / "faces")
    f = tmp_path / "five.py"
    f.write_text(TINY_MODEL.replace("nn.Linear(width, num_classes)", "nn.Linear(width, 5)"))
    over = {**tiny_overrides, **QUIET, "dataset.name": "folder", "dataset.params": {"root": str(tmp_path / "faces"), "image_size": 16},
            "model": {"file": str(f)}}
    cfg = load_config(write_config(tmp_path / "study.yaml", over))  # the folder's classes are known only once it is loaded
    with pytest.raises(ConfigError) as e:
        run_study(cfg)
    assert str(e.value).startswith("model: build() in ") and "logits must be (N, num_classes)" in str(e.value)
    assert "\n" not in str(e.value) and not Path(over["output_dir"]).exists()  # stopped before anything was written


def test_a_changed_model_file_is_refused_naming_the_field(tmp_path, own, model_file):
    cfg = write_config(tmp_path / "study.yaml", own)
    assert not run_study(load_config(cfg)).failed
    before = _sha(model_file)
    model_file.write_text(TINY_MODEL.replace("x / 255.0", "x / 128.0"))
    res = runner.invoke(app, ["run", str(cfg)], terminal_width=400)
    assert res.exit_code == 2, res.output
    assert f"model.sha256: {before} -> {_sha(model_file)}" in res.output and "--out" in res.output
    loaded = load_config(cfg)  # edited again after the config loaded: the runs refuse to build it
    model_file.write_text(TINY_MODEL + "\n# edited\n")
    with pytest.raises(ValueError, match="changed since the study's config was loaded"):
        loaded.model.build(load_dataset("synthetic", own["dataset.params"]).input_shape)


def test_moving_the_model_file_keeps_the_identity(tmp_path, own, model_file):
    moved = tmp_path / "elsewhere.py"
    moved.write_text(model_file.read_text())
    a = load_config(None, own)
    b = load_config(None, {**own, "model": {**own["model"], "file": str(moved)}})
    assert [r.run_id for r in plan(a)] == [r.run_id for r in plan(b)]  # content, not location, is the model


def test_every_declared_shape_is_the_loaded_one(tmp_path):
    for name, source in DATASETS.items():
        if source.shape is None or source.example is None:
            continue
        params = source.example(tmp_path / name)
        assert declared_shape(name, params) == load_dataset(name, params).input_shape, name


# ----------------------------------------------------------------------------- your own weights
def _save_weights(path: Path, seed: int, **change) -> Path:
    state = {k: v.contiguous() for k, v in _tiny_model(seed=seed).state_dict().items()}
    for key, value in change.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    save_file(state, str(path))
    return path


def test_given_weights_skip_training_and_are_what_is_evaluated(tmp_path, own):
    w = _save_weights(tmp_path / "w0.safetensors", seed=7)
    over = {**own, "baseline": {"weights": {0: str(w)}}}
    report = run_study(load_config(write_config(tmp_path / "study.yaml", over)))
    assert not report.failed
    store = ResultStore.open_existing(Path(own["output_dir"]))
    base = store.runs().query("kind == 'baseline'").iloc[0]
    assert store.epochs().query(f"run_id == '{base.run_id}'").empty  # not trained
    assert json.loads(base.details_json)["baseline"] == {"source": "weights", "file": str(w), "sha256": _sha(w)}
    assert base.artefact_sha256 == _sha(w) and base.selection == "given"
    from faircompress.train import predict

    data = load_dataset("synthetic", own["dataset.params"])
    model = _tiny_model()
    model.load_state_dict(load_file(str(w)))
    test = data.indices("test")
    expected = float((predict(model, data.images[test]) == data.labels[test]).mean())
    m = store.metrics()
    assert m.query(f"run_id == '{base.run_id}' and metric == 'accuracy' and attribute == ''").value.iloc[0] == pytest.approx(expected)
    store.close()

    w1 = _save_weights(tmp_path / "w1.safetensors", seed=8)  # a seed added with its own weights: more of the same question
    more = {**over, "seeds": [0, 1], "baseline": {"weights": {0: str(w), 1: str(w1)}}}
    assert not run_study(load_config(write_config(tmp_path / "more.yaml", more))).failed
    _save_weights(w1, seed=9)
    with pytest.raises(BindingError, match=r"baseline\.weights_sha256\.1: "):
        run_study(load_config(write_config(tmp_path / "more.yaml", more)))


@pytest.mark.parametrize("change,expected", [
    ({"head.weight": None}, "key 'head.weight' is missing (the model expects shape (8, 16))"),
    ({"features.0.weight": torch.zeros(4, 1, 3, 3)}, "key 'features.0.weight' has shape (4, 1, 3, 3), the model expects (16, 1, 3, 3)"),
    ({"extra.weight": torch.zeros(3)}, "key 'extra.weight' (shape (3,)) is not in the model"),
])
def test_weights_that_do_not_fit_name_the_first_key(tmp_path, own, change, expected):
    w = _save_weights(tmp_path / "w.safetensors", seed=0, **change)
    msg = _config_error(tmp_path, {**own, "baseline": {"weights": str(w)}})
    assert "baseline (line " in msg and expected in msg, msg


def test_weights_need_one_file_per_seed(tmp_path, own):
    w = _save_weights(tmp_path / "w.safetensors", seed=0)
    msg = _config_error(tmp_path, {**own, "seeds": [0, 1, 2], "baseline": {"weights": [str(w), str(w)]}})
    assert "weights lists 2 files for 3 seeds [0, 1, 2]" in msg
    assert "does not exist" in _config_error(tmp_path, {**own, "baseline": {"weights": str(tmp_path / "none.safetensors")}})


# ----------------------------------------------------------------------------- your own ONNX file
def _onnx_file(path: Path, channels: int = 1) -> Path:
    from faircompress.compress.export import export_onnx

    return export_onnx(_tiny_model(channels=channels), path, (channels, 16, 16))


def test_a_given_onnx_file_is_quantised_and_measured_as_the_reference(tmp_path, tiny_overrides):
    f = _onnx_file(tmp_path / "mine.onnx")
    over = {**tiny_overrides, **QUIET, "baseline": {"onnx": str(f)}, "recipes": [[{"quantize": {"mode": "int8-weights"}}]]}
    cfg = load_config(write_config(tmp_path / "study.yaml", over))
    assert set(result_fields(cfg)) == {"dataset", "baseline"}  # no model is trained: its fields change nothing
    assert not run_study(cfg).failed
    study = Path(over["output_dir"])
    store = ResultStore.open_existing(study)
    runs = store.runs().set_index("variant", drop=False)
    assert list(runs.kind) == ["baseline", "variant", "variant"] and store.epochs().empty
    reference = runs.loc["baseline (fp32)"]
    assert reference.artefact_sha256 == _sha(f) == runs[runs.kind == "baseline"].artefact_sha256.iloc[0]  # the user's file itself
    int8 = runs[runs.technique == "quantize"].iloc[0]
    assert (study / int8.artefact).stat().st_size < f.stat().st_size
    acc = store.metrics().query("metric == 'accuracy' and attribute == ''").set_index("run_id").value
    assert acc[reference.run_id] == acc[runs[runs.kind == "baseline"].run_id.iloc[0]]  # the same file, the same predictions
    store.close()


def test_a_training_step_with_a_given_onnx_file_is_refused_at_load(tmp_path, tiny_overrides):
    f = _onnx_file(tmp_path / "mine.onnx")
    msg = _config_error(tmp_path, {**tiny_overrides, "baseline": {"onnx": str(f)},
                                   "recipes": [[{"prune": {"sparsity": 0.5}}, {"quantize": {"mode": "int8-weights"}}]]})
    assert "recipes (line " in msg and "recipe 1: step 'prune' trains the PyTorch model, but baseline.onnx gives only an exported file" in msg
    msg = _config_error(tmp_path, {**tiny_overrides, "baseline": {"onnx": str(f)}, "recipes": [[{"quantize": {"mode": "fp16"}}]]})
    assert "which baseline.onnx does not give" in msg
    assert "give one seed" in _config_error(tmp_path, {**tiny_overrides, "seeds": [0, 1], "baseline": {"onnx": str(f)}})


def test_a_given_onnx_file_of_another_shape_is_refused(tmp_path, tiny_overrides):
    f = _onnx_file(tmp_path / "rgb.onnx", channels=3)
    msg = _config_error(tmp_path, {**tiny_overrides, "baseline": {"onnx": str(f)}})
    assert ("input 'pixels' is (batch, 3, 16, 16) float32; the dataset gives raw pixels (N, 1, 16, 16) float32" in msg), msg
    make_folder(tmp_path / "faces")  # a folder's shape is known once it is loaded: checked when the study starts
    over = {**tiny_overrides, "dataset.name": "folder", "dataset.params": {"root": str(tmp_path / "faces"), "image_size": 16},
            "baseline": {"onnx": str(f)}}
    with pytest.raises(ConfigError, match=r"^baseline\.onnx: onnx file '.*rgb\.onnx': input 'pixels' is \(batch, 3, 16, 16\)"):
        run_study(load_config(write_config(tmp_path / "study.yaml", over)))
    assert not Path(over["output_dir"]).exists()
