import pytest
import torch

from faircompress.models import MODELS, build_model


def _count_with_bn_stats(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters()) + sum(b.numel() for n, b in m.named_buffers() if "running_" in n)


def test_paper_cnn_ckplus_parameter_count():
    m = build_model("paper_cnn", in_channels=1, num_classes=8, input_size=48)
    assert _count_with_bn_stats(m) == 4_479_240  # Table 1, Keras counts BN moving statistics


def test_paper_cnn_rafdb_trainable_parameter_count():
    m = build_model("paper_cnn", in_channels=1, num_classes=7, input_size=100)
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == 8_013_703  # Table 2


def test_paper_cnn_layer_shapes_follow_table_1():
    m = build_model("paper_cnn", in_channels=1, num_classes=8, input_size=48).eval()
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(64, (3, 3)), (128, (5, 5)), (512, (3, 3)), (512, (3, 3))]
    dense = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)]
    assert [(d.in_features, d.out_features) for d in dense] == [(4608, 256), (256, 512), (512, 8)]


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("channels,size,classes", [(1, 48, 8), (3, 32, 7)])
def test_every_registered_model_builds_and_runs(name, channels, size, classes):
    m = build_model(name, in_channels=channels, num_classes=classes, input_size=size).eval()
    x = torch.randint(0, 256, (3, channels, size, size)).float()
    y = m(x)
    assert y.shape == (3, classes)
    assert torch.isfinite(y).all()


def test_too_small_input_is_rejected():
    with pytest.raises(ValueError, match="too small"):
        build_model("paper_cnn", in_channels=1, num_classes=8, input_size=8)


@pytest.mark.parametrize("p", [0.25, 0.5])
def test_fast_dropout_matches_dropout_statistics(p):
    from faircompress.models.layers import Dropout

    drop = Dropout(p).train()
    x = torch.ones(64, 32, 12, 12).contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.manual_seed(0)
    y = drop(x)
    assert abs((y == 0).float().mean().item() - p) < 0.01
    assert abs(y.mean().item() - 1) < 0.02  # kept values scaled by 1 / (1 - p)
    assert y.is_contiguous(memory_format=torch.channels_last)
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # gradient = mask x scale
    torch.manual_seed(0)
    assert torch.equal(drop(x), y)  # seeded
    flat = drop(torch.ones(10_000, 8))  # each of the four 16-bit lanes of a draw is uniform
    for lane in range(4):
        assert abs((flat.reshape(-1, 4)[:, lane] == 0).float().mean().item() - p) < 0.02
    assert drop.eval()(x) is x


def test_paper_cnn_batchnorm_follows_keras_by_default():
    """Keras: moving = 0.99 * moving + 0.01 * batch, eps 1e-3 (PyTorch's defaults: 0.1 and 1e-5)."""
    m = build_model("paper_cnn", in_channels=1, num_classes=8, input_size=16)
    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == 6 and all(b.momentum == 0.01 and b.eps == 1e-3 for b in bns)
    assert m.rescale.scale == 1.0  # the authors fed unscaled pixels, which Keras's slow statistics need
    x = torch.full((4, 1, 16, 16), 255.0)
    m.train()
    m(x)
    first = m.features[1]  # after the first conv: the batch mean moved the running mean 1 % of the way
    with torch.no_grad():
        batch_mean = m.features[0](m.rescale(x)).mean((0, 2, 3))
    assert torch.allclose(first.running_mean, 0.01 * batch_mean, atol=1e-6)
    torch_bn = build_model("paper_cnn", in_channels=1, num_classes=8, input_size=16, batchnorm="pytorch")
    assert all(b.momentum == 0.1 and b.eps == 1e-5 for b in torch_bn.modules() if isinstance(b, torch.nn.modules.batchnorm._BatchNorm))
