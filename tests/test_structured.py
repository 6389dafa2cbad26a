"""prune_channels (l1_channels): whole channels removed by L1 norm, so the network and its file shrink."""
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from faircompress.compress.export import export_onnx
from faircompress.compress.recipes import TuneContext, parse_recipe
from faircompress.compress.structured import PruneChannelsStep, channel_counts, prune_l1_channels, rebuild, removed_count
from faircompress.config import load_config
from faircompress.models import build_model
from faircompress.store import ResultStore
from faircompress.study import run_study
from faircompress.train import checkpoint_metadata, load_checkpoint


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # a plain session
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _node_shapes(path: Path) -> dict[str, list[tuple[int, ...]]]:
    """Per operator type, the shape of each node's weight (input 1), in graph order (BatchNorm: its
    scale). Read through the nodes: the exporter shares identical initializers between layers (Identity nodes)."""
    g = onnx.load(str(path)).graph
    inits = {i.name: tuple(i.dims) for i in g.initializer}
    out: dict[str, list[tuple[int, ...]]] = {}
    for n in g.node:
        if n.op_type == "Identity" and n.input[0] in inits:
            inits[n.output[0]] = inits[n.input[0]]
        if n.op_type in ("Conv", "Gemm", "BatchNormalization"):
            out.setdefault(n.op_type, []).append(inits[n.input[1]])
    return out


def _pixels(side: int, n: int = 3) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 1, side, side)).astype(np.float32)


