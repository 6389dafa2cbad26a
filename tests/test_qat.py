"""Quantisation-aware training: the file's int8 weights are the weights the model was trained with."""
from pathlib import Path

import numpy as np
import pandas as pd
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import TINY_DATA
from onnx import numpy_helper
from torch import nn
from torch.nn import functional as F

from faircompress.compress.export import export_onnx
from faircompress.compress.qat import FakeQuantInt8, attach_fake_quant, fake_quant_int8, quantised_kernels, strip_fake_quant
from faircompress.compress.quantization import _exact_int8, _symmetric_int8, quantize_weights_int8
from faircompress.compress.recipes import RecipeError, TuneContext, parse_recipe
from faircompress.config import ConfigError, load_config
from faircompress.models import MODELS, build_model
from faircompress.store import ResultStore
from faircompress.study import run_study
from faircompress.train import load_checkpoint

SIDE = 8


def _net() -> nn.Module:
    """A conv kernel of 1,152 (per channel), a dense one of 1,280 (per tensor), two small ones (float)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 10), nn.ReLU(), nn.Linear(10, 3)).eval()


def _tune(model: nn.Module, epochs: int, after_step) -> None:
    """A stand-in for the training recipe: a few Adam steps on random data."""
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(16, 1, SIDE, SIDE, generator=gen) * 255, torch.randint(3, (16,), generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for i in range(5 * epochs):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if after_step:
            after_step(i + 1)
    model.eval()


def _stored(path: Path) -> dict[str, np.ndarray]:
    """Each int8 kernel as DequantizeLinear computes it (code x scale), by the weight's name."""
    g = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    out = {}
    for node in g.node:
        if node.op_type == "DequantizeLinear":
            q, scale = inits[node.input[0]], inits[node.input[1]]
            axis = next((a.i for a in node.attribute if a.name == "axis"), None)
            shape = [1] * q.ndim
            if axis is not None:
                shape[axis] = -1
            assert q.dtype == np.int8 and q.min() >= -127
            out[node.output[0]] = q.astype(np.float32) * scale.reshape(shape if axis is not None else ())
    return out


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # a plain session
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


