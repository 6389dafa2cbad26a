"""Distinctiveness pruning (Gedeon & Harris 1991), as Dixit et al. apply it to SFEW.

A unit (a dense layer's output, or a convolution's filter) is compared with the other units of its
layer by the angle between two vectors:

- dense layers (G&H): the unit's activations over a sample of training images, as the next layer
  receives them (after the activation, and after BatchNorm or dropout if any lie between), each unit's
  vector min-max normalised to [0, 1] and shifted to [-0.5, 0.5];
- convolutions (Dixit et al.'s variant for ResNet-18): the filter's weights (in_channels x kh x kw).

A pair closer than ``similar_below`` degrees is merged: one unit goes, and what it sent to the next
layer goes to its twin. G&H add the removed unit's outgoing weights to the twin's, which is exact when
the two units' activations are equal; here the removed unit's activations are regressed on the twin's
(least squares over the same training images, a_removed ~ alpha a_twin + beta), alpha times its
outgoing weights are added to the twin's and beta times them to the next layer's bias: G&H's rule for
an exact copy (alpha 1, beta 0), and exact for any unit that is an affine copy of its twin. A pair
wider than ``complementary_above`` degrees is removed together (their outputs roughly cancel); each
unit's mean activation times its outgoing weights goes into the next layer's bias, so the next layer
receives on average what it did.

"Next layer": the one Linear or Conv2d that consumes the unit's output unit for unit (input column or
input channel i is unit i, through elementwise or per-channel modules: activations, dropout,
BatchNorm, pooling), and nothing else reads the unit. Found empirically, for any model: the kernels
in the order a forward pass runs them; for each consecutive pair with matching widths, perturbing the
first one's units (subsets chosen by the bits of the unit index) must change only the same units of
the second one's input, and replaying that input alone must reproduce the perturbed network's output
(so no other path, a residual connection say, reads them). A layer without such a consumer (the
output layer, a ResNet block's second convolution) is left alone and recorded as skipped, with why.
With a convolution followed by BatchNorm, its filters' angles ignore the BatchNorm's per-channel
scaling, so a "similar" pair's merge is only approximately right; with padding, the bias
compensation is exact away from the borders only; a next layer without a bias gets no compensation.

Units are zeroed, not physically removed: the unit's incoming weights and bias and the next layer's
input column (channel) are set to zero, so every shape, the ONNX export and every other step work as
before. The zeros are held through retraining (``epochs``, none unless the recipe asks). What was
found (per layer: the pairs and their angles, the share removed) goes to the run's stored details,
under ``steps.distinct``; with retraining, also the test accuracy per epoch beside the unpruned
model's, as a lottery ticket records it (`retraining.retrain_recorded`).

``control: percentile`` is Dixit et al.'s matched control (their 3.3, Fig. 1; `matched_percentile`):
the same analysis finds the share of units each layer would lose, nothing is merged, and every kernel
of the ``layers`` kinds is pruned by percentile (per kernel, among its non-zero weights) at the largest
of those shares, then retrained the same ``epochs``: its own technique family, 'distinct-percentile'.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.utils._pytree import tree_leaves

from .pruning import percentile_masks
from .recipes import STEPS, StepParams, TrainStep, TuneContext
from .retraining import accuracy_on_test, retrain_recorded, retraining_note

KERNELS = (nn.Linear, nn.Conv2d)
PROBE_IMAGES = 4   # images in each structure probe
BATCH = 32         # images per batch when collecting activations


@dataclass(frozen=True)
class Link:
    """``producer``'s units feed ``consumer``'s input columns (channels) one for one."""

    producer: str
    consumer: str
    kind: Literal["dense", "conv"]   # the producer's kind: how its units are compared
    between: tuple[str, ...]        # the types of the modules run between the two


def _width(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def _in_width(m: nn.Module) -> int:
    return m.in_features if isinstance(m, nn.Linear) else m.in_channels


def _unit_dim(m: nn.Module, t: torch.Tensor) -> int:
    """Where a Linear's units (its output's last dim) or a Conv2d's channels (dim 1) lie in ``t``."""
    return t.dim() - 1 if isinstance(m, nn.Linear) else 1


