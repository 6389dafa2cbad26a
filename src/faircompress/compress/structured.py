"""Structured pruning: whole output channels removed by their L1 norm (`l1_channels`; Li et al. 2017,
"Pruning Filters for Efficient ConvNets"), so the network itself gets narrower.

Written ``{prune_channels: {sparsity: 0.5}}``, or ``{prune: {method: l1_channels, sparsity: 0.5}}``
(the same step). In every convolution and dense layer except the class layer, the ``sparsity`` share
of output channels (dense layers: units) with the smallest L1 norms of their filters (sum of |w| over
the filter's inputs and kernel positions) is removed: the filter, its bias, the BatchNorm that follows
it and the next layers' matching input channels all go. The norms are taken from the incoming weights
before anything is removed (Li et al.'s "independent" strategy: no layer's choice depends on the order
the layers are visited in). Channels that must stay equal in number are pruned together: the outputs
added by a residual connection (a ResNet stage's block outputs, its stem and its downsample) form one
group, ranked by the sum of their filters' L1 norms; a convolution flattened into a dense layer takes
that layer's inputs for its channel x positions with it.

The dependency graph (which layers' channels are coupled, and how a flattened channel maps to dense
inputs) is Torch-Pruning's `DependencyGraph` (``torch-pruning``, pure Python on PyTorch; Fang et al.,
CVPR 2023), traced on the model itself, so a user's model is handled like the built-in ones; the
ranking and the counts are ours, so they are exactly the above. The class layer (a conv or dense layer
whose output reaches the model's output through no other such layer) keeps every class.

What was removed is recorded as Torch-Pruning's pruning history (per group: the root layer's name and
the removed channel indices): a fine-tuned checkpoint stores only the shrunk state dict plus that
record, and `rebuild` replays the record on a freshly built full-size model, which then has exactly
the shrunk shapes and loads the state dict (no pickled module is ever saved or loaded).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from pydantic import Field
from torch import nn
from torch.nn.modules.conv import _ConvNd

from .recipes import STEPS, StepParams, TrainStep, TuneContext

ROOTS = (_ConvNd, nn.Linear)  # the layers whose output channels (dense: units) are removed
History = list[list[Any]]  # Torch-Pruning's pruning history: [layer name, output channels?, removed indices] per group


def _tp():
    try:
        import torch_pruning
    except ImportError as e:  # a dependency of the project; named clearly where an old environment lacks it
        raise ImportError("prune_channels needs Torch-Pruning: pip install torch-pruning==1.6.1") from e
    return torch_pruning


def dependency_graph(model: nn.Module, input_shape: Sequence[int]):
    """Torch-Pruning's dependency graph of ``model``, traced with a batch of two zero inputs of
    ``input_shape`` (C, H, W) in evaluation mode (BatchNorm statistics untouched); the model's mode is restored."""
    for m in model.modules():
        if isinstance(m, _ConvNd) and 1 < m.groups < m.out_channels:
            raise ValueError(f"prune_channels: grouped convolutions ({type(m).__name__} with groups={m.groups}) are not supported")
    training = model.training
    param = next(model.parameters(), None)
    example = torch.zeros(2, *input_shape, device=param.device if param is not None else None)
    try:
        return _tp().DependencyGraph().build_dependency(model, example_inputs=(example,), verbose=False)
    finally:
        model.train(training)


def output_layers(dg) -> list[nn.Module]:
    """The conv and dense layers whose output reaches the model's output through no other conv or dense
    layer: the class layer(s), whose channels are the classes and are never removed."""
    found = []
    for module, node in dg.module2node.items():
        if not isinstance(module, ROOTS):
            continue
        todo, seen = [node], set()
        while todo:
            n = todo.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            if not n.outputs:  # the traced graph ends here: the model's output
                found.append(module)
                break
            todo.extend(o for o in n.outputs if not isinstance(o.module, ROOTS))
    return found


def group_l1(dg, group, channels: int) -> torch.Tensor:
    """Per channel of the group's root: the L1 norm of its filter, summed over every conv or dense layer
    whose output channel is removed with it (one layer, or the layers a residual connection couples)."""
    imp = torch.zeros(channels, dtype=torch.float64)
    for item in group:
        layer = item.dep.target.module
        if not isinstance(layer, ROOTS) or not dg.is_out_channel_pruning_fn(item.dep.handler):
            continue
        if any(r is None for r in item.root_idxs):
            continue
        w = layer.weight.detach()
        if getattr(layer, "transposed", False):
            w = w.transpose(0, 1)
        norms = w[list(item.idxs)].flatten(1).abs().sum(1).double().cpu()
        imp.index_add_(0, torch.tensor(list(item.root_idxs), dtype=torch.long), norms)
    return imp