# --- the defining property -------------------------------------------------------------------------
def test_the_files_int8_weights_times_scales_are_the_trained_fake_quantised_weights(tmp_path):
    model = _net()
    with torch.no_grad():  # pruned by hand: every other weight of the big kernels is zero
        for m in quantised_kernels(model).values():
            m.weight.view(-1)[::2] = 0
    zeros = {f"{k}.weight": (m.weight == 0).clone() for k, m in quantised_kernels(model).items()}
    step = parse_recipe([{"quantize": {"mode": "qat", "epochs": 2}}]).steps[0]
    before = {k: fake_quant_int8(m.weight, 0 if isinstance(m, nn.Conv2d) else None) for k, m in quantised_kernels(model).items()}
    step.apply(model, TuneContext(fine_tune=_tune, seed=0))
    assert not any("parametrizations" in k for k in model.state_dict())  # stripped: plain weights
    trained = {f"{k}.weight": m.weight.detach().numpy() for k, m in quantised_kernels(model).items()}
    assert set(trained) == {"2.weight", "7.weight"}
    assert any(not torch.equal(before[k[:-7]], torch.from_numpy(w)) for k, w in trained.items())  # fine-tuning moved them
    src = export_onnx(model, tmp_path / "m.onnx", (1, SIDE, SIDE))
    step.transform(src, tmp_path / "q.onnx", np.zeros((0, 1, SIDE, SIDE), np.uint8))
    stored = _stored(tmp_path / "q.onnx")
    assert set(stored) == set(trained)
    for name, w in trained.items():
        np.testing.assert_array_equal(stored[name], w)  # bit for bit, not merely close
        assert (stored[name][zeros[name].numpy()] == 0).all(), name  # the incoming zeros stayed zero
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "q.onnx")).graph.initializer}
    assert inits["0.weight"].dtype == np.float32 and inits["9.weight"].dtype == np.float32  # under 1,024: float, as int8-weights
    assert inits["2.weight_scale"].shape == (32,) and inits["7.weight_scale"].shape == ()  # conv per channel, dense per tensor
    x = np.random.default_rng(0).integers(0, 256, (16, 1, SIDE, SIDE)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    out = _ort(tmp_path / "q.onnx", x)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert (out.argmax(1) == ref.argmax(1)).all()


def test_fake_quantisation_is_int8_weights_rounding_with_straight_through_gradients():
    latent = (torch.randn(32, 4, 3, 3) * 0.1).contiguous(memory_format=torch.channels_last).requires_grad_()
    keep = torch.rand(32, 4, 3, 3) > 0.3
    out = FakeQuantInt8(0, keep)(latent)
    assert out.stride() == latent.stride()  # channels_last kernels keep the fast convolution paths
    q, scale = _symmetric_int8((latent.detach() * keep).numpy(), 0)
    np.testing.assert_array_equal(out.detach().numpy(), q.astype(np.float32) * scale[:, None, None, None])
    assert (out.detach()[~keep] == 0).all()
    upstream = torch.randn(32, 4, 3, 3)
    (out * upstream).sum().backward()
    assert torch.equal(latent.grad, upstream * keep)  # identity where kept; pruned weights get nothing
    w = torch.randn(10, 200)
    dense = fake_quant_int8(w, None)  # per tensor: one grid of at most 255 values, its ends at +-max|w|
    assert torch.unique(dense).numel() <= 255 and float(dense.abs().max()) == pytest.approx(float(w.abs().max()), rel=1e-6)


def test_qat_without_fine_tuning_writes_the_int8_weights_file(tmp_path):
    """Zero epochs: the same codes and scales as post-training int8-weights, so the two are comparable."""
    model = build_model("paper_cnn", in_channels=1, num_classes=8, input_size=16).eval()
    ptq = quantize_weights_int8(export_onnx(model, tmp_path / "f.onnx", (1, 16, 16)), tmp_path / "ptq.onnx")
    step = parse_recipe([{"qat": {"epochs": 0}}]).steps[0]
    step.apply(model, TuneContext(fine_tune=None, seed=0))
    step.transform(export_onnx(model, tmp_path / "q.onnx", (1, 16, 16)), tmp_path / "qat.onnx", np.zeros(0))
    a = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "ptq.onnx")).graph.initializer}
    b = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "qat.onnx")).graph.initializer}
    assert a.keys() == b.keys() and not any(ptq.values())  # PTQ's float weights are not on the grid; QAT's are
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_kernel_qat_rounds_is_stored_exactly(name, tmp_path):
    torch.manual_seed(0)
    model = build_model(name, in_channels=1, num_classes=8, input_size=16).eval()
    attach_fake_quant(model)
    rounded = {f"{k}.weight" for k in quantised_kernels(model)}
    strip_fake_quant(model)
    exact = quantize_weights_int8(export_onnx(model, tmp_path / "m.onnx", (1, 16, 16)), tmp_path / "q.onnx", exact=True)
    assert rounded <= set(exact) and all(exact[k] for k in rounded)


def test_exact_scales_recover_a_grid_that_max_over_127_misses():
    # float32 scales s whose grid's maximum, 127 s, divided by 127 is not s again (about 1 in 130)
    s = (np.arange(0, 2**23, 97, dtype=np.uint32) | np.uint32(120 << 23)).view(np.float32)
    missed = s[(np.float32(127) * s) / np.float32(127) != s][:8]
    assert len(missed)
    codes = np.tile(np.arange(-127, 128, dtype=np.float32), (len(missed), 1))
    grid = codes * missed[:, None]
    q, scale = _exact_int8(grid, 0)
    np.testing.assert_array_equal(q.astype(np.float32) * scale[:, None], grid)
    assert not np.array_equal(_symmetric_int8(grid, 0)[1], scale)  # max/127 alone would have moved these weights
    w = np.random.default_rng(0).normal(size=(16, 300)).astype(np.float32)  # off the grid: plain int8-weights
    for axis in (0, None):
        for got, want in zip(_exact_int8(w, axis), _symmetric_int8(w, axis)):
            np.testing.assert_array_equal(got, want)


# --- recipes -----------------------------------------------------------------------------------------
def test_quantize_mode_qat_is_the_qat_step_with_its_own_label_and_technique():
    spelled = parse_recipe([{"prune": {"sparsity": 0.5}}, {"quantize": {"mode": "qat"}}])
    plain = parse_recipe([{"prune": {"sparsity": 0.5}}, {"qat": {}}])
    assert spelled.key() == plain.key() and spelled.to_config()[1] == {"qat": {"epochs": 2, "per_channel_dense": False}}
    assert spelled.label == "prune 50% + int8-qat" and spelled.technique == "prune + qat" and spelled.level == 0.5
    assert [s.name for s in spelled.train_steps] == ["prune", "qat"] and [s.name for s in spelled.export_steps] == ["qat"]
    assert parse_recipe([{"qat": {"epochs": 1}}]).label == "int8-qat [epochs=1]"
    assert parse_recipe([{"quantize": {"mode": "int8-weights"}}]).to_config() == [
        {"quantize": {"mode": "int8-weights", "per_channel_dense": False, "calibration_images": 256}}]  # unchanged
    cfg = load_config(None, {"recipes": [[{"quantize": {"mode": "qat", "epochs": 1}}]]})
    assert cfg.recipes == [[{"qat": {"epochs": 1, "per_channel_dense": False}}]]