def _per_unit(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(units, rest): ``t`` with its unit dimension first and the others flattened."""
    return t.movedim(dim, 0).reshape(t.shape[dim], -1)


# ----------------------------------------------------------------------------- finding the links

class _Stop(Exception):
    """Ends a forward pass once what it was run for has been seen."""


class _Probe:
    """Runs the model on the probe images with P's output perturbed on some units (one set of units
    per copy of the images, all copies in one batch) and/or C's input replaced."""

    def __init__(self, model: nn.Module, x: torch.Tensor) -> None:
        self.model, self.x = model, x
        self.modules = dict(model.named_modules())

    @torch.no_grad()
    def inputs(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The input of each named module in one unperturbed pass."""
        seen: dict[str, torch.Tensor] = {}
        hooks = [self.modules[n].register_forward_pre_hook(lambda mod, args, n=n: seen.__setitem__(n, args[0].clone())) for n in set(names)]
        try:
            self.model(self.x)
        finally:
            for h in hooks:
                h.remove()
        return seen

    @torch.no_grad()
    def run(self, link: Link, units: torch.Tensor | None = None, replay: torch.Tensor | None = None, stop: bool = False):
        """``units``: (copies, width) bool, the units perturbed in each copy. Returns C's input and the
        network's output (flattened per image: (images, -1); None with ``stop``: the pass ends at C);
        None for C's input if C did not run."""
        P, C = self.modules[link.producer], self.modules[link.consumer]
        copies = 1 if units is None else units.shape[0]
        seen: dict[str, torch.Tensor] = {}

        def perturb(mod, args, out):
            shape = [out.shape[0]] + [1] * (out.dim() - 1)
            shape[_unit_dim(mod, out)] = -1
            rows = units.to(out.dtype).repeat_interleave(len(self.x), 0).view(shape)
            return out + rows * (1 + out.abs())  # large and positive: seen through ReLU and max-pooling

        def capture(mod, args):
            seen["x"] = args[0].clone()  # later in-place operations must not change what was seen
            if stop:
                raise _Stop
            return None if replay is None else (replay, *args[1:])

        hooks = [C.register_forward_pre_hook(capture)]
        if units is not None:
            hooks.append(P.register_forward_hook(perturb))
        try:
            y = self.model(self.x.repeat(copies, *[1] * (self.x.dim() - 1)))
        except _Stop:
            return seen["x"], None
        finally:
            for h in hooks:
                h.remove()
        flat = torch.cat([t.detach().float().reshape(t.shape[0], -1) for t in tree_leaves(y) if isinstance(t, torch.Tensor)], 1)
        return seen.get("x"), flat


def execution_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """The leaf modules' names in the order one forward pass runs them (a module run twice: twice)."""
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda mod, a, o, name=name: order.append(name))
             for name, m in model.named_modules() if not any(True for _ in m.children())]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return order


def find_links(model: nn.Module, x: torch.Tensor, kinds: tuple[str, ...] = ("dense", "conv")) -> tuple[list[Link], dict[str, str]]:
    """The producer -> consumer links of ``model`` (in eval mode) found on the probe images ``x``, and
    why each other kernel that has a next kernel is not a producer (producers of ``kinds`` only)."""
    modules = dict(model.named_modules())
    order = execution_order(model, x)
    kernels = [(i, n) for i, n in enumerate(order) if isinstance(modules[n], KERNELS)]
    twice = {n for _, n in kernels if sum(1 for _, k in kernels if k == n) > 1}
    probe = _Probe(model, x)
    bases = probe.inputs([n for _, n in kernels])
    links, skipped = [], {}
    for (i, p_name), (j, c_name) in zip(kernels, kernels[1:]):
        P, C = modules[p_name], modules[c_name]
        kind: Literal["dense", "conv"] = "dense" if isinstance(P, nn.Linear) else "conv"
        if kind not in kinds:
            continue
        link = Link(p_name, c_name, kind, tuple(type(modules[n]).__name__ for n in order[i + 1 : j]))
        why = _check_link(probe, link, P, C, twice, bases.get(c_name))
        if why is None:
            links.append(link)
        elif p_name not in skipped:
            skipped[p_name] = why
    return links, skipped


