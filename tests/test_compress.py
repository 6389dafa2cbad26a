"""Compression techniques, export and quantisation, checked on the exported files themselves."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import TINY_DATA
from onnx import numpy_helper

from faircompress.compress.clustering import Clustered, cluster_model, distinct_values, nearest, strip_clustering
from faircompress.compress.export import export_onnx
from faircompress.compress.pruning import MagnitudePruner, magnitude_masks, prunable
from faircompress.compress.quantization import quantize_dynamic_int8, quantize_static_int8, quantize_weights_int8
from faircompress.compress.recipes import STEPS, RecipeError, TuneContext, parse_recipe
from faircompress.config import ConfigError, TrainConfig, load_config
from faircompress.data.synthetic import SyntheticParams, generate
from faircompress.evaluate.size import onnx_size_report
from faircompress.models import build_model
from faircompress.train import fit

SIZE = 16  # input side: the paper's CNN at its smallest


@pytest.fixture(scope="module")
def tiny():
    return generate(SyntheticParams(**TINY_DATA))


def _model(seed=0, classes=8):
    torch.manual_seed(seed)
    return build_model("paper_cnn", in_channels=1, num_classes=classes, input_size=SIZE).eval()


def _ctx(tiny, seed=0):
    cfg = TrainConfig(epochs=1, batch_size=8, precision="fp32", device="cpu")
    return TuneContext(fine_tune=lambda m, e, after: fit(m, tiny, cfg.model_copy(update={"epochs": e}), seed, after_step=after), seed=seed)


def _initializers(path):
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def _run(path, n=4):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # a plain session, no helpers
    x = np.random.default_rng(0).integers(0, 256, (n, 1, SIZE, SIZE)).astype(np.float32)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


# --- pruning -------------------------------------------------------------------------------------
@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9])
def test_pruned_export_has_exactly_the_requested_sparsity_per_tensor(sparsity, tiny, tmp_path):
    model = _model()
    STEPS.get("prune")(STEPS.get("prune").Params(sparsity=sparsity, epochs=1)).apply(model, _ctx(tiny))
    inits = _initializers(export_onnx(model, tmp_path / "p.onnx", (1, SIZE, SIZE)))
    for name in prunable(model):
        w = inits[name]
        assert (w == 0).sum() == round(sparsity * w.size), name
    assert np.count_nonzero(inits["features.1.weight"]) == inits["features.1.weight"].size  # BatchNorm untouched
    assert np.count_nonzero(inits["features.0.bias"]) == inits["features.0.bias"].size  # biases untouched


def test_global_magnitude_pruning_ranks_across_layers():
    w = {"a": torch.tensor([0.1, 0.2, 0.3, 0.4]), "b": torch.tensor([5.0, 6.0, 7.0, 8.0])}
    masks = magnitude_masks(w, 0.5, scope="global")
    assert masks["a"].sum() == 0 and masks["b"].all()
    per = magnitude_masks(w, 0.5)
    assert per["a"].tolist() == [False, False, True, True] and per["b"].tolist() == [False, False, True, True]


def test_masks_are_reapplied_every_step_and_updated_on_schedule():
    model = _model()
    pruner = MagnitudePruner(model, 0.5, frequency=2)
    w = next(iter(pruner.weights.values()))
    with torch.no_grad():
        w.add_(1.0)  # an optimiser step moved pruned weights
    old = {k: m.clone() for k, m in pruner.masks.items()}
    pruner.after_step(1)  # not a mask update: the old mask is re-applied
    assert all(torch.equal(pruner.masks[k], old[k]) for k in old) and (w[~old[next(iter(old))]] == 0).all()


# --- clustering ------------------------------------------------------------------------------------
@pytest.mark.parametrize("clusters,init", [(4, "linear"), (16, "kmeans++")])
def test_clustered_export_holds_at_most_n_values_per_kernel(clusters, init, tiny, tmp_path):
    model = _model()
    STEPS.get("cluster")(STEPS.get("cluster").Params(clusters=clusters, init=init, epochs=1)).apply(model, _ctx(tiny))
    assert not any("parametrizations" in k for k in model.state_dict())
    inits = _initializers(export_onnx(model, tmp_path / "c.onnx", (1, SIZE, SIZE)))
    for name in prunable(model):
        assert 2 <= np.unique(inits[name]).size <= clusters, name


def test_clustering_gradients_reach_centroids_and_latent_weights():
    model = _model()
    cluster_model(model, 8)
    conv = model.features[0]
    x = torch.rand(2, 1, SIZE, SIZE) * 255
    model.train()
    model(x).sum().backward()
    cents = conv.parametrizations.weight[0].centroids
    assert cents.grad is not None and cents.grad.abs().sum() > 0
    assert conv.parametrizations.weight.original.grad.abs().sum() > 0  # straight-through
    assert torch.unique(conv.weight).numel() <= 8


@pytest.mark.parametrize("k", [2, 3, 16, 128])
def test_nearest_matches_brute_force(k):
    gen = torch.Generator().manual_seed(k)
    w = torch.randn(5000, generator=gen) * 0.05
    for cents in (torch.linspace(-0.1, 0.1, k),  # sorted, evenly spaced (the linear init)
                  torch.randn(k, generator=gen) * 0.05,  # unsorted, uneven
                  torch.cat([torch.tensor([0.01, 0.01 + 1e-9]), torch.randn(k - 2, generator=gen)])[:k]):  # nearly merged
        idx = nearest(w, cents)
        dist = (w[:, None] - cents[None]).abs()
        assert idx.shape == w.shape and idx.dtype == torch.int32
        assert torch.allclose(dist.gather(1, idx[:, None].long())[:, 0], dist.min(1).values, atol=1e-7)


@pytest.mark.parametrize("shape", [(8, 4, 3, 3), (8, 1, 3, 3)])
def test_clustered_weight_keeps_layout_and_reference_gradients(shape):
    latent = torch.randn(shape).contiguous(memory_format=torch.channels_last).requires_grad_()
    clustered = Clustered(torch.linspace(-2, 2, 6))
    out = clustered(latent)
    assert out.stride() == latent.stride()  # channels_last kernels keep the fast convolution paths
    upstream = torch.randn(shape)
    (out * upstream).sum().backward()
    ref_c = clustered.centroids.detach().clone().requires_grad_()
    ref_w = latent.detach().clone().requires_grad_()
    idx = nearest(ref_w.detach(), ref_c.detach())
    ((ref_c[idx] + (ref_w - ref_w.detach())) * upstream).sum().backward()
    assert torch.equal(out.detach(), ref_c.detach()[idx])
    assert torch.allclose(clustered.centroids.grad, ref_c.grad, atol=1e-5)
    assert torch.allclose(latent.grad, ref_w.grad)


def test_preserve_sparsity_keeps_pruned_zeros(tiny):
    model = _model()
    MagnitudePruner(model, 0.6)
    cluster_model(model, 4, preserve_sparsity=True)
    _ctx(tiny).fine_tune(model, 1, None)
    strip_clustering(model)
    for name, w in prunable(model).items():
        assert (w == 0).sum() >= round(0.6 * w.numel()), name
        assert torch.unique(w[w != 0]).numel() <= 4
    assert max(distinct_values(model).values()) <= 5


# --- quantisation ----------------------------------------------------------------------------------
def test_int8_weights_matches_the_tflite_dynamic_range_setting(tmp_path):
    model = _model()
    src = export_onnx(model, tmp_path / "m.onnx", (1, SIZE, SIZE))
    quantize_weights_int8(src, tmp_path / "q.onnx")
    g = onnx.load(str(tmp_path / "q.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    int8 = {k for k, v in inits.items() if v.dtype == np.int8 and v.size >= 1024}
    assert {k.removesuffix("_int8") for k in int8} == {k for k, v in _initializers(src).items() if v.size >= 1024 and k.endswith("weight")}
    assert all(inits[k].min() >= -127 for k in int8)  # symmetric range
    assert inits["features.5.weight_scale"].shape == (128,)  # conv: per output channel
    assert inits["classifier.1.weight_scale"].shape == ()  # dense: per tensor, as TFLite's FULLY_CONNECTED
    assert inits["features.0.weight"].dtype == np.float32  # 576 elements: left float
    assert all(v.dtype == np.float32 for k, v in inits.items() if k.endswith(".bias"))
    assert not any(n.op_type in ("QuantizeLinear", "ConvInteger", "QLinearConv") for n in g.node)  # float activations
    ref, q = _run(src, 16), _run(tmp_path / "q.onnx", 16)
    assert np.abs(ref - q).max() < 0.05 * np.abs(ref).max()


def test_int8_weights_can_quantise_dense_layers_per_channel(tmp_path):
    src = export_onnx(_model(), tmp_path / "m.onnx", (1, SIZE, SIZE))
    quantize_weights_int8(src, tmp_path / "q.onnx", per_channel_dense=True)
    inits = _initializers(tmp_path / "q.onnx")
    assert inits["classifier.1.weight_scale"].shape == (256,) and inits["features.5.weight_scale"].shape == (128,)
    step = parse_recipe([{"quantize": {"per_channel_dense": True}}]).steps[0]
    assert step.params.per_channel_dense and "per_channel_dense=True" in step.short()


def test_static_and_dynamic_int8_produce_integer_graphs(tiny, tmp_path):
    src = export_onnx(_model(), tmp_path / "m.onnx", (1, SIZE, SIZE))
    quantize_static_int8(src, tmp_path / "s.onnx", tiny.images[:32])
    ops = {n.op_type for n in onnx.load(str(tmp_path / "s.onnx")).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    quantize_dynamic_int8(src, tmp_path / "d.onnx")
    ops = {n.op_type for n in onnx.load(str(tmp_path / "d.onnx")).graph.node}
    assert ops & {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"}
    for f in ("s.onnx", "d.onnx"):
        assert _run(tmp_path / f).shape == (4, 8)


def test_fp16_export_halves_the_file_and_keeps_float32_io(tmp_path):
    full = export_onnx(_model(), tmp_path / "f.onnx", (1, SIZE, SIZE))
    half = export_onnx(_model(), tmp_path / "h.onnx", (1, SIZE, SIZE), fp16=True)
    r, h = onnx_size_report(full), onnx_size_report(half)
    assert 0.45 < h["raw_bytes"] / r["raw_bytes"] < 0.55
    assert _run(half).dtype == np.float32
    assert np.allclose(_run(full), _run(half), rtol=0.05, atol=0.05 * np.abs(_run(full)).max())


def test_export_is_one_self_contained_file(tmp_path):
    path = export_onnx(_model(), tmp_path / "m.onnx", (1, SIZE, SIZE))
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    assert not any(i.data_location == onnx.TensorProto.EXTERNAL for i in onnx.load(str(path)).graph.initializer)


# --- recipes and configs ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "recipe,needle",
    [([{"prune": {"sparsity": 1.0}}], "step 1 (prune): sparsity"),
     ([{"cluster": {"clusters": 1}}], "step 1 (cluster): clusters"),
     ([{"quantize": {"mode": "int4"}}], "step 1 (quantize): mode"),
     ([{"quantize": {}}, {"prune": {"sparsity": 0.5}}], "'prune' cannot come after 'quantize'"),
     ([{"shrink": {}}], "unknown step 'shrink'"),
     ([{"prune": {"sparsity": 0.5, "speed": 2}}], "speed: Extra inputs"),
     ([{"prune": {"sparsity": 0.2}}, {"prune": {"sparsity": 0.3}}], "appears 2 times")],
)
def test_bad_recipes_are_rejected_before_anything_runs(recipe, needle):
    with pytest.raises(RecipeError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        parse_recipe(recipe, "recipe 2")
    with pytest.raises(ConfigError) as e:
        load_config(None, {"recipes": [[{"prune": {"sparsity": 0.5}}], recipe]})
    assert "recipes" in str(e.value) and "recipe 2" in str(e.value)


def test_masks_follow_the_weights_to_their_device():
    model = _model()
    pruner = MagnitudePruner(model, 0.5)  # masks built on the CPU
    device = "cuda" if torch.cuda.is_available() else "meta"  # meta: a device without data, the CPU-only stand-in
    model.to(device)
    pruner.after_step(1)
    assert {m.device.type for m in pruner.masks.values()} == {device}
    pruner.after_step(pruner.frequency)
    assert {m.device.type for m in pruner.masks.values()} == {device}


def test_finalize_keeps_the_restored_checkpoint_and_its_exact_sparsity():
    model = _model()
    pruner = MagnitudePruner(model, 0.5, frequency=1)
    best = {k: v.clone() for k, v in model.state_dict().items()}  # the selected epoch, masked when saved
    with torch.no_grad():
        for w in pruner.weights.values():
            w.add_(torch.randn_like(w))  # later epochs move the weights ...
    pruner.after_step(1)  # ... and the masks with them
    model.load_state_dict(best)  # fit restores the selected epoch
    pruner.finalize()
    for k, v in model.state_dict().items():
        assert torch.equal(v, best[k]), k  # nothing alive in the checkpoint is zeroed
    for name, w in pruner.weights.items():
        assert int((w == 0).sum()) == round(0.5 * w.numel()), name


def test_the_first_and_last_layers_can_be_left_out_of_clustering_and_pruning():
    torch.manual_seed(0)
    model = build_model("paper_cnn", in_channels=1, num_classes=8, input_size=16)
    names = list(prunable(model))
    step = parse_recipe([{"cluster": {"clusters": 4, "epochs": 0, "skip": ["first", "last"]}}]).train_steps[0]
    step.apply(model, TuneContext(fine_tune=lambda *a, **k: None, seed=0))
    values = distinct_values(model)
    assert values[names[0]] > 4 and values[names[-1]] > 4  # left as they were
    assert all(values[n] <= 4 for n in names[1:-1])
    assert parse_recipe([{"cluster": {"clusters": 4}}]).key() == parse_recipe([{"cluster": {"clusters": 4, "skip": []}}]).key()
    with pytest.raises(ValueError, match=r"cluster skip: no layer 'nope' in this model; its layers are .*first, last"):
        cluster_model(build_model("paper_cnn", in_channels=1, num_classes=8, input_size=16), 4, skip=("nope",))
    prune = parse_recipe([{"prune": {"sparsity": {"default": 0.5, "first": 0.0, "last": 0.0}}}]).train_steps[0]
    levels = prune.params.layer_sparsities(names)
    assert levels[names[0]] == levels[names[-1]] == 0 and all(levels[n] == 0.5 for n in names[1:-1])
