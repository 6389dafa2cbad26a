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
from faircompress.compress.qat import (ActivationQuant, FakeQuantInt8, activation_params, activation_quant_params, attach_fake_quant,
                                      calibrate_inputs, fake_quant_int8, quantised_kernels, strip_fake_quant)
from faircompress.compress.quantization import _exact_int8, _symmetric_int8, quantize_weights_int8
from faircompress.compress.recipes import RecipeError, TuneContext, parse_recipe
from faircompress.config import ConfigError, load_config
from faircompress.models import MODELS, build_model
from faircompress.store import ResultStore
from faircompress.study import run_study
from faircompress.train import load_checkpoint, save_checkpoint

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


# --- activations: a static QDQ file ------------------------------------------------------------------------
def _act_net() -> nn.Module:
    """As `_net`, but the dense layer's input comes from BatchNorm and average pooling (no ReLU): signed,
    so its zero point is not 0."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 32, 3, padding=1), nn.BatchNorm2d(32),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 10), nn.ReLU(), nn.Linear(10, 3)).eval()


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 1, SIDE, SIDE)).astype(np.uint8)


def _activation_qdq(path: Path) -> dict[str, tuple[float, int, str]]:
    """Per int8 kernel (by weight name): the (scale, zero point, zero point's type) of the
    QuantizeLinear/DequantizeLinear pair its layer's input comes through (constants followed through
    the exporter's Identity nodes); kernels whose input comes straight in are left out."""
    g = onnx.load(str(path)).graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for node in g.node:
        if node.op_type == "Identity" and node.input[0] in consts:
            consts[node.output[0]] = consts[node.input[0]]
    producer = {o: n for n in g.node for o in n.output}
    out = {}
    for node in g.node:
        dq = producer.get(node.input[0]) if node.op_type in ("Conv", "Gemm", "MatMul") else None
        if dq is None or dq.op_type != "DequantizeLinear" or producer[dq.input[0]].op_type != "QuantizeLinear":
            continue
        q = producer[dq.input[0]]
        assert q.input[1:] == dq.input[1:]  # one scale and zero point for both halves of the pair
        scale, zero = consts[q.input[1]], consts[q.input[2]]
        assert scale.shape == () and scale.dtype == np.float32 and zero.shape == ()  # per tensor
        out[node.input[1]] = (float(scale), int(zero), str(zero.dtype))
    return out


def test_qat_with_activations_writes_a_static_file_with_the_trained_scales_and_weights(tmp_path):
    model, images = _act_net(), _images(300)
    step = parse_recipe([{"qat": {"activations": True, "epochs": 2}}]).steps[0]
    ctx = TuneContext(fine_tune=_tune, seed=0, images=lambda: images)
    ranges = calibrate_inputs(_act_net(), images[:256])  # the incoming model, on int8-static's default sample
    step.apply(model, ctx)
    trained = activation_quant_params(model)
    assert set(trained) == {"2.input_quant", "6.input_quant"} and ctx.details == {"qat": {"activations": trained}}
    for layer, (low, high) in ranges.items():  # calibrated once with ORT's own rule, then kept fixed
        assert low < 0 < high if layer == "6" else low == 0 < high
        assert trained[f"{layer}.input_quant"] == dict(zip(("scale", "zero_point"), activation_params(low, high)))
    assert trained["6.input_quant"]["zero_point"] not in (0, 255) and trained["2.input_quant"]["zero_point"] == 0
    weights = {f"{k}.weight": m.weight.detach().numpy() for k, m in quantised_kernels(model).items()}
    src = export_onnx(model, tmp_path / "m.onnx", (1, SIDE, SIDE))
    step.transform(src, tmp_path / "q.onnx", images)
    # (a) the file's activation scale and zero point, per quantised layer input, are the trained ones, bit for bit
    assert _activation_qdq(tmp_path / "q.onnx") == {
        f"{k[:-len('.input_quant')]}.weight": (v["scale"], v["zero_point"], "uint8") for k, v in trained.items()}
    # (b) and its int8 weights are the trained fake-quantised weights, bit for bit
    stored = _stored_kernels(tmp_path / "q.onnx")
    assert set(stored) == set(weights)
    for name, w in weights.items():
        np.testing.assert_array_equal(stored[name], w)
    # (c) it runs in ONNX Runtime and predicts as the fake-quantised PyTorch model
    x = _images(64, seed=1).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    out = _ort(tmp_path / "q.onnx", x)
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.95  # float sums in another order can move a code by one
    np.testing.assert_allclose(out, ref, atol=0.05 * np.abs(ref).max())


def _stored_kernels(path: Path) -> dict[str, np.ndarray]:
    """Each int8 kernel as DequantizeLinear computes it, by weight name (activation pairs skipped)."""
    g = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    out = {}
    for node in g.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits and inits[node.input[0]].dtype == np.int8:
            q, scale = inits[node.input[0]], inits[node.input[1]]
            axis = next((a.i for a in node.attribute if a.name == "axis"), None)
            shape = [1] * q.ndim
            if axis is not None:
                shape[axis] = -1
            out[node.output[0]] = q.astype(np.float32) * scale.reshape(shape if axis is not None else ())
    return out


def test_activation_fake_quantisation_is_quantize_dequantize_linear_with_clipped_straight_through_gradients():
    quant = ActivationQuant(0.5, 10)
    x = torch.tensor([-6.0, -5.0, -0.25, 0.25, 0.75, 3.0, 122.5, 122.8, 200.0], requires_grad=True)
    y = quant(x)
    # codes round half to even: -0.25/0.5 = -0.5 -> 0, 0.75/0.5 = 1.5 -> 2; then + 10 and clipped to 0..255
    np.testing.assert_array_equal(y.detach().numpy(), [-5.0, -5.0, 0.0, 0.0, 1.0, 3.0, 122.5, 122.5, 122.5])
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0, 1, 1, 1, 1, 1, 1, 0, 0])  # zero where clipped
    assert activation_params(-1.0, 3.0) == (pytest.approx(4 / 255), 64)  # ORT's rule: (max - min) / 255, round(-min / scale)
    assert activation_params(2.0, 3.0) == (pytest.approx(3 / 255), 0)  # the range always holds 0