def _check_link(probe: _Probe, link: Link, P: nn.Module, C: nn.Module, twice: set[str], base: torch.Tensor | None) -> str | None:
    """None when ``link`` holds, else why not; ``base``: C's input in the unperturbed pass."""
    units = _width(P)
    if link.producer in twice or link.consumer in twice:
        return "a layer run more than once per pass (shared weights)"
    if units < 2:
        return "fewer than two units"
    if isinstance(C, nn.Conv2d) and C.groups != 1:
        return f"the next kernel {link.consumer} is a grouped convolution"
    if _in_width(C) != units:
        return f"its {units} units do not map one for one onto {link.consumer}'s {_in_width(C)} inputs"
    if base is None or base.shape[_unit_dim(C, base)] != units:
        return f"{link.consumer}'s input is not {units} units wide"
    n, dim = len(probe.x), _unit_dim(C, base)
    everything = torch.ones(1, units, dtype=torch.bool, device=base.device)
    moved, y = probe.run(link, units=everything)
    if not float((moved - base).abs().max()) > 1e-3 * (float(base.abs().max()) + 1):  # the perturbation is O(1) or more
        return f"{link.consumer} does not read its output"
    _, replayed = probe.run(link, replay=moved)  # C's input alone, as the perturbed pass had it
    if not torch.allclose(y, replayed, rtol=1e-4, atol=1e-5 * (float(y.abs().max()) + 1)):
        return f"its output reaches the network's output other than through {link.consumer} (a residual path, say)"
    # for each bit of the unit index, the units with it set and those without, one copy each: if
    # each copy changes only its own units of C's input, input i can only be unit i
    index = torch.arange(units, device=base.device)
    chosen = torch.stack([half for bit in range(max(1, math.ceil(math.log2(units))))
                          for half in ((index >> bit) & 1 == 1, (index >> bit) & 1 == 0)])
    moved, _ = probe.run(link, units=chosen, stop=True)
    change = torch.stack([_per_unit((moved[k * n : (k + 1) * n] - base).abs(), dim).amax(1) for k in range(len(chosen))])
    tol = 1e-5 * float(max(change.max(), base.abs().max()))
    if float(torch.where(chosen, 0.0, change).max()) > tol:
        return f"{link.consumer}'s inputs mix its units (input i is not unit i)"
    return None


# ----------------------------------------------------------------------------- activations

@dataclass
class _Stats:
    """A consumer's input over the training sample, per unit: moments, and (dense) the rows."""

    n: int
    mean: torch.Tensor       # (units,) float64
    cov: torch.Tensor        # (units, units) float64
    rows: torch.Tensor | None  # dense: (samples, units) float64, for the normalised vectors


@torch.no_grad()
def collect(model: nn.Module, links: list[Link], images: torch.Tensor) -> dict[str, _Stats]:
    """Each link's consumer input over ``images`` (float, on the model's device), in batches."""
    modules = dict(model.named_modules())
    acc: dict[str, dict[str, Any]] = {l.consumer: {"n": 0, "s": 0.0, "g": 0.0, "rows": []} for l in links}
    dense = {l.consumer for l in links if l.kind == "dense"}

    pending: set[str] = set()

    def hook(name):
        def record(mod, args):
            x = _per_unit(args[0].detach().double(), _unit_dim(mod, args[0]))
            a = acc[name]
            a["n"] += x.shape[1]
            a["s"] = a["s"] + x.sum(1)
            a["g"] = a["g"] + x @ x.T
            if name in dense:
                a["rows"].append(x.T.cpu())
            pending.discard(name)
            if not pending:
                raise _Stop  # the rest of the network is not needed
        return record

    hooks = [modules[name].register_forward_pre_hook(hook(name)) for name in acc]
    try:
        for k in range(0, len(images), BATCH):
            pending.update(acc)
            try:
                model(images[k : k + BATCH])
            except _Stop:
                pass
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for name, a in acc.items():
        mean = (a["s"] / a["n"]).cpu()
        cov = (a["g"] / a["n"]).cpu() - torch.outer(mean, mean)
        out[name] = _Stats(a["n"], mean, cov, torch.cat(a["rows"]) if a["rows"] else None)
    return out


