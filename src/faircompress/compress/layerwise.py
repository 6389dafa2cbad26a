"""Per-layer pruning sparsities in a study: layer names checked against the model, sparsities chosen
from the layer-wise sensitivity scan, and the overall level derived, before the study is planned.

A prune step with per-layer sparsities (``sparsity: {layer: fraction, default: fraction}``) names
layers as `pruning.prunable` does (``features.0.weight``); an unknown name stops the config when it
loads where the dataset's parameters fix the input shape, else when the study starts (one line listing
the valid names). ``from_sensitivity: {tolerance, gaps}`` is resolved when a study starts, before its
runs are planned, from the scan `faircompress sensitivity` stored for the study's first baseline on
the validation split: the chosen sparsities are written into the step's ``sparsity``, so they, not
the rule alone, are part of the recipe's key and of every run id (a new scan that chooses other
sparsities plans new runs; one that chooses the same reuses them). Without a scan, such runs fail
with a message saying to run the scan first, and are not recorded.

The rule (ours: Sun et al.'s abstract does not say how they chose their per-layer sparsities): per
layer, the largest scanned level such that at every scanned level up to it, that layer pruned alone
(magnitude, no fine-tuning) loses at most ``tolerance`` of validation accuracy (absolute: 0.01 = 1
pp) and, with ``gaps``, widens no attribute's gap by more than ``tolerance``; 0 (dense) where the
first level already fails. Requiring every lower level to pass keeps a noisy dip-and-recover curve
from choosing a level beyond a failing one.

Each per-layer step also gets ``overall``: the share of all prunable weights its sparsities zero,
weighted by size. It is the level the report plots and the percentage in the label ("prune
per-layer (62%)", "prune from sensitivity (tol 1%, 62%)").
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .pruning import DEFAULT_LAYER, PruneParams, overall_sparsity, unknown_layers

if TYPE_CHECKING:
    from ..config import StudyConfig
    from ..data.dataset import InputShape
    from ..plan import PlannedRun
    from ..store import ResultStore

SCAN_SPLIT = "val"  # the split a scan must be on for from_sensitivity (never the test split)
EPS = 1e-9          # accuracy changes are multiples of 1/images: a drop equal to the tolerance passes


class LayerwiseError(ValueError):
    """A per-layer recipe that cannot be used with this model (e.g. a layer it does not have)."""


def _prune_steps(cfg: "StudyConfig") -> list[tuple[int, int, PruneParams]]:
    """(recipe index, step index, params) of every prune step with per-layer sparsities."""
    out = []
    for i, recipe in enumerate(cfg.recipes):
        for j, step in enumerate(recipe):
            (name, params), = step.items()
            if name == "prune":
                p = PruneParams.model_validate(params or {})
                if p.per_layer:
                    out.append((i, j, p))
    return out


def has_layerwise(cfg: "StudyConfig") -> bool:
    return bool(_prune_steps(cfg))


def layer_sizes(cfg: "StudyConfig", shape: "InputShape") -> dict[str, int]:
    """The model's prunable layers (as `prunable` names them, in order) and their sizes; the caller's
    random state is left alone."""
    import torch

    from .pruning import prunable

    with torch.random.fork_rng(devices=[]):
        model = cfg.model.build(shape)
    return {k: w.numel() for k, w in prunable(model).items()}


def check_layer_names(cfg: "StudyConfig", shape: "InputShape") -> None:
    """`LayerwiseError` (one line, naming the recipe and the valid layers) for a per-layer sparsity
    that names a layer the model does not have."""
    steps = _prune_steps(cfg)
    if not steps:
        return
    names = list(layer_sizes(cfg, shape))
    for i, _, p in steps:
        if isinstance(p.sparsity, dict):
            unknown = [k for k in p.sparsity if k != DEFAULT_LAYER and k not in names]
            if unknown:
                raise LayerwiseError(f"recipe {i + 1}: {unknown_layers(unknown, names)}")


def choose_sparsities(scan: pd.DataFrame, tolerance: float, gaps: bool = False) -> dict[str, float]:
    """Per layer of a scan (`ResultStore.sensitivity` rows), the largest pruning level up to which
    every scanned level stays within ``tolerance`` (see the module docstring); 0 where none does."""
    prune = scan[scan.technique == "prune"].sort_values(["position", "level"])
    chosen: dict[str, float] = {}
    for layer, rows in prune.groupby("layer", sort=False):
        level = 0.0
        for lvl, at in rows.groupby("level", sort=True):
            if lvl <= 0:
                continue
            acc = at[at.attribute == ""]
            ok = bool(len(acc)) and -float(acc.delta.iloc[0]) <= tolerance + EPS
            if gaps:
                ok = ok and bool((at[at.attribute != ""].delta <= tolerance + EPS).all())
            if not ok:
                break
            level = float(lvl)
        chosen[str(layer)] = level
    return chosen


def first_baseline(cfg: "StudyConfig") -> "PlannedRun":
    """The study's first baseline (its first seed's): the one `faircompress sensitivity` scans."""
    from ..plan import plan

    return plan(cfg.model_copy(update={"recipes": []}))[0]


def stored_scan(cfg: "StudyConfig", store: "ResultStore") -> tuple[pd.DataFrame, str | None]:
    """The first baseline's validation scan and None, or an empty frame and why it cannot be used."""
    base = first_baseline(cfg)
    scans = store.sensitivity_scans()
    mine = scans[(scans.baseline_id == base.run_id) & (scans.split == SCAN_SPLIT)]
    first = f"the study's first baseline (seed {base.seed}, run {base.run_id})"
    if mine.empty:
        return pd.DataFrame(), (f"prune from_sensitivity: no layer-wise sensitivity scan of {first} on the validation split in "
                                f"{store.path.parent}: run `faircompress sensitivity CONFIG` first")
    row = store.conn.execute("SELECT artefact_sha256 FROM runs WHERE run_id=?", (base.run_id,)).fetchone()
    if row is None or row[0] != mine.checkpoint_sha256.iloc[0]:
        return pd.DataFrame(), (f"prune from_sensitivity: the stored sensitivity scan was made on another copy of {first}'s "
                                "checkpoint than the one recorded now: run `faircompress sensitivity CONFIG` again")
    return store.sensitivity(base.run_id, SCAN_SPLIT), None