def test_a_checkpoint_of_qat_with_activations_rebuilds_and_exports_the_same_file(tmp_path):
    model, images = _act_net(), _images(64)
    step = parse_recipe([{"qat": {"activations": True, "epochs": 1}}]).steps[0]
    step.apply(model, TuneContext(fine_tune=_tune, seed=0, images=lambda: images))
    save_checkpoint(model, tmp_path / "m.safetensors")
    again = _act_net()
    step.rebuild(again, None, (1, SIDE, SIDE))
    load_checkpoint(again, tmp_path / "m.safetensors")
    assert activation_quant_params(again) == activation_quant_params(model)
    for m, name in ((model, "a"), (again, "b")):
        step.transform(export_onnx(m, tmp_path / f"{name}.onnx", (1, SIDE, SIDE)), tmp_path / f"{name}-q.onnx", images)
    assert _activation_qdq(tmp_path / "a-q.onnx") == _activation_qdq(tmp_path / "b-q.onnx")
    x = images.astype(np.float32)
    np.testing.assert_array_equal(_ort(tmp_path / "a-q.onnx", x), _ort(tmp_path / "b-q.onnx", x))


@pytest.mark.parametrize("name", MODELS.names())
def test_every_models_qat_kernels_get_their_inputs_quantised_in_the_file(name, tmp_path):
    torch.manual_seed(0)
    model = build_model(name, in_channels=1, num_classes=8, input_size=16).eval()
    images = np.random.default_rng(0).integers(0, 256, (16, 1, 16, 16)).astype(np.uint8)
    step = parse_recipe([{"qat": {"activations": True, "epochs": 0}}]).steps[0]
    step.apply(model, TuneContext(fine_tune=None, seed=0, images=lambda: images))
    step.transform(export_onnx(model, tmp_path / "m.onnx", (1, 16, 16)), tmp_path / "q.onnx", images)
    found = _activation_qdq(tmp_path / "q.onnx")
    trained = activation_quant_params(model)
    assert set(found) == {f"{k}.weight" for k in quantised_kernels(model)}  # pca_mlp: none (its fixed maps stay as int8-qat)
    for weight, (scale, zero, dtype) in found.items():
        assert (scale, zero, dtype) == (trained[weight[:-len("weight")] + "input_quant"]["scale"],
                                        trained[weight[:-len("weight")] + "input_quant"]["zero_point"], "uint8")
    x = images.astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert (_ort(tmp_path / "q.onnx", x).argmax(1) == ref.argmax(1)).mean() >= 0.9