def removed_count(channels: int, sparsity: float, round_to: int | None = None) -> int:
    """How many of ``channels`` go: round(sparsity x channels); with ``round_to``, the channels kept
    rounded down to a multiple of it (as Torch-Pruning's round_to), never fewer than one multiple (nor
    than one channel), never more than there are."""
    keep = channels - int(round(sparsity * channels))
    if round_to:
        keep = max(keep // round_to * round_to, round_to)
    return channels - min(max(keep, 1), channels)


def smallest(imp: torch.Tensor, k: int) -> list[int]:
    """The indices of the ``k`` smallest values, ascending by index (ties: the lower index goes)."""
    return sorted(int(i) for i in torch.argsort(imp, stable=True)[:k])


@torch.no_grad()
def prune_l1_channels(model: nn.Module, sparsity: float, input_shape: Sequence[int], round_to: int | None = None) -> History:
    """Remove the ``sparsity`` share of output channels with the smallest L1 norms from every prunable
    group of ``model`` (in place; the class layer kept whole). Returns the pruning history that `rebuild` replays."""
    with torch.enable_grad():  # the graph is traced through autograd
        dg = dependency_graph(model, input_shape)
    plans = []
    for group in dg.get_all_groups(ignored_layers=output_layers(dg), root_module_types=ROOTS):
        root = group[0].dep.target.module
        channels = dg.get_out_channels(root)
        k = removed_count(channels, sparsity, round_to)
        if k:
            plans.append((root, smallest(group_l1(dg, group, channels), k)))  # all ranked on the incoming weights
    for root, idxs in plans:
        dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, idxs).prune()
    return [[str(name), bool(out), [int(i) for i in idxs]] for name, out, idxs in dg.pruning_history()]


@torch.no_grad()
def rebuild(model: nn.Module, history: History, input_shape: Sequence[int]) -> nn.Module:
    """Give a freshly built ``model`` the shrunk architecture ``history`` describes (in place), so a
    pruned model's state dict loads into it."""
    with torch.enable_grad():
        dg = dependency_graph(model, input_shape)
    dg.load_pruning_history([[name, out, list(idxs)] for name, out, idxs in history])
    return model


def channel_counts(model: nn.Module) -> dict[str, int]:
    """Each conv and dense layer's output channels (units), by module name."""
    return {name: (m.out_channels if isinstance(m, _ConvNd) else m.out_features) for name, m in model.named_modules()
            if isinstance(m, ROOTS)}

# ----------------------------------------------------------------------------- recipe step

class PruneChannelsParams(StepParams):
    sparsity: float = Field(..., gt=0, lt=1, description="share of each layer's output channels (dense layers: units) removed")
    epochs: int = Field(2, ge=0, description="fine-tuning epochs after the removal")
    round_to: int | None = Field(None, ge=1, description="keep a multiple of this many channels per layer (rounded down)")


@STEPS.register("prune_channels")
class PruneChannelsStep(TrainStep):
    """l1_channels: structured pruning, whole channels by L1 norm, physically removed."""

    name, Params, level = "prune_channels", PruneChannelsParams, "sparsity"
    example = {"sparsity": 0.5, "epochs": 1}
    spelled = ("prune", "method", "l1_channels")  # {prune: {method: l1_channels, ...}} is this step

    def short(self) -> str:
        return f"prune channels {self.params.sparsity:.0%}" + self._extras("sparsity")

    def apply(self, model: nn.Module, ctx: TuneContext) -> None:
        p = self.params
        if ctx.input_shape is None:
            raise ValueError("prune_channels traces the model, so its TuneContext needs the input_shape (C, H, W)")
        ctx.records[self.name] = prune_l1_channels(model, p.sparsity, ctx.input_shape, p.round_to)
        if p.epochs:
            ctx.fine_tune(model, p.epochs, None)

    def rebuild(self, model: nn.Module, record: Any, input_shape: Sequence[int]) -> None:
        if record is None:
            raise ValueError("prune_channels: the checkpoint has no record of the removed channels, so its shrunk model cannot be rebuilt")
        rebuild(model, record, input_shape)
