"""ResNet-18: its size, its stems, ImageNet weights by torchvision's names, and every compression step
on it down to the exported file."""
import hashlib
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from conftest import TINY_DATA
from fakes import torchvision_resnet18_shapes
from onnx import numpy_helper
from safetensors.torch import load_file, save_file

from faircompress.compress.export import export_onnx
from faircompress.compress.pruning import prunable
from faircompress.compress.recipes import TuneContext, parse_recipe
from faircompress.config import ConfigError, TrainConfig, load_config
from faircompress.data.synthetic import SyntheticParams, generate
from faircompress.models import build_model
from faircompress.models.resnet import PretrainedError
from faircompress.train import fit

ROOT = Path(__file__).resolve().parents[1]
SIDE, CLASSES = 16, 8


def _trainable(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


@pytest.mark.parametrize("classes,count", [(8, 11_171_784), (7, 11_171_271)])
def test_resnet18_from_scratch_at_48px_gray_has_the_documented_size(classes, count):
    assert _trainable(build_model("resnet18", in_channels=1, num_classes=classes, input_size=48)) == count


def test_resnet18_has_torchvisions_names_and_shapes():
    m = build_model("resnet18", in_channels=3, num_classes=1000, input_size=224)
    state = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    expected = torchvision_resnet18_shapes()
    assert state == expected and len(state) == 122  # 62 parameters, 3 statistics for each of 20 BatchNorms
    assert len(list(m.parameters())) == 62 and _trainable(m) == 11_689_512  # torchvision's count


def test_the_stem_is_small_below_64_px_from_scratch_and_switchable():
    small = build_model("resnet18", in_channels=1, num_classes=8, input_size=48)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1) and isinstance(small.maxpool, torch.nn.Identity)
    for m in (build_model("resnet18", in_channels=1, num_classes=8, input_size=64),
              build_model("resnet18", in_channels=1, num_classes=8, input_size=48, small_input_stem=False)):
        assert m.conv1.kernel_size == (7, 7) and m.conv1.stride == (2, 2) and isinstance(m.maxpool, torch.nn.MaxPool2d)
    forced = build_model("resnet18", in_channels=1, num_classes=8, input_size=224, small_input_stem=True)
    assert forced.conv1.kernel_size == (3, 3)


def test_from_scratch_the_model_takes_raw_pixels_and_scales_them_to_0_1():
    m = build_model("resnet18", in_channels=1, num_classes=8, input_size=SIDE)
    assert torch.allclose(m.pixels(torch.tensor([0.0, 255.0]).view(2, 1, 1, 1)).flatten(), torch.tensor([0.0, 1.0]))
    assert "pixels.scale" not in m.state_dict()  # set by the constructor, so the state dict is torchvision's


# --- pretrained weights -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> dict:
    """A file with torchvision's resnet18 names and shapes and random values, as .pth (without
    num_batches_tracked, like torchvision's older files) and as safetensors (with them; timm's names
    are the same)."""
    gen = torch.Generator().manual_seed(0)
    state = {k: (torch.randint(0, 100, s, generator=gen) if k.endswith("num_batches_tracked") else torch.randn(s, generator=gen))
             for k, s in torchvision_resnet18_shapes().items()}
    state |= {k: v.abs() + 0.5 for k, v in state.items() if k.endswith("running_var")}  # variances are positive
    root = tmp_path_factory.mktemp("weights")
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, root / "resnet18-f37072fd.pth")
    save_file(state, root / "model.safetensors")
    return {"state": state, "pth": root / "resnet18-f37072fd.pth", "safetensors": root / "model.safetensors", "root": root}


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_imagenet_weights_load_by_name_and_the_head_is_new(imagenet, fmt):
    state = imagenet["state"]
    m = build_model("resnet18", in_channels=3, num_classes=CLASSES, input_size=SIDE, pretrained=str(imagenet[fmt]))
    got = m.state_dict()
    for k, v in state.items():
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked"):
            assert torch.equal(got[k], v), k
    assert got["fc.weight"].shape == (CLASSES, 512) and got["fc.bias"].shape == (CLASSES,)
    assert not torch.equal(got["fc.weight"], state["fc.weight"][:CLASSES])
    assert m.conv1.kernel_size == (7, 7) and isinstance(m.maxpool, torch.nn.MaxPool2d)  # the stem the weights were learnt with
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(m.pixels(255 * mean.view(1, 3, 1, 1)).flatten(), torch.zeros(3), atol=1e-6)  # ImageNet statistics
    assert torch.allclose(m.pixels(255 * (mean + std).view(1, 3, 1, 1)).flatten(), torch.ones(3), atol=1e-5)