def test_qat_with_activations_needs_calibration_images():
    step = parse_recipe([{"qat": {"activations": True}}]).steps[0]
    with pytest.raises(ValueError, match="calibrates on training images"):
        step.apply(_act_net(), TuneContext(fine_tune=_tune, seed=0))


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


def test_activations_off_by_default_leave_qat_configs_keys_run_ids_and_labels_as_before():
    from faircompress.plan import plan

    recipes = [[{"qat": {}}], [{"prune": {"sparsity": 0.5}}, {"quantize": {"mode": "qat", "epochs": 1}}]]
    assert [parse_recipe(r).key() for r in recipes] == ["e32fe78694f9", "b52728c5c225"]  # as before `activations` existed
    assert parse_recipe([{"qat": {"activations": False}}]).to_config() == [{"qat": {"epochs": 2, "per_channel_dense": False}}]
    cfg = load_config(None, {"recipes": recipes, "seeds": [0], "repeats": 1})
    assert cfg.recipes[0] == [{"qat": {"epochs": 2, "per_channel_dense": False}}]
    assert sorted(r.run_id for r in plan(cfg)) == ["3c29fb8bcee1749f23c3", "55a481b5572a40641e4d", "bb8c0dcfc8413ee2a5dc",
                                                    "e6b66d2ecaf2c1e5ef41"]  # computed before the parameter was added
    on = parse_recipe([{"prune": {"sparsity": 0.5}}, {"quantize": {"mode": "qat", "activations": True, "epochs": 1}}])
    assert on.label == "prune 50% + int8-qat-static [epochs=1]" and on.technique == "prune + qat"
    assert on.to_config()[1] == {"qat": {"epochs": 1, "per_channel_dense": False, "activations": True}}
    assert on.key() != parse_recipe(recipes[1]).key() and parse_recipe(recipes[0]).label == "int8-qat"


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


def test_a_study_runs_qat_with_activations_and_its_static_file_predicts_as_the_checkpoint(tiny_overrides):
    from faircompress.data.registry import load_dataset
    from faircompress.train import predict

    cfg = load_config(None, {**tiny_overrides, "train.epochs": 1, "evaluation.memory": False, "evaluation.latency": False,
                             "recipes": [[{"quantize": {"mode": "qat", "activations": True, "epochs": 1}}]], "repeats": 1, "seeds": [0]})
    assert cfg.recipes == [[{"qat": {"epochs": 1, "per_channel_dense": False, "activations": True}}]]
    run_study(cfg)
    out = Path(cfg.output_dir)
    runs = ResultStore.open_existing(out).runs().set_index("variant")
    assert (runs.status == "finished").all(), runs[["status", "error"]]
    run = runs.loc["int8-qat-static [epochs=1]"]
    assert run.technique == "qat"
    step = parse_recipe(cfg.recipes[0]).steps[0]
    model = build_model("paper_cnn", in_channels=1, num_classes=8, input_size=TINY_DATA["image_size"])
    step.rebuild(model, None, (1, TINY_DATA["image_size"], TINY_DATA["image_size"]))
    (ckpt,) = [p for p in (out / "models").glob("*/model.safetensors")]  # the fine-tuned model, as saved
    load_checkpoint(model, ckpt)
    trained = activation_quant_params(model)
    assert trained and _activation_qdq(out / run.artefact) == {
        f"{k[:-len('.input_quant')]}.weight": (v["scale"], v["zero_point"], "uint8") for k, v in trained.items()}
    kernels = {f"{k}.weight": m.weight.detach().numpy() for k, m in quantised_kernels(model).items()}
    stored = _stored_kernels(out / run.artefact)
    assert set(stored) == set(kernels) and all(np.array_equal(stored[k], w) for k, w in kernels.items())
    data = load_dataset("synthetic", TINY_DATA)
    x = data.images[data.indices("test")]
    model.eval()
    assert (_ort(out / run.artefact, x.astype(np.float32)).argmax(1) == predict(model, x, 64)).mean() >= 0.95


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
