"""Your own baseline: trained weights (safetensors) to evaluate and compress instead of training, or an
exported ONNX file to quantise and measure. Checks raise `OwnModelError` with one line naming the
file and what does not fit."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .data.dataset import InputShape
from .own_model import OwnModelError, file_sha256, one_line

if TYPE_CHECKING:
    from .config import BaselineConfig, ModelConfig, StudyConfig


# ----------------------------------------------------------------------------- weights
def weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape in a safetensors file, read from its header (no tensor is loaded)."""
    from safetensors import safe_open

    if not path.is_file():
        raise OwnModelError(f"weights file '{path}' does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:
        raise OwnModelError(f"weights file '{path}' cannot be read as safetensors ({one_line(e)})") from None


def check_weights(model: Any, path: Path) -> None:
    """The file holds exactly the model's state dict: the first key that is missing, extra or of
    another shape is named with the expected and the found shape."""
    found = weight_shapes(path)
    for key, tensor in model.state_dict().items():
        want = tuple(tensor.shape)
        if key not in found:
            raise OwnModelError(f"weights file '{path}': key {key!r} is missing (the model expects shape {want})")
        if found[key] != want:
            raise OwnModelError(f"weights file '{path}': key {key!r} has shape {found[key]}, the model expects {want}")
    extra = [k for k in found if k not in model.state_dict()]
    if extra:
        raise OwnModelError(f"weights file '{path}': key {extra[0]!r} (shape {found[extra[0]]}) is not in the model"
                            + (f" ({len(extra) - 1} more)" if len(extra) > 1 else ""))


def load_weights(model: Any, path: Path) -> None:
    """Load checked weights into ``model`` (float tensors take the model's dtype)."""
    from safetensors.torch import load_file

    check_weights(model, path)
    model.load_state_dict(load_file(str(path)))


# ----------------------------------------------------------------------------- an exported ONNX file
def check_onnx_readable(path: Path) -> None:
    """The file exists and is an ONNX model with one input (checked when the config loads)."""
    import onnx

    if not path.is_file():
        raise OwnModelError(f"onnx file '{path}' does not exist")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise OwnModelError(f"onnx file '{path}' cannot be read as an ONNX model ({one_line(e)})") from None
    inputs = _graph_inputs(model)
    if len(inputs) != 1:
        raise OwnModelError(f"onnx file '{path}' has {len(inputs)} inputs; it must take one: a batch of pixels (N, C, H, W)")


def _graph_inputs(model: Any) -> list[Any]:
    initialisers = {i.name for i in model.graph.initializer}  # older exporters list weights as inputs too
    return [i for i in model.graph.input if i.name not in initialisers]


def check_onnx_input(path: Path, shape: InputShape) -> None:
    """The file takes float pixels (N, C, H, W) of the dataset's shape with a free batch axis and
    returns (N, num_classes): read from the graph, then run once on two images in ONNX Runtime."""
    import onnx

    check_onnx_readable(path)
    (inp,) = _graph_inputs(onnx.load(str(path), load_external_data=False))
    tensor = inp.type.tensor_type
    dims = [d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?") for d in tensor.shape.dim]
    found = f"({', '.join(dims)}) {onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)}" if tensor.elem_type else "(unknown)"
    want = f"{shape.batch()} float32"
    fits = (tensor.elem_type == onnx.TensorProto.FLOAT and len(dims) == 4 and not dims[0].isdigit()
            and dims[1:] == [str(shape.channels), str(shape.size), str(shape.size)])
    if not fits:
        raise OwnModelError(f"onnx file '{path}': input {inp.name!r} is {found}; the dataset gives raw pixels {want} "
                            "(batch axis free, 0..255)")
    _check_onnx_output(path, shape)


def _check_onnx_output(path: Path, shape: InputShape) -> None:
    from .evaluate.runtime import session

    x = np.random.default_rng(0).integers(0, 256, (2, shape.channels, shape.size, shape.size)).astype(np.float32)
    try:
        sess = session(path, threads=1)
        out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    except Exception as e:
        raise OwnModelError(f"onnx file '{path}' does not run in ONNX Runtime on a batch {shape.batch(2)} ({one_line(e)})") from None
    if tuple(out.shape) != (2, shape.num_classes):
        raise OwnModelError(f"onnx file '{path}' returns shape {tuple(out.shape)} for a batch {shape.batch(2)}; "
                            f"logits must be (N, num_classes) = (2, {shape.num_classes})")


# ----------------------------------------------------------------------------- binding the files to the config
def weights_per_seed(weights: Path | list[Path] | dict[int, Path], seeds: list[int]) -> dict[int, Path]:
    """Each seed's weights file: one file for every seed, a list in the seeds' order, or a mapping seed: file."""
    if isinstance(weights, dict):
        if set(weights) != set(seeds):
            raise OwnModelError(f"weights names seeds {sorted(weights)}, but the study's seeds are {sorted(seeds)}")
        return {s: Path(weights[s]) for s in seeds}
    if isinstance(weights, list):
        if len(weights) != len(seeds):
            raise OwnModelError(f"weights lists {len(weights)} files for {len(seeds)} seeds {seeds}; give one file for every seed, "
                                "one per seed, or a mapping seed: file")
        return {s: Path(w) for s, w in zip(seeds, weights)}
    return {s: Path(weights) for s in seeds}


def _pinned(given: str | None, found: str, what: str) -> str:
    if given is not None and given != found:
        raise OwnModelError(f"{what} has SHA-256 {found}, but the config gives {given}: the file changed")
    return found


def bind_weights(b: "BaselineConfig", seeds: list[int], model: "ModelConfig | None", shape: InputShape | None) -> "BaselineConfig":
    """``b`` with every seed's weights hashed (values given must match); the files are checked against
    the model now when the dataset's parameters fix its shape, else when the study starts."""
    files = weights_per_seed(b.weights, seeds)  # type: ignore[arg-type]
    pins = b.weights_sha256 or {}
    hashes = {s: _pinned(pins.get(s), file_sha256(weight_file(f)), f"weights file '{f}' (seed {s})") for s, f in files.items()}
    if model is not None and shape is not None:
        check_weights_fit(model, list(files.values()), shape)
    return b.model_copy(update={"weights_sha256": hashes})


def weight_file(path: Path) -> Path:
    if not path.is_file():
        raise OwnModelError(f"weights file '{path}' does not exist")
    return path


def check_weights_fit(model: "ModelConfig", files: list[Path], shape: InputShape) -> None:
    import torch

    with torch.random.fork_rng(devices=[]):
        built = model.build(shape)
    for f in dict.fromkeys(files):
        check_weights(built, f)


def bind_onnx(b: "BaselineConfig", seeds: list[int], model: "ModelConfig | None", shape: InputShape | None) -> "BaselineConfig":
    """``b`` with the onnx file hashed; it is one fixed model (one seed), and no own model goes with it."""
    assert b.onnx is not None
    if len(seeds) != 1:
        raise OwnModelError(f"onnx is one fixed model: give one seed, not {len(seeds)} (each would measure the same file as if it "
                            "were another model)")
    if model is not None and model.is_own:
        raise OwnModelError("onnx is the model: leave model out (your own model is not used with it)")
    check_onnx_readable(b.onnx)
    if shape is not None:
        check_onnx_input(b.onnx, shape)
    return b.model_copy(update={"onnx_sha256": _pinned(b.onnx_sha256, file_sha256(b.onnx), f"onnx file '{b.onnx}'")})


def check_for_data(cfg: "StudyConfig", shape: InputShape) -> None:
    """The checks the config could not make when it loaded, because only loading the dataset tells
    its shape; `OwnModelError` names the config field."""
    from .own_model import check_model

    b = cfg.baseline
    if b.onnx is not None:
        _named("baseline.onnx", lambda: check_onnx_input(b.onnx, shape))
        return
    if cfg.model.is_own:
        _named("model", lambda: check_model(cfg.model.resolved(), cfg.model.params, shape))
    if b.weights is not None:
        _named("baseline.weights", lambda: check_weights_fit(cfg.model, list(weights_per_seed(b.weights, cfg.seeds).values()), shape))


def _named(field: str, check: Callable[[], None]) -> None:
    try:
        check()
    except OwnModelError as e:
        raise OwnModelError(f"{field}: {e}") from None