# --- the file is smaller in shape ----------------------------------------------------------------
def test_paper_cnn_loses_a_quarter_of_every_layers_channels_in_the_exported_graph(tmp_path):
    torch.manual_seed(0)
    model = build_model("paper_cnn", in_channels=1, num_classes=8, input_size=32).eval()  # 2 x 2 positions at the flatten
    prune_l1_channels(model, 0.25, (1, 32, 32))
    path = export_onnx(model, tmp_path / "m.onnx", (1, 32, 32))
    shapes = _node_shapes(path)
    assert shapes["Conv"] == [(48, 1, 3, 3), (96, 48, 5, 5), (384, 96, 3, 3), (384, 384, 3, 3)]  # out shrinks, the next in follows
    assert shapes["BatchNormalization"] == [(48,), (96,), (384,), (384,), (192,), (384,)]  # each BatchNorm follows its layer
    assert shapes["Gemm"] == [(192, 384 * 2 * 2), (384, 192), (8, 384)]  # flatten: channels x positions; all 8 classes kept
    x = _pixels(32)
    out = _ort(path, x)
    assert out.shape == (3, 8)
    with torch.no_grad():
        np.testing.assert_allclose(out, model(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-4)


def test_removing_channels_that_contribute_nothing_leaves_the_function_unchanged():
    """The index bookkeeping (BatchNorm, the next layer's inputs, the flatten's channel x positions):
    channels given the smallest filters and a BatchNorm that outputs 0 are the ones removed, and the
    shrunk network computes exactly what the full one did."""
    torch.manual_seed(0)
    model = build_model("paper_cnn", in_channels=1, num_classes=8, input_size=32).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer, bn in [(model.features[i], model.features[i + 1]) for i in (0, 5, 10, 15)] + [(model.classifier[1], model.classifier[2]),
                                                                                               (model.classifier[5], model.classifier[6])]:
            n = layer.weight.shape[0]
            dead = torch.randperm(n, generator=gen)[: n // 2]
            layer.weight[dead] *= 1e-3
            bn.weight[dead] = 0
            bn.bias[dead] = 0  # after ReLU (and max-pooling) these channels are 0 for every input
    x = torch.from_numpy(_pixels(32))
    with torch.no_grad():
        before = model(x)
    prune_l1_channels(model, 0.5, (1, 32, 32))
    assert channel_counts(model) == {"features.0": 32, "features.5": 64, "features.10": 256, "features.15": 256,
                                     "classifier.1": 128, "classifier.5": 256, "classifier.9": 8}
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-4)


# --- the L1 choice ---------------------------------------------------------------------------------
def _filters(conv: nn.Conv2d, norms: list[float]) -> None:
    """Give each filter of ``conv`` the L1 norm in ``norms``, with mixed signs (the norm is of |w|)."""
    k = conv.weight[0].numel()
    sign = torch.tensor([1.0, -1.0] * k)[:k].view_as(conv.weight[0])
    with torch.no_grad():
        for c, v in enumerate(norms):
            conv.weight[c] = sign * v / k


def test_the_channels_with_the_smallest_l1_norms_are_removed_and_the_next_layers_inputs_follow():
    net = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    _filters(net[0], [5.0, 1.0, 4.0, 2.0, 6.0, 3.0])
    _filters(net[3], [3.0, 1.0, 4.0, 2.0])
    with torch.no_grad():
        net[0].bias.fill_(100.0)
        net[0].bias[1] = -100.0  # a bias is not part of its filter's norm
        net[1].running_mean.copy_(torch.arange(6.0))
    w1, w2, fc = net[0].weight.detach().clone(), net[3].weight.detach().clone(), net[7].weight.detach().clone()
    prune_l1_channels(net, 0.5, (1, 6, 6))
    kept1, kept2 = [0, 2, 4], [0, 2]  # norms 5, 4, 6 and 3, 4 stay
    torch.testing.assert_close(net[0].weight, w1[kept1])
    assert torch.equal(net[1].running_mean, torch.tensor([0.0, 2.0, 4.0]))  # the BatchNorm's channels follow
    torch.testing.assert_close(net[3].weight, w2[kept2][:, kept1])  # the next conv loses the same input channels
    torch.testing.assert_close(net[7].weight, fc[:, kept2])
    assert net[7].out_features == 3  # the class layer keeps its classes


def test_counts_and_round_to():
    assert [removed_count(64, s) for s in (0.25, 0.5, 0.75)] == [16, 32, 48]
    assert removed_count(30, 0.5) == 15 and removed_count(3, 0.9) == 2  # one channel always stays
    assert removed_count(64, 0.3, round_to=8) == 24  # 64 - 19 = 45 kept, rounded down to 40
    assert removed_count(12, 0.9, round_to=8) == 4  # never fewer than one multiple


# --- residual connections, the class layer, other models -----------------------------------------------
def test_resnet18_residual_coupled_channels_are_pruned_together_by_their_summed_l1_norms(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet18", in_channels=1, num_classes=8, input_size=16).eval()
    full = {k: v.clone() for k, v in model.state_dict().items()}
    prune_l1_channels(model, 0.5, (1, 16, 16))
    counts = channel_counts(model)
    assert counts["fc"] == 8 and all(counts[k] == w // 2 for k, w in
                                     [("conv1", 64), ("layer1.0.conv1", 64), ("layer1.1.conv2", 64), ("layer2.0.downsample.0", 128),
                                      ("layer3.1.conv1", 256), ("layer4.0.conv2", 512), ("layer4.1.conv2", 512)])
    l1 = {k: full[f"{k}.weight"].abs().flatten(1).sum(1) for k in ("conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.0.conv1")}
    stage = sorted(torch.argsort(l1["conv1"] + l1["layer1.0.conv2"] + l1["layer1.1.conv2"], stable=True)[32:].tolist())  # one group
    inner = sorted(torch.argsort(l1["layer1.0.conv1"], stable=True)[32:].tolist())
    state = model.state_dict()
    assert torch.equal(state["conv1.weight"], full["conv1.weight"][stage])
    assert torch.equal(state["layer1.0.conv1.weight"], full["layer1.0.conv1.weight"][inner][:, stage])
    assert torch.equal(state["layer1.0.conv2.weight"], full["layer1.0.conv2.weight"][stage][:, inner])
    assert torch.equal(state["layer1.0.bn2.running_var"], full["layer1.0.bn2.running_var"][stage])
    inner2 = sorted(torch.argsort(full["layer1.1.conv1.weight"].abs().flatten(1).sum(1), stable=True)[32:].tolist())
    assert torch.equal(state["layer1.1.conv2.weight"], full["layer1.1.conv2.weight"][stage][:, inner2])  # the block's output: the stage's channels
    path = export_onnx(model, tmp_path / "r.onnx", (1, 16, 16))
    x = _pixels(16)
    with torch.no_grad():
        np.testing.assert_allclose(_ort(path, x), model(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-4)


def test_a_class_layer_followed_by_more_operations_keeps_its_classes_and_pca_mlp_loses_hidden_units():
    class Own(nn.Module):  # a user's model: the class layer's output is scaled and shifted before it is returned
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 16), nn.ReLU())
            self.head = nn.Linear(16, 5)

        def forward(self, x):
            return self.head(self.body(x / 255)) * 2 - 1

    own = Own()
    prune_l1_channels(own, 0.5, (1, 8, 8))
    assert channel_counts(own) == {"body.0": 4, "body.4": 8, "head": 5}
    mlp = build_model("pca_mlp", in_channels=1, num_classes=8, input_size=16)
    prune_l1_channels(mlp, 0.5, (1, 16, 16))
    assert channel_counts(mlp) == {"hidden": 15, "out": 8} and mlp.out.in_features == 15


def test_rebuild_replays_the_removal_on_a_fresh_model_so_the_shrunk_state_dict_loads():
    torch.manual_seed(0)
    model = build_model("paper_cnn", in_channels=1, num_classes=8, input_size=16).train()
    history = prune_l1_channels(model, 0.5, (1, 16, 16), round_to=8)
    assert model.training  # tracing left the mode as it was
    fresh = build_model("paper_cnn", in_channels=1, num_classes=8, input_size=16)
    rebuild(fresh, json.loads(json.dumps(history)), (1, 16, 16))  # the record goes through JSON in the checkpoint
    fresh.load_state_dict(model.state_dict())
    x = torch.from_numpy(_pixels(16))
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), model.eval()(x))