def angles(vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(units, units) pairwise angles in degrees between the rows of ``vectors``, and which rows
    have any length (a zero row has no angle)."""
    v = vectors.double()
    norm = v.norm(dim=1)
    valid = norm > 0
    unit = v / norm.clamp_min(1e-300)[:, None]
    return torch.rad2deg(torch.arccos((unit @ unit.T).clamp(-1, 1))), valid


def normalised_activations(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """G&H's vectors: each unit's activations (a column of ``rows``) min-max scaled to [0, 1] and
    shifted to [-0.5, 0.5], one row per unit; and which units vary at all (a constant unit has no
    direction)."""
    lo, hi = rows.min(0).values, rows.max(0).values
    span = hi - lo
    varies = span > 0
    return ((rows - lo) / torch.where(varies, span, 1.0) - 0.5).T * varies[:, None], varies


# ----------------------------------------------------------------------------- removing units

class UnitMasks:
    """Keep-masks of the parameters removal zeroed, re-applied after every optimiser step."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.masks: dict[str, torch.Tensor] = {}

    def zero(self, name: str, index: tuple) -> None:
        p = self.model.get_parameter(name)
        keep = self.masks.setdefault(name, torch.ones_like(p, dtype=torch.bool))
        keep[index] = False
        with torch.no_grad():
            p[index] = 0

    @torch.no_grad()
    def apply(self) -> None:
        for name, keep in self.masks.items():
            p = self.model.get_parameter(name)
            if keep.device != p.device:
                self.masks[name] = keep = keep.to(p.device)
            p.mul_(keep)

    def after_step(self, step: int) -> None:
        self.apply()


def reduce_link(model: nn.Module, link: Link, images: torch.Tensor, similar_below: float, complementary_above: float,
                masks: UnitMasks) -> dict[str, Any]:
    """Merge the similar pairs and remove the complementary pairs of one link's units; returns what
    was done. Pairs are taken closest to their ideal (0 or 180 degrees) first; a unit already gone
    takes part in no later pair. The consumer's input is measured on ``images`` now, after the
    earlier links' changes (for a convolution only if it has pairs: its angles need no images)."""
    modules = dict(model.named_modules())
    P, C = modules[link.producer], modules[link.consumer]
    Wp, Wc = P.weight.detach(), C.weight.detach()
    units = _width(P)
    gone = (Wp.reshape(units, -1) == 0).all(1).cpu() & (Wc.transpose(0, 1).reshape(units, -1) == 0).all(1).cpu()  # removed before
    stats = collect(model, [link], images)[link.consumer] if link.kind == "dense" else None
    if stats is not None:
        assert stats.rows is not None
        vectors, _ = normalised_activations(stats.rows)  # a constant unit's vector is zero: it has no angle
    else:
        vectors = Wp.reshape(units, -1)
    ang, nonzero = angles(vectors)
    ok = nonzero.cpu() & ~gone
    ang = ang.cpu()
    candidate = torch.triu(ok[:, None] & ok[None, :], 1)
    pairs = [(float(ang[i, j]), "similar", i, j) for i, j in torch.nonzero(candidate & (ang < similar_below)).tolist()]
    pairs += [(180 - float(ang[i, j]), "complementary", i, j) for i, j in torch.nonzero(candidate & (ang > complementary_above)).tolist()]
    pairs.sort()
    if pairs and stats is None:
        stats = collect(model, [link], images)[link.consumer]
    outgoing = lambda u: float(C.weight.detach()[:, u].double().norm())  # noqa: E731
    fan = lambda u: C.weight.detach()[:, u].double().flatten(1).sum(1) if C.weight.dim() > 2 else C.weight.detach()[:, u].double()  # noqa: E731
    mean, cov = (stats.mean, stats.cov) if stats is not None else (None, None)
    similar, complementary, removed = [], [], set()
    bias_ok = C.bias is not None
    with torch.no_grad():
        for score, what, i, j in pairs:
            if i in removed or j in removed:
                continue
            if what == "similar":
                keep, rem = (i, j) if outgoing(i) >= outgoing(j) else (j, i)
                var = float(cov[keep, keep])
                alpha = float(cov[keep, rem]) / var if var > 1e-12 * max(float(cov[rem, rem]), 1e-30) else 0.0
                beta = float(mean[rem]) - alpha * float(mean[keep])
                shift = beta * fan(rem)
                C.weight[:, keep] += alpha * C.weight[:, rem]
                if bias_ok:
                    C.bias += shift.to(C.bias)
                _remove(P, C, link, rem, masks)
                removed.add(rem)
                similar.append([keep, rem, round(score, 3), round(alpha, 6), round(beta, 6)])
            else:
                if bias_ok:
                    C.bias += (float(mean[i]) * fan(i) + float(mean[j]) * fan(j)).to(C.bias)
                for u in (i, j):
                    _remove(P, C, link, u, masks)
                    removed.add(u)
                complementary.append([i, j, round(180 - score, 3)])
    return {"layer": link.producer, "next": link.consumer, "kind": link.kind, "through": list(link.between),
            "units": units, "removed": len(removed), "share": len(removed) / units,
            "pairs_found": {"similar": sum(w == "similar" for _, w, _, _ in pairs), "complementary": sum(w == "complementary" for _, w, _, _ in pairs)},
            "similar": similar, "complementary": complementary, "compensated": bias_ok}


def _remove(P: nn.Module, C: nn.Module, link: Link, u: int, masks: UnitMasks) -> None:
    masks.zero(f"{link.producer}.weight", (u,))
    if P.bias is not None:
        masks.zero(f"{link.producer}.bias", (u,))
    masks.zero(f"{link.consumer}.weight", (slice(None), u))


def images_tensor(images: np.ndarray, model: nn.Module) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.from_numpy(np.ascontiguousarray(images)).to(device=device, dtype=torch.float32)


def distinctiveness_prune(model: nn.Module, images: np.ndarray, similar_below: float = 15.0, complementary_above: float = 165.0,
                          layers: str = "both") -> tuple[UnitMasks, dict[str, Any]]:
    """Prune ``model`` in place (see the module's text); ``images``: training images as the model
    takes them (uint8 pixels, or a features table's rows). Returns the masks to hold and the record."""
    was_training = model.training
    model.eval()
    try:
        x = images_tensor(images, model)
        links, skipped = find_links(model, x[:PROBE_IMAGES], ("dense", "conv") if layers == "both" else (layers,))
        masks = UnitMasks(model)
        done = [reduce_link(model, link, x, similar_below, complementary_above, masks) for link in links]
    finally:
        model.train(was_training)
    total = sum(r["units"] for r in done)
    gone = sum(r["removed"] for r in done)
    return masks, {"similar_below": similar_below, "complementary_above": complementary_above, "layers": done,
                   "units": total, "removed": gone, "share": gone / total if total else 0.0, "images": len(images),
                   "skipped": skipped}


def kernels_of(model: nn.Module, layers: str = "both") -> dict[str, nn.Parameter]:
    """The kernels of the kinds ``layers`` names (dense: Linear, conv: Conv2d, both), by weight name."""
    kinds = {"dense": (nn.Linear,), "conv": (nn.Conv2d,), "both": KERNELS}[layers]
    return {f"{name}.weight": m.weight for name, m in model.named_modules() if isinstance(m, kinds)}


def matched_percentile(model: nn.Module, images: np.ndarray, similar_below: float = 15.0, complementary_above: float = 165.0,
                       layers: str = "both") -> tuple[UnitMasks, dict[str, Any]]:
    """Dixit et al.'s control for distinctiveness pruning (their 3.3 and Fig. 1): the distinctiveness
    analysis runs on ``model`` (which is then restored exactly: nothing is merged), and every kernel
    of the kinds ``layers`` names is pruned by percentile (`pruning.percentile_masks`: per kernel,
    the smallest magnitudes among its non-zero weights) at the LARGEST share of units any layer would
    have lost, one level for every kernel. ``model`` is pruned in place; returns the masks to hold
    (those kernels only) and the record: what distinctiveness found (``found``), the ``percent``
    used, the layer it came from, and per kernel its zeros before and the weights pruned now."""
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        _, found = distinctiveness_prune(model, images, similar_below, complementary_above, layers)
    finally:
        model.load_state_dict(saved)
    largest = max(found["layers"], key=lambda r: r["share"], default=None)
    percent = float(largest["share"]) if largest is not None else 0.0
    weights = kernels_of(model, layers)
    masks = UnitMasks(model)
    masks.masks = percentile_masks(weights, percent)  # on each kernel's device
    kernels = {k: {"size": int(w.numel()), "zeros_before": int((w == 0).sum()), "pruned": int(((w != 0) & ~masks.masks[k]).sum())}
               for k, w in weights.items()}
    masks.apply()
    alive = sum(r["size"] - r["zeros_before"] for r in kernels.values())
    found = {k: found[k] for k in ("units", "removed", "share", "skipped")} | {
        "layers": [{k: r[k] for k in ("layer", "next", "kind", "units", "removed", "share")} for r in found["layers"]]}
    return masks, {"control": "percentile", "similar_below": similar_below, "complementary_above": complementary_above,
                   "layers_kind": layers, "found": found, "percent": percent,
                   "largest_layer": largest["layer"] if largest is not None else None, "kernels": kernels,
                   "pruned_share": sum(r["pruned"] for r in kernels.values()) / alive if alive else 0.0}

# ----------------------------------------------------------------------------- recipe step


class DistinctParams(StepParams):
    similar_below: float = Field(15.0, gt=0, lt=90, description="merge pairs of units closer than this angle (degrees)")
    complementary_above: float = Field(165.0, gt=90, lt=180, description="remove pairs of units wider than this angle (degrees)")
    layers: Literal["dense", "conv", "both"] = "both"
    epochs: int = Field(0, ge=0, description="retraining epochs (none unless asked)")
    control: Literal["none", "percentile"] = Field(
        "none", description="percentile: Dixit et al.'s matched control: find the share of units each layer would lose, "
        "then instead prune every kernel of `layers` by percentile at the largest of those shares, and retrain the same epochs")


@STEPS.register("distinct")
class DistinctStep(TrainStep):
    name, Params, level = "distinct", DistinctParams, "similar_below"
    # wide bounds, so that the registry tests' randomly initialised models lose units on every model
    example = {"similar_below": 85, "complementary_above": 95}
    quiet_defaults = ("control",)  # added later: older recipes keep their keys and run ids

    def technique(self) -> str:
        """'distinct'; its percentile control is its own family, 'distinct-percentile'."""
        return "distinct" if self.params.control == "none" else f"distinct-{self.params.control}"

    def short(self) -> str:
        p = self.params
        control = " percentile control" if p.control == "percentile" else ""
        return f"distinct {p.similar_below:g}°/{p.complementary_above:g}°{control}" + self._extras("similar_below", "complementary_above", "control")

    def apply(self, model: nn.Module, ctx: TuneContext) -> None:
        """Distinctiveness pruning, or (``control: percentile``) its matched percentile control; with
        ``epochs``, retrained with the zeros held, each epoch's test accuracy recorded (as a ticket's)."""
        p = self.params
        if ctx.images is None:
            raise ValueError("distinct compares units over training images: this context gives none (TuneContext.images)")
        test_acc = accuracy_on_test(ctx)
        unpruned = test_acc(model) if test_acc is not None and p.epochs else None
        if p.control == "percentile":
            masks, record = matched_percentile(model, ctx.images(), p.similar_below, p.complementary_above, p.layers)
            where = f" ({record['largest_layer']})" if record["largest_layer"] is not None else ""
            ctx.note(f"{self.short()}: the largest share a layer would lose is {record['percent']:.1%}{where}; percentile "
                     f"pruning at it removed {record['pruned_share']:.1%} of the non-zero weights of the {'conv and dense' if p.layers == 'both' else p.layers} kernels")
        else:
            masks, record = distinctiveness_prune(model, ctx.images(), p.similar_below, p.complementary_above, p.layers)
            per_layer = ", ".join(f"{r['layer']} {r['removed']}/{r['units']}" for r in record["layers"])
            ctx.note(f"distinct: removed {record['removed']} of {record['units']} units ({record['share']:.1%})"
                     + (f": {per_layer}" if per_layer else "; no layer feeds another unit for unit"))
        ctx.details[self.name] = record
        if p.epochs:
            record |= retrain_recorded(model, ctx, p.epochs, masks.after_step, unpruned)
            ctx.note(f"{self.short()}: retrained {p.epochs} epochs" + retraining_note(record))
        masks.apply()
