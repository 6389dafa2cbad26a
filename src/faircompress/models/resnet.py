"""ResNet-18 (He et al., 2016), written here with torchvision's parameter names, so published ImageNet
weights load by name: ``conv1``, ``bn1``, ``layer1.0.conv1`` ... ``layer4.1.bn2``,
``layer2.0.downsample.0/1``, ``fc``. timm's ``resnet18`` uses the same names (its extra modules,
``act1``, ``aa``, ``drop_block``, hold no tensors), so its safetensors file loads unchanged.

From scratch, inputs under 64 px get a 3x3 stride-1 stem and no max-pool (the CIFAR form): the
standard 7x7 stride-2 stem with its max-pool would leave a 48 px face 12 px wide before the first
block. With ``pretrained`` weights the standard stem is kept at any input size, since the weights
were learnt with it.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .registry import MODELS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SMALL_INPUT = 64  # sides below this get the small stem when training from scratch
WIDTHS, BLOCKS = (64, 128, 256, 512), (2, 2, 2, 2)
OPTIONAL_KEYS = ("num_batches_tracked",)  # absent from torchvision's older files (saved before PyTorch 0.4.1)


class PretrainedError(ValueError):
    """A weights file that cannot be used; the message names the file and the first offending key."""


class PixelInput(nn.Module):
    """Raw 0..255 pixels to the network's input: scaled to 0..1, then ``(x - mean) / std`` per
    channel when normalising (pretrained weights expect ImageNet statistics), as one multiply-add."""

    def __init__(self, channels: int, normalise: bool) -> None:
        super().__init__()
        mean = _channel_stats(IMAGENET_MEAN, channels) if normalise else [0.0] * channels
        std = _channel_stats(IMAGENET_STD, channels) if normalise else [1.0] * channels
        scale = torch.tensor([1 / (255 * s) for s in std]).view(1, -1, 1, 1)
        shift = torch.tensor([-m / s for m, s in zip(mean, std)]).view(1, -1, 1, 1)
        self.register_buffer("scale", scale, persistent=False)  # not in the state dict: set by the constructor
        self.register_buffer("shift", shift, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def _channel_stats(rgb: Sequence[float], channels: int) -> list[float]:
    """Per-channel statistics for ``channels`` inputs: the RGB mean for one (gray) channel, else
    the RGB values repeated (as timm adapts its first convolution)."""
    if channels == 1:
        return [sum(rgb) / 3]
    return [rgb[i % 3] for i in range(channels)]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a shortcut (a strided 1x1 convolution + BatchNorm
    when the shape changes), torchvision's names."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + shortcut)


class ResNet18(nn.Module):
    """ResNet-18 taking raw 0..255 pixels: stem, four stages of two BasicBlocks (64, 128, 256,
    512 channels), global average pooling, a dense layer to the classes (logits)."""

    def __init__(self, in_channels: int, num_classes: int, small_stem: bool, normalise: bool, width: int = 64) -> None:
        super().__init__()
        widths = [w * width // 64 for w in WIDTHS]  # width 64: ResNet-18 itself; less: the same net, thinner
        self.pixels = PixelInput(in_channels, normalise)
        if small_stem:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        cin = widths[0]
        for i, (width, blocks) in enumerate(zip(widths, BLOCKS), start=1):
            stride = 1 if i == 1 else 2
            self.add_module(f"layer{i}", nn.Sequential(*[BasicBlock(cin if b == 0 else width, width, stride if b == 0 else 1)
                                                         for b in range(blocks)]))
            cin = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision's initialisation: He-normal (fan-out) convolutions, BatchNorm at identity."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) raw pixels -> (B, classes)
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.pixels(x)))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ----------------------------------------------------------------------------- pretrained weights
@functools.cache
def imagenet_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor of torchvision's ImageNet resnet18 state dict (3 channels, 1,000 classes) and its
    shape, in state-dict order; built on the meta device, so nothing is allocated."""
    with torch.device("meta"):
        model = ResNet18(3, 1000, small_stem=False, normalise=True)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def read_weights(path: str | Path) -> dict[str, Any]:
    """The tensors of a weights file by name: a safetensors file, or a PyTorch file read with
    ``weights_only=True`` (a plain state dict; no arbitrary unpickling)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(9)
        if len(head) == 9 and head[8:9] == b"{":  # safetensors: an 8-byte header length, then a JSON header
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise PretrainedError(f"{path}: cannot read the weights file ({e.strerror or e})") from None
    except Exception as e:  # any parser failure: a truncated file, a pickle of more than tensors
        raise PretrainedError(f"{path}: {_unreadable(e)}") from None
    if not isinstance(state, dict):
        raise PretrainedError(f"{path}: holds a {type(state).__name__}, not a state dict of named tensors")
    return state


def _unreadable(e: Exception) -> str:
    """Why a file could not be parsed, in one line (PyTorch's messages run to paragraphs)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    unpickler = re.search(r"WeightsUnpickler error:\s*([^\n]*?)(?: was not an allowed global.*)?$", text, re.MULTILINE)
    if unpickler and "Unsupported global" in unpickler.group(1):
        return f"holds Python objects besides tensors ({unpickler.group(1)}), which are never unpickled: save a plain state dict"
    first = unpickler.group(1) if unpickler else (text.splitlines()[0].split(". ")[0] if text else "")
    return f"not a safetensors or PyTorch weights file ({type(e).__name__}{': ' + first if first else ''})"


def check_weights(state: dict[str, Any], path: str | Path) -> None:
    """Refuse a state dict that is not torchvision's resnet18 by names and shapes, naming the file
    and the first offending key (an unknown name, then a missing one)."""
    expected = imagenet_shapes()
    required = [k for k in expected if not k.endswith(OPTIONAL_KEYS)]
    missing = [k for k in required if k not in state]
    for key, value in state.items():
        if key not in expected:
            hint = f" (first missing resnet18 key: {missing[0]!r})" if missing else ""
            raise PretrainedError(f"{path}: unexpected key {key!r}, not a resnet18 tensor name{hint}")
        if not isinstance(value, torch.Tensor):
            raise PretrainedError(f"{path}: {key!r} is a {type(value).__name__}, not a tensor")
        if tuple(value.shape) != expected[key]:
            raise PretrainedError(f"{path}: {key!r} has shape {list(value.shape)}, resnet18's is {list(expected[key])}")
        if not key.endswith(OPTIONAL_KEYS) and not value.is_floating_point():
            raise PretrainedError(f"{path}: {key!r} holds {value.dtype}, not floating-point values")
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise PretrainedError(f"{path}: resnet18 key {missing[0]!r} is missing{more}")


def adapt_weights(state: dict[str, torch.Tensor], in_channels: int) -> dict[str, torch.Tensor]:
    """The ImageNet weights for this model: the 1,000-class head dropped (the model has its own),
    the first convolution summed over RGB for one input channel, or for other counts its RGB kernels
    repeated and scaled by 3 / channels (as timm does), so the first layer's response keeps its scale."""
    out = {k: v for k, v in state.items() if not k.startswith("fc.")}
    w = out["conv1.weight"].float()
    if in_channels == 1:
        w = w.sum(1, keepdim=True)
    elif in_channels != 3:
        w = w.repeat(1, -(-in_channels // 3), 1, 1)[:, :in_channels] * (3 / in_channels)
    out["conv1.weight"] = w
    return out


def load_pretrained(model: ResNet18, path: str | Path, in_channels: int) -> None:
    state = read_weights(path)
    check_weights(state, path)
    missing, unexpected = model.load_state_dict(adapt_weights(state, in_channels), strict=False)
    left = [k for k in missing if not k.startswith("fc.") and not k.endswith(OPTIONAL_KEYS)]
    assert not left and not unexpected, f"checked weights did not load: {left or unexpected}"


# ----------------------------------------------------------------------------- the registered factory
def _use_small_stem(small_input_stem: bool | None, pretrained: object, input_size: int) -> bool:
    if small_input_stem and pretrained is not None:
        raise ValueError("small_input_stem: true cannot go with pretrained weights, which were learnt with the 7x7 stride-2 stem")
    if small_input_stem is None:
        return pretrained is None and input_size < SMALL_INPUT
    return small_input_stem


def check_params(params: dict[str, Any]) -> None:
    """What can be checked when a config loads, before any dataset: the parameters' types, the stem,
    and the pretrained file (readable, torchvision's resnet18 names and shapes)."""
    pretrained, stem, width = params.get("pretrained"), params.get("small_input_stem"), params.get("width", 64)
    if stem is not None and not isinstance(stem, bool):
        raise ValueError(f"params.small_input_stem must be true, false or null, not {stem!r}")
    if not isinstance(width, int) or isinstance(width, bool) or not 8 <= width <= 64 or width % 8:
        raise ValueError(f"params.width must be a multiple of 8 from 8 to 64 (the first stage's channels; 64 is ResNet-18), not {width!r}")
    if pretrained is not None and width != 64:
        raise ValueError(f"params.width {width} cannot go with pretrained weights, which are ResNet-18's own (width 64)")
    if pretrained is None:
        return
    if not isinstance(pretrained, (str, Path)) or not str(pretrained):
        raise ValueError(f"params.pretrained must be the path of a weights file, not {pretrained!r}")
    _use_small_stem(stem, pretrained, SMALL_INPUT)
    try:
        check_weights(read_weights(pretrained), pretrained)
    except PretrainedError as e:
        raise ValueError(f"params.pretrained: {e}") from None


@MODELS.register("resnet18")
def resnet18(*, in_channels: int, num_classes: int, input_size: int, pretrained: str | None = None,
             small_input_stem: bool | None = None, width: int = 64) -> nn.Module:
    """ResNet-18 (torchvision's layout and names), from scratch or from ImageNet weights; ``width``
    below 64 makes every stage proportionally thinner (from scratch only)."""
    check_params({"pretrained": None, "small_input_stem": small_input_stem, "width": width})
    if pretrained is not None and width != 64:
        raise ValueError(f"params.width {width} cannot go with pretrained weights, which are ResNet-18's own (width 64)")
    small = _use_small_stem(small_input_stem, pretrained, input_size)
    model = ResNet18(in_channels, num_classes, small_stem=small, normalise=pretrained is not None, width=width)
    if pretrained is not None:
        load_pretrained(model, pretrained, in_channels)
    return model


resnet18.check_params = check_params  # type: ignore[attr-defined]  # run by config validation (see models/registry.py)
resnet18.file_params = ("pretrained",)  # type: ignore[attr-defined]  # hashed into the study's identity (config.py)


def scratch_params(params: dict[str, Any]) -> dict[str, Any]:
    """The parameters of the same architecture without the pretrained file (a random-init control):
    the pretrained model's standard stem is kept at any input size."""
    if params.get("pretrained") is None:
        return dict(params)
    return {**{k: v for k, v in params.items() if k != "pretrained"}, "small_input_stem": False}


resnet18.scratch_params = scratch_params  # type: ignore[attr-defined]  # used by baseline.initial_model(from_scratch=True)