# --- the step ---------------------------------------------------------------------------------------------
def test_the_step_is_written_either_way_and_is_its_own_technique():
    a = parse_recipe([{"prune_channels": {"sparsity": 0.5}}])
    b = parse_recipe([{"prune": {"method": "l1_channels", "sparsity": 0.5}}])
    assert a.to_config() == b.to_config() == [{"prune_channels": {"sparsity": 0.5, "epochs": 2, "round_to": None}}]
    assert isinstance(b.steps[0], PruneChannelsStep)
    assert a.technique == "prune_channels" and a.level == 0.5 and a.label == "prune channels 50%"
    both = parse_recipe([{"prune_channels": {"sparsity": 0.25, "round_to": 8}}, {"quantize": {"mode": "int8-weights"}}])
    assert both.technique == "prune_channels + quantize" and both.label == "prune channels 25% [round_to=8] + int8-weights"
    with pytest.raises(ValueError, match="input_shape"):
        a.steps[0].apply(nn.Linear(2, 2), TuneContext(fine_tune=None, seed=0))


def test_a_study_prunes_channels_shares_the_shrunk_model_and_quantises_its_file(tiny_overrides, monkeypatch):
    rebuilt = []
    monkeypatch.setattr(PruneChannelsStep, "rebuild", lambda self, *a: rebuilt.append(1) or rebuild(a[0], a[1], a[2]))
    recipes = [[{"prune_channels": {"sparsity": 0.5, "epochs": 1}}],
               [{"prune_channels": {"sparsity": 0.5, "epochs": 1}}, {"quantize": {"mode": "int8-weights"}}]]
    cfg = load_config(None, {**tiny_overrides, "train.epochs": 1, "evaluation.memory": False, "evaluation.latency": False,
                             "recipes": recipes, "repeats": 1, "seeds": [0]})
    run_study(cfg)
    out = Path(cfg.output_dir)
    store = ResultStore.open_existing(out)
    runs = store.runs().set_index("variant")
    assert (runs.status == "finished").all(), runs[["status", "error"]]
    pruned, int8 = runs.loc["prune channels 50% [epochs=1]"], runs.loc["prune channels 50% [epochs=1] + int8-weights"]
    assert pruned.technique == "prune_channels" and int8.technique == "prune_channels + quantize" and pruned.level == int8.level == 0.5
    metrics = store.metrics()
    params = metrics[(metrics.metric == "parameters") & (metrics.group == "")].set_index("run_id").value
    fp32 = runs.loc["baseline (fp32)"].run_id  # the baseline's own file
    assert params[pruned.run_id] < 0.3 * params[fp32]  # about a quarter: layers lose half their inputs and half their outputs
    assert params[int8.run_id] == pytest.approx(params[pruned.run_id], rel=0.01)  # the same shapes (plus int8's scales)
    store.close()
    (ckpt,) = (out / "models").glob("*/model.safetensors")  # one fine-tuned model for both recipes
    assert rebuilt == [1]  # the second recipe rebuilt the shrunk architecture to load it
    side = cfg.dataset.params["image_size"]
    model = build_model("paper_cnn", in_channels=1, num_classes=8, input_size=side)
    rebuild(model, json.loads(checkpoint_metadata(ckpt)["records"])["prune_channels"], (1, side, side))
    load_checkpoint(model, ckpt)
    assert channel_counts(model)["features.15"] == 256
    x = _pixels(side)
    with torch.no_grad():
        np.testing.assert_allclose(_ort(out / pruned.artefact, x), model.eval()(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-3)
    q = _ort(out / int8.artefact, x)
    assert q.shape == (3, 8) and np.isfinite(q).all()