@pytest.mark.parametrize("recipe,needle", [
    ([{"qat": {}}, {"quantize": {"mode": "int8-weights"}}], "'qat' cannot be combined with 'quantize'"),
    ([{"quantize": {"mode": "qat"}}, {"prune": {"sparsity": 0.5}}], "'prune' cannot come after 'qat'"),
    ([{"quantize": {"mode": "qat", "calibration_images": 8}}], "step 1 (qat): calibration_images: Extra inputs"),
])
def test_bad_qat_recipes_are_refused(recipe, needle):
    with pytest.raises(RecipeError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        parse_recipe(recipe)
    with pytest.raises(ConfigError):
        load_config(None, {"recipes": [recipe]})


# --- a study ------------------------------------------------------------------------------------------
def test_a_study_runs_prune_then_qat_and_its_file_holds_the_checkpoints_weights(tiny_overrides):
    recipes = [[{"prune": {"sparsity": 0.5, "epochs": 0}}, {"quantize": {"mode": "qat", "epochs": 1}}]]  # one fine-tuning: QAT's
    cfg = load_config(None, {**tiny_overrides, "train.epochs": 1, "evaluation.memory": False, "evaluation.latency": False,
                             "recipes": recipes, "repeats": 1, "seeds": [0]})
    run_study(cfg)
    out = Path(cfg.output_dir)
    runs = ResultStore.open_existing(out).runs().set_index("variant")
    assert (runs.status == "finished").all(), runs[["status", "error"]]
    run = runs.loc["prune 50% [epochs=0] + int8-qat [epochs=1]"]
    assert run.technique == "prune + qat" and run.level == 0.5
    stored = _stored(out / run.artefact)
    model = build_model("paper_cnn", in_channels=1, num_classes=8, input_size=TINY_DATA["image_size"])
    (ckpt,) = [p for p in (out / "models").glob("*/model.safetensors")]  # the fine-tuned model, as saved
    load_checkpoint(model, ckpt)
    kernels = {f"{k}.weight": m.weight.detach().numpy() for k, m in quantised_kernels(model).items()}
    assert kernels and set(kernels) == set(stored)
    for name, w in kernels.items():
        np.testing.assert_array_equal(stored[name], w)
        assert (w == 0).mean() >= 0.5, name  # prune's zeros kept (int8 rounding may add a few)


# --- the report ------------------------------------------------------------------------------------------
def test_the_sizes_figure_puts_qat_beside_post_training_int8(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from faircompress.report import figures
    from faircompress.report.results import Variant

    spec = [("baseline (fp32)", "baseline", np.nan, 4.0), ("int8-weights", "quantize", np.nan, 1.0), ("int8-qat", "qat", np.nan, 1.0),
            ("prune 50%", "prune", 0.5, 2.0), ("prune 50% + int8-weights", "prune + quantize", 0.5, 0.6),
            ("prune 50% + int8-qat", "prune + qat", 0.5, 0.5)]
    variants = [Variant(str(i), label, tech, level, i == 0, (f"r{i}",)) for i, (label, tech, level, _) in enumerate(spec)]
    table = pd.DataFrame({"key": [v.key for v in variants], "size_mb": [s[3] for s in spec]})
    res = SimpleNamespace(variants=variants, reference=variants[0], run_table=lambda: table)
    bars = []
    monkeypatch.setattr(figures, "_size_bar", lambda ax, x, size, base, colour, width=0.6: bars.append((round(x, 3), size, colour)))
    assert figures.sizes(res, tmp_path).is_file()
    assert bars == [(0, 4.0, "tab:blue"), (1, 1.0, "tab:orange"), (2, 1.0, "tab:green"),  # the baseline family
                    (-0.267, 2.0, "tab:blue"), (0.0, 0.6, "tab:orange"), (0.267, 0.5, "tab:green")]  # prune at 0.5