def resolve(cfg: "StudyConfig", store: "ResultStore", shape: "InputShape") -> tuple["StudyConfig", str | None]:
    """``cfg`` with every per-layer prune step given its ``overall`` level and every ``from_sensitivity``
    step its chosen ``sparsity`` (from the stored scan), and why some ``from_sensitivity`` steps could
    not be resolved (None when all were). A config without per-layer steps comes back as it is."""
    steps = _prune_steps(cfg)
    if not steps:
        return cfg, None
    sizes = layer_sizes(cfg, shape)
    names = list(sizes)
    scan, why = (pd.DataFrame(), None)
    if any(p.from_sensitivity is not None for _, _, p in steps):
        scan, why = stored_scan(cfg, store)
        if why is None and set(scan.layer) != set(names):
            why = (f"prune from_sensitivity: the stored scan covers layers {sorted(set(scan.layer))}, the model has {names}: "
                   "run `faircompress sensitivity CONFIG` again")
    recipes = [list(r) for r in cfg.recipes]
    for i, j, p in steps:
        if p.from_sensitivity is not None:
            if why is not None:
                continue  # left unresolved: its runs fail with `why`
            levels = choose_sparsities(scan, p.from_sensitivity.tolerance, p.from_sensitivity.gaps)
            if isinstance(p.sparsity, dict) and p.sparsity != levels:
                raise LayerwiseError(f"recipe {i + 1}: prune sparsity is chosen from the sensitivity scan ({levels}), not given "
                                     f"({p.sparsity}): remove it")
        else:
            try:
                levels = p.layer_sparsities(names)
            except ValueError as e:
                raise LayerwiseError(f"recipe {i + 1}: {e}") from None
        overall = overall_sparsity(levels, sizes)
        if p.overall is not None and not np.isclose(p.overall, overall):
            raise LayerwiseError(f"recipe {i + 1}: prune overall is derived from the model ({overall:.4f}), not given "
                                 f"({p.overall}): remove it")
        params: dict[str, Any] = dict(recipes[i][j]["prune"])
        if p.from_sensitivity is not None:
            params["sparsity"] = levels
        params["overall"] = overall
        recipes[i][j] = {"prune": params}
    from .recipes import parse_recipe

    recipes = [parse_recipe(r, f"recipe {i + 1}").to_config() for i, r in enumerate(recipes)]  # normalised again
    return cfg.model_copy(update={"recipes": recipes}), why


def unresolved(run: "PlannedRun") -> bool:
    """Whether a planned run's recipe holds a from_sensitivity step whose sparsities were not chosen."""
    return run.recipe is not None and any(
        s.name == "prune" and s.params.from_sensitivity is not None and s.params.sparsity is None for s in run.recipe.steps)