def test_gray_input_gets_the_rgb_kernels_summed_and_a_seeded_head(imagenet):
    def build():
        torch.manual_seed(5)
        return build_model("resnet18", in_channels=1, num_classes=CLASSES, input_size=48, pretrained=str(imagenet["pth"]))

    a, b = build(), build()
    assert torch.allclose(a.conv1.weight, imagenet["state"]["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(a.fc.weight, b.fc.weight)  # the baseline's seed fixes the new head
    y = a.eval()(torch.randint(0, 256, (2, 1, 48, 48)).float())
    assert y.shape == (2, CLASSES) and torch.isfinite(y).all()


def _variant(imagenet, name: str, change) -> Path:
    state = dict(imagenet["state"])
    change(state)
    path = imagenet["root"] / name
    save_file(state, path) if name.endswith(".safetensors") else torch.save(state, path)
    return path


@pytest.mark.parametrize("name,change,needle", [
    ("renamed.pth", lambda s: s.__setitem__("layer2.1.convX.weight", s.pop("layer2.1.conv1.weight")), "'layer2.1.convX.weight'"),
    ("shape.safetensors", lambda s: s.__setitem__("layer3.0.bn2.running_var", torch.ones(128)), "'layer3.0.bn2.running_var' has shape [128]"),
    ("missing.pth", lambda s: s.pop("layer4.1.bn2.bias"), "'layer4.1.bn2.bias' is missing"),
])
def test_a_wrong_key_or_shape_is_one_line_naming_the_key_and_file(imagenet, name, change, needle):
    path = _variant(imagenet, name, change)
    with pytest.raises(PretrainedError) as e:
        build_model("resnet18", in_channels=1, num_classes=CLASSES, input_size=SIDE, pretrained=str(path))
    msg = str(e.value)
    assert needle in msg and str(path) in msg and "\n" not in msg
    with pytest.raises(ConfigError) as e:  # and the config refuses it when it loads, naming the field
        load_config(None, {"model": {"name": "resnet18", "params": {"pretrained": str(path)}}})
    assert needle in str(e.value) and "params.pretrained" in str(e.value)


class _Payload:
    """Unpickling it creates a file: proof that a full unpickle ran."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_a_pickle_of_more_than_tensors_is_never_unpickled(imagenet):
    path, witness = imagenet["root"] / "evil.pth", imagenet["root"] / "unpickled"
    torch.save({"conv1.weight": torch.zeros(1), "x": _Payload(witness)}, path)
    with pytest.raises(PretrainedError, match="never unpickled"):
        build_model("resnet18", in_channels=1, num_classes=CLASSES, input_size=SIDE, pretrained=str(path))
    assert not witness.exists()
    junk = imagenet["root"] / "junk.pth"
    junk.write_bytes(b"not a weights file")
    with pytest.raises(PretrainedError, match="not a safetensors or PyTorch weights file"):
        build_model("resnet18", in_channels=1, num_classes=CLASSES, input_size=SIDE, pretrained=str(junk))


def test_a_missing_weights_file_or_a_conflicting_stem_stops_the_config(tmp_path, imagenet):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(ConfigError) as e:
        load_config(None, {"model": {"name": "resnet18", "params": {"pretrained": str(missing)}}})
    assert "model" in str(e.value) and "params.pretrained" in str(e.value) and str(missing) in str(e.value)
    with pytest.raises(ConfigError, match="small_input_stem"):
        load_config(None, {"model": {"name": "resnet18", "params": {"pretrained": str(imagenet["pth"]), "small_input_stem": True}}})
    cfg = load_config(None, {"model": {"name": "resnet18", "params": {"pretrained": str(imagenet["safetensors"])}}})
    assert cfg.model.params["pretrained"] == str(imagenet["safetensors"])


def test_the_cli_exits_2_on_a_bad_weights_file_before_any_study_folder(imagenet, tmp_path):
    from typer.testing import CliRunner

    from faircompress.cli import app

    bad = _variant(imagenet, "renamed-cli.pth", lambda s: s.__setitem__("fc.w", s.pop("fc.weight")))
    cfg = tmp_path / "study.yaml"
    cfg.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "study"), "model": {"name": "resnet18", "params": {"pretrained": str(bad)}}}))
    res = CliRunner().invoke(app, ["run", str(cfg)])
    assert res.exit_code == 2 and "'fc.w'" in res.output and "model (line" in res.output
    assert not (tmp_path / "study").exists()


def test_a_study_starts_its_baseline_from_the_pretrained_weights(imagenet, tiny_overrides, monkeypatch):
    import faircompress.baseline as baseline
    from faircompress.study import run_study

    seen = {}

    def recording_fit(model, *args, **kwargs):
        seen.update({k: v.clone() for k, v in model.state_dict().items()})
        return real_fit(model, *args, **kwargs)

    real_fit = baseline.fit
    monkeypatch.setattr(baseline, "fit", recording_fit)
    cfg = load_config(None, {**tiny_overrides, "train.epochs": 1, "evaluation": {"latency": False, "memory": False},
                             "model": {"name": "resnet18", "params": {"pretrained": str(imagenet["safetensors"])}},
                             "repeats": 1})
    report = run_study(cfg)
    assert not report.failed and len(report.ran) == 2  # the baseline, and its fp32 export (built again, pretrained)
    state = imagenet["state"]
    assert torch.equal(seen["conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))
    assert all(torch.equal(seen[k], state[k]) for k in state if k != "conv1.weight" and not k.startswith("fc.") and "num_batches" not in k)


def test_the_resnet18_config_is_the_default_grid_with_resnet18():
    cfg = load_config(ROOT / "configs" / "resnet18-synthetic.yaml")
    default = load_config(ROOT / "configs" / "synthetic.yaml")
    assert cfg.model.name == "resnet18" and cfg.recipes == default.recipes and cfg.dataset == default.dataset
    assert cfg.output_dir != default.output_dir


# --- every compression step on ResNet-18, measured on the exported file -----------------------------
@pytest.fixture(scope="module")
def tiny():
    return generate(SyntheticParams(**TINY_DATA))


def _compressed(tiny, steps: list, path: Path) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = build_model("resnet18", in_channels=1, num_classes=CLASSES, input_size=SIDE)
    cfg = TrainConfig(epochs=1, batch_size=8, precision="fp32", device="cpu")
    tune = TuneContext(fine_tune=lambda m, e, after: fit(m, tiny, cfg.model_copy(update={"epochs": e}), 0, after_step=after), seed=0)
    recipe = parse_recipe(steps)
    for s in recipe.train_steps:
        s.apply(model, tune)
    out = export_onnx(model, path, (1, SIDE, SIDE), fp16=recipe.export_precision == "fp16")
    for i, s in enumerate(recipe.export_steps):
        dst = path.with_name(f"{path.stem}-{i}.onnx")
        s.transform(out, dst, tiny.images[:32])
        out = dst
    return model, out


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def _runs_in_plain_onnxruntime(path: Path) -> None:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).integers(0, 256, (3, 1, SIDE, SIDE)).astype(np.float32)
    y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert y.shape == (3, CLASSES) and np.isfinite(y).all()


def test_pruned_resnet18_export_has_the_exact_sparsity_in_every_kernel_and_int8_keeps_it(tiny, tmp_path):
    model, path = _compressed(tiny, [{"prune": {"sparsity": 0.5, "epochs": 1}}], tmp_path / "p.onnx")
    inits = _initializers(path)
    kernels = list(prunable(model))
    assert len(kernels) == 21 and "layer2.0.downsample.0.weight" in kernels and "fc.weight" in kernels  # 20 convolutions + fc
    for name in kernels:
        assert (inits[name] == 0).sum() == round(0.5 * inits[name].size), name
    assert np.count_nonzero(inits["layer1.0.bn1.weight"]) == 64  # BatchNorm untouched
    _runs_in_plain_onnxruntime(path)
    parse_recipe([{"quantize": {"mode": "int8-weights"}}]).export_steps[0].transform(path, tmp_path / "pq.onnx", tiny.images[:8])
    codes = _initializers(tmp_path / "pq.onnx")
    quantised = [k for k in kernels if f"{k}_int8" in codes]
    assert quantised == kernels[1:]  # all but the 3x3x1x64 stem, under the 1,024 elements int8 leaves float
    for name in quantised:  # prune 50 % + int8: the zeros survive as zero codes
        assert (codes[f"{name}_int8"] == 0).mean() >= 0.5, name
    _runs_in_plain_onnxruntime(tmp_path / "pq.onnx")


def test_clustered_resnet18_export_holds_at_most_n_values_per_kernel(tiny, tmp_path):
    model, path = _compressed(tiny, [{"cluster": {"clusters": 8, "epochs": 1}}], tmp_path / "c.onnx")
    inits = _initializers(path)
    for name in prunable(model):
        assert 2 <= np.unique(inits[name]).size <= 8, name
    _runs_in_plain_onnxruntime(path)


@pytest.mark.parametrize("mode", ["int8-weights", "int8-static", "int8-dynamic", "fp16"])
def test_every_quantisation_mode_on_resnet18_runs_in_onnxruntime(tiny, tmp_path, mode):
    _, path = _compressed(tiny, [{"quantize": {"mode": mode}}], tmp_path / "q.onnx")
    _runs_in_plain_onnxruntime(path)
    if mode == "int8-weights":
        codes = _initializers(path)
        assert codes["layer4.1.conv2.weight_int8"].dtype == np.int8 and codes["layer4.1.conv2.weight_scale"].shape == (512,)


def test_the_pretrained_files_content_is_part_of_the_studys_identity(imagenet, tmp_path):
    """The study binds to the weights, not to their path: a file changed in place is refused."""
    from faircompress.config import dump_config
    from faircompress.plan import result_fields

    path = tmp_path / "weights.safetensors"
    shutil.copy(imagenet["safetensors"], path)
    cfg = load_config(None, {"model": {"name": "resnet18", "params": {"pretrained": str(path)}}})
    assert cfg.model.params_sha256 == {"pretrained": hashlib.sha256(path.read_bytes()).hexdigest()}
    saved = tmp_path / "config.yaml"
    saved.write_text(dump_config(cfg))
    assert load_config(saved).model.params_sha256 == cfg.model.params_sha256  # a study's saved config reloads
    before = result_fields(cfg)
    state = load_file(str(path))
    state["fc.bias"] = state["fc.bias"] + 1
    save_file(state, str(path))
    with pytest.raises(ConfigError, match=r"params_sha256.pretrained is given as .* the file changed"):
        load_config(saved)
    assert result_fields(load_config(None, {"model": {"name": "resnet18", "params": {"pretrained": str(path)}}})) != before
    assert "params_sha256" not in dump_config(load_config(None, {}))  # a registered model without files dumps as before


def test_a_thinner_resnet18_keeps_the_layout_and_is_refused_with_pretrained_weights(imagenet):
    thin = build_model("resnet18", in_channels=1, num_classes=7, input_size=48, width=16)
    full = build_model("resnet18", in_channels=1, num_classes=7, input_size=48)
    assert list(thin.state_dict()) == list(full.state_dict())  # the same names: every step finds the same layers
    assert thin.layer4[1].conv2.weight.shape == (128, 128, 3, 3) and thin.fc.weight.shape == (7, 128)
    with pytest.raises(ValueError, match="params.width 16 cannot go with pretrained weights"):
        build_model("resnet18", in_channels=3, num_classes=7, input_size=64, width=16, pretrained=str(imagenet["pth"]))
    with pytest.raises(ValueError, match="params.width must be a multiple of 8"):
        build_model("resnet18", in_channels=1, num_classes=7, input_size=48, width=12)
