"""Your own model and your own baseline, checked before a study trains or writes anything.

A model is a factory ``f(*, in_channels, num_classes, input_size, **params) -> nn.Module`` that maps
raw 0..255 pixels (N, C, H, W) to logits (N, num_classes): a registered one (`models/`), one named
``package.module:function``, or one defined in a Python file. A baseline is trained, or given as
weights (safetensors) or as an exported ONNX file. Every check here raises `OwnModelError` with one
line that names what failed; the caller adds the config field.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

import numpy as np

from .data.dataset import InputShape
from .models.registry import FIXED_ARGUMENTS, MODELS

DEFAULT_FUNCTION = "build"
_CHECK_BATCH = 2  # two images, so a batch axis fixed to 1 shows up as a wrong shape


class OwnModelError(ValueError):
    """A model, weights or ONNX file that cannot make a study; one line naming what failed."""


@dataclass(frozen=True)
class ResolvedModel:
    factory: Callable[..., Any]
    what: str                 # for messages: "paper_cnn", "'pkg.mod:fn'", "build() in 'models/tiny.py'"
    sha256: str | None = None  # of the file that defines an own model; None for a registered one

    @property
    def own(self) -> bool:
        return self.sha256 is not None


def resolve_model(name: str | None, file: Path | None, function: str | None) -> ResolvedModel:
    """The factory a model config names: a registered name, 'package.module:function', or ``function`` in ``file``."""
    if file is not None:
        return _from_file(Path(file), function or DEFAULT_FUNCTION)
    assert name is not None, "a model has a name or a file"
    if name in MODELS:
        return ResolvedModel(MODELS.get(name), name)
    if ":" not in name:
        raise OwnModelError(f"unknown model {name!r} (known: {', '.join(MODELS.names())}; or your own: "
                            "name: 'package.module:function', or file: path.py)")
    return _from_module(name)


def _from_module(spec: str) -> ResolvedModel:
    module_name, _, function = spec.partition(":")
    if not module_name or not function or ":" in function:
        raise OwnModelError(f"{spec!r}: an own model is named as 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # the user's code may raise anything while it is imported
        raise OwnModelError(f"{spec!r}: cannot import module {module_name!r} ({one_line(e)})") from None
    source = getattr(module, "__file__", None)
    sha = file_sha256(Path(source)) if source and Path(source).is_file() else "no-source-file"
    return ResolvedModel(_function(module, function, f"module {module_name!r}"), repr(spec), sha)


def _from_file(path: Path, function: str) -> ResolvedModel:
    module, sha = load_model_file(path)
    return ResolvedModel(_function(module, function, f"file '{path}'"), f"{function}() in '{path}'", sha)


def _function(module: ModuleType, name: str, where: str) -> Callable[..., Any]:
    fn = getattr(module, name, None)
    if callable(fn):
        return fn
    defined = sorted(k for k, v in vars(module).items() if callable(v) and getattr(v, "__module__", None) == module.__name__)
    raise OwnModelError(f"{where} has no function {name!r}" + (f" (it defines: {', '.join(defined)})" if defined else ""))


_LOADED: dict[tuple[str, str], ModuleType] = {}


def load_model_file(path: Path) -> tuple[ModuleType, str]:
    """The module a model file defines, and the SHA-256 of the bytes it was made from (the same
    bytes are hashed and run, so the study's identity is the code that ran)."""
    try:
        source = path.read_bytes()
    except FileNotFoundError:
        raise OwnModelError(f"file '{path}' does not exist") from None
    except OSError as e:
        raise OwnModelError(f"file '{path}' cannot be read ({e.strerror})") from None
    sha = hashlib.sha256(source).hexdigest()
    key = (str(path.resolve()), sha)
    if key not in _LOADED:
        _LOADED[key] = _execute(path, source, f"faircompress_own_model_{sha[:16]}")
    return _LOADED[key], sha


def _execute(path: Path, source: bytes, module_name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look a class's module up here
    try:
        exec(compile(source, str(path), "exec"), module.__dict__)
    except SyntaxError as e:
        del sys.modules[module_name]
        raise OwnModelError(f"file '{path}' cannot be imported: SyntaxError: {e.msg} (line {e.lineno})") from None
    except Exception as e:
        del sys.modules[module_name]
        raise OwnModelError(f"file '{path}' cannot be imported ({one_line(e)})") from None
    return module


def check_signature(model: ResolvedModel, params: dict[str, Any]) -> None:
    """The factory takes the fixed arguments and exactly the given params (those without a default included)."""
    sig = inspect.signature(model.factory)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    allowed = set(sig.parameters) - set(FIXED_ARGUMENTS)
    for key in params:
        if key in FIXED_ARGUMENTS:
            raise OwnModelError(f"parameter {key!r} is set from the dataset, not model.params")
        if key not in allowed and not takes_any:
            raise OwnModelError(f"unknown parameter {key!r} for model {model.what} (allowed: {', '.join(sorted(allowed)) or 'none'})")
    try:
        sig.bind(**dict.fromkeys(FIXED_ARGUMENTS, 1), **params)
    except TypeError as e:
        raise OwnModelError(f"{model.what} does not take what a model gets (in_channels, num_classes, input_size as keywords, "
                            f"plus model.params): {e}") from None


def one_line(e: BaseException) -> str:
    """'Type: first line of the message', at most 200 characters."""
    text = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- building and running
def build(model: ResolvedModel, params: dict[str, Any], shape: InputShape) -> Any:
    """The model for ``shape``; anything the factory raises, or returns other than an nn.Module, is an `OwnModelError`."""
    from torch import nn

    try:
        built = model.factory(in_channels=shape.channels, num_classes=shape.num_classes, input_size=shape.size, **params)
    except Exception as e:
        raise OwnModelError(f"building {model.what} for {shape.batch()} images and {shape.num_classes} classes failed "
                            f"({one_line(e)})") from None
    if not isinstance(built, nn.Module):
        raise OwnModelError(f"{model.what} returned a {type(built).__name__}, not a torch.nn.Module")
    return built


def check_model(model: ResolvedModel, params: dict[str, Any], shape: InputShape) -> None:
    """Build the model, run it on a batch of raw pixels as training does (channels-last, eval mode),
    check the logits' shape, export it to ONNX once and check that ONNX Runtime gives the same logits."""
    import torch

    with torch.random.fork_rng(devices=[]):  # checking a config leaves the caller's random state alone
        torch.manual_seed(0)
        net = build(model, params, shape).eval().to(memory_format=torch.channels_last)
        x = torch.randint(0, 256, (_CHECK_BATCH, shape.channels, shape.size, shape.size)).float()
        logits = _forward(net, x.contiguous(memory_format=torch.channels_last), model, shape)
    with tempfile.TemporaryDirectory(prefix="faircompress-check-") as tmp:
        onnx_file = _export(net, Path(tmp) / "model.onnx", model, shape)
        _same_logits(onnx_file, x.numpy(), logits.numpy(), model)


def _forward(net: Any, x: Any, model: ResolvedModel, shape: InputShape) -> Any:
    import torch

    try:
        with torch.no_grad():
            out = net(x)
    except Exception as e:
        raise OwnModelError(f"{model.what} fails on a batch of raw pixels {shape.batch(_CHECK_BATCH)} ({one_line(e)})") from None
    want = (_CHECK_BATCH, shape.num_classes)
    if not isinstance(out, torch.Tensor):
        raise OwnModelError(f"{model.what} returns a {type(out).__name__} for a batch {shape.batch(_CHECK_BATCH)}, "
                            f"not a logits tensor (N, num_classes) = {want}")
    if tuple(out.shape) != want:
        raise OwnModelError(f"{model.what} returns shape {tuple(out.shape)} for a batch {shape.batch(_CHECK_BATCH)}; "
                            f"logits must be (N, num_classes) = {want}")
    return out.float()


def _export(net: Any, path: Path, model: ResolvedModel, shape: InputShape) -> Path:
    from .compress.export import OPSET, export_onnx

    try:
        with warnings.catch_warnings(), _native_stdout_silenced():
            warnings.simplefilter("ignore")  # tracer warnings: a wrong trace is caught by comparing the logits
            return export_onnx(net, path, (shape.channels, shape.size, shape.size))
    except Exception as e:
        raise OwnModelError(f"{model.what} cannot be exported to ONNX (opset {OPSET}): {one_line(e)}") from None


_UNTRACEABLE = "its forward uses values the exporter cannot trace (NumPy, .item(), Python numbers from the input)"


@contextmanager
def _native_stdout_silenced() -> Iterator[None]:
    """The exporter's C++ side prints the whole traced graph when an operator is unsupported; the
    one-line error says enough."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _same_logits(path: Path, x: np.ndarray, want: np.ndarray, model: ResolvedModel) -> None:
    from .evaluate.runtime import session

    try:
        sess = session(path, threads=1)
        inputs = sess.get_inputs()
        if len(inputs) != 1:  # a traced constant needs no input
            raise OwnModelError(f"the ONNX export of {model.what} takes {len(inputs)} inputs instead of the pixels: {_UNTRACEABLE}")
        got = sess.run(None, {inputs[0].name: x.astype(np.float32)})[0]
    except OwnModelError:
        raise
    except Exception as e:
        raise OwnModelError(f"the ONNX export of {model.what} does not run in ONNX Runtime ({one_line(e)})") from None
    diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
    if not diff <= 1e-3 * max(1.0, float(np.abs(want).max())):
        raise OwnModelError(f"the ONNX export of {model.what} computes other logits than the model (largest difference {diff:.3g}): "
                            + _UNTRACEABLE)
