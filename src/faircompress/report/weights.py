"""The weights of the shipped files, and the paper's explanation of fragility turned into numbers.

Stoychev & Gunes (2022, Discussion; Figs. 15-16) explain why CK+'s model loses more to pruning than
RAF-DB's by the shape of its weight distribution: a "wider" distribution means that cutting 60 % of
the weights cuts weights far from zero. Per baseline model and layer this module measures that
argument: the spread of the weights (std), the share within a small band around zero, and, at each
sparsity level, the magnitude at which per-layer magnitude pruning cuts as a multiple of the spread
and the share of the layer's squared weight ("energy") that the cut removes. `cut_table` places these
beside the accuracy each pruning level actually lost, so a reader sees whether the argument holds.
Every number comes from the deployable ONNX files (float initializers), the same files reported on.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .results import StudyResults, Variant

BAND = 0.25        # "close to zero": |w| within this many standard deviations of the layer
PAPER_LEVEL = 0.6  # the sparsity of the paper's Figs. 15 and 16


class UnknownLayer(ValueError):
    """A layer asked for by name that the study's files do not have; the message lists those they do."""


def float_weights(study_dir: Path, artefact: str | None) -> dict[str, np.ndarray]:
    """Every float weight tensor of conv and dense layers (ndim >= 2) in an exported file, by name
    (artefact paths are stored relative to the study); {} when the file is missing."""
    path = Path(artefact) if artefact else None
    if path is not None and not path.is_absolute():
        path = study_dir / path
    if path is None or not path.exists():
        return {}
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer
            if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) >= 2}


def layer_spread(w: np.ndarray, levels: list[float]) -> dict[str, float]:
    """Spread numbers of one layer: std, excess kurtosis, share within ±BAND·std of zero, and per
    sparsity level the cut magnitude over the std and the share of squared weight it removes."""
    a = np.abs(w.ravel().astype(np.float64))
    std = float(w.std())
    out = {"elements": a.size, "std": std,
           "kurtosis": float(np.mean((w - w.mean()) ** 4) / std ** 4 - 3) if std > 0 else float("nan"),
           "near_zero": float(np.mean(a <= BAND * std))}
    energy = np.sort(a) ** 2
    total = energy.sum()
    for level in levels:
        k = int(np.floor(level * a.size))
        cut = float(np.sort(a)[k - 1]) if k > 0 else 0.0
        out[f"cut_sd@{level:g}"] = cut / std if std > 0 else float("nan")
        out[f"energy_removed@{level:g}"] = float(energy[:k].sum() / total) if total > 0 else float("nan")
    return out


def pruning_levels(res: StudyResults) -> list[float]:
    """The study's pruning sparsities, and the paper's 60 %."""
    found = {round(float(v.level), 6) for v in res.variants if v.technique == "prune" and np.isfinite(v.level)}
    return sorted(found | {PAPER_LEVEL})


def spread_table(res: StudyResults, study_dir: Path) -> pd.DataFrame:
    """One row per baseline model (each seed's fp32 export) and layer: `layer_spread` numbers."""
    ref = res.reference
    if ref is None:
        return pd.DataFrame()
    levels, arts, seeds = pruning_levels(res), _artefacts(res), res.runs.set_index("run_id").seed
    rows = [{"seed": int(seeds[run_id]), "layer": name, **layer_spread(w, levels)}
            for run_id in ref.run_ids for name, w in float_weights(study_dir, arts.get(run_id)).items()]
    return pd.DataFrame(rows)


def spread_summary(spread: pd.DataFrame) -> pd.DataFrame:
    """Per layer, the mean over baseline models: elements, std, kurtosis, share near zero, and the cut
    and the energy removed at the paper's 60 %."""
    if spread.empty:
        return spread
    cols = ["elements", "std", "kurtosis", "near_zero", f"cut_sd@{PAPER_LEVEL:g}", f"energy_removed@{PAPER_LEVEL:g}"]
    out = spread.groupby("layer", sort=False)[cols].mean().reset_index()
    out["elements"] = out["elements"].astype(int)
    return out.rename(columns={"near_zero": f"share within ±{BAND:g} sd", f"cut_sd@{PAPER_LEVEL:g}": "cut at 60 % (sd)",
                               f"energy_removed@{PAPER_LEVEL:g}": "energy removed at 60 %"})


def cut_table(res: StudyResults, spread: pd.DataFrame, accuracy: pd.Series) -> pd.DataFrame:
    """Per pruning level: where the cut falls (in sds, weighted over layers by their size) and the
    share of squared weight removed, beside the accuracy the study's pruning at that level lost
    (pp against the baseline; empty where the study did not prune at that level)."""
    if spread.empty:
        return pd.DataFrame()
    ref = res.reference
    pruned = {round(float(v.level), 6): v for v in res.variants if v.technique == "prune" and np.isfinite(v.level)}
    rows = []
    for level in pruning_levels(res):
        weights = spread.elements / spread.elements.sum()
        variant = pruned.get(round(level, 6))
        rows.append({"sparsity": level, "cut (sd, size-weighted)": float((spread[f"cut_sd@{level:g}"] * weights).sum()),
                     "energy removed": float((spread[f"energy_removed@{level:g}"] * weights).sum()),
                     "accuracy change (pp)": 100 * (accuracy[variant.key] - accuracy[ref.key]) if variant is not None else np.nan,
                     "variant": variant.label if variant is not None else "—"})
    return pd.DataFrame(rows)


def kernel_table(res: StudyResults) -> pd.DataFrame:
    """Per variant and kernel, what each run recorded of its file (mean over the variant's runs):
    elements, sparsity, distinct values and storage type."""
    details = res.runs.set_index("run_id").details_json
    rows = []
    for variant in res.variants:
        per_run = [json.loads(details[r]).get("kernels", {}) for r in variant.run_ids if isinstance(details.get(r), str)]
        for layer in dict.fromkeys(k for kernels in per_run for k in kernels):
            recs = [kernels[layer] for kernels in per_run if layer in kernels]
            rows.append({"variant": variant.label, "layer": layer, "elements": int(recs[0]["size"]),
                         "sparsity": float(np.mean([r["sparsity"] for r in recs])),
                         "distinct values": float(np.mean([r["distinct"] for r in recs])), "dtype": recs[0]["dtype"]})
    return pd.DataFrame(rows, columns=["variant", "layer", "elements", "sparsity", "distinct values", "dtype"])


def histogram_layers(changed: dict[str, tuple[int, int]], layers: list[str], requested: list[str]) -> list[str]:
    """The layers the paper plots (its caption's first convolution and its text's first dense layer:
    the first 4-d and the first 2-d weight), the model's largest weight, and any the user names.
    ``changed``: layer -> (ndim, elements) of the weights compression changed (a model's fixed
    tensors, e.g. pca_mlp's descriptor filters, are never pruned and are not chosen); ``layers``: all
    the file's weights, which the user may name."""
    unknown = [r for r in requested if r not in layers]
    if unknown:
        raise UnknownLayer(f"--layer {', '.join(unknown)}: not a weight of the study's files (they have: {', '.join(layers)})")
    conv = next((n for n, (rank, _) in changed.items() if rank == 4), None)
    dense = next((n for n, (rank, _) in changed.items() if rank == 2), None)
    largest = max(changed, key=lambda n: changed[n][1], default=None)
    return list(dict.fromkeys([n for n in (conv, dense, largest) if n] + requested))


def weight_pairs(res: StudyResults, study_dir: Path, requested: list[str]) -> tuple[Variant | None, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """For each histogram layer, its weights in the first baseline file and in the same baseline's
    file pruned at 60 % (or the study's level nearest to it)."""
    ref = res.reference
    pruned = [v for v in res.variants if v.technique == "prune" and np.isfinite(v.level)]
    if ref is None or not pruned:
        if requested:
            raise UnknownLayer("--layer: the study has no pruned variant to compare a layer against")
        return None, {}
    variant = min(pruned, key=lambda v: (abs(v.level - PAPER_LEVEL), -v.level))
    arts, base_of = _artefacts(res), res.runs.set_index("run_id").baseline_id
    ref_run = ref.run_ids[0]
    run = next((r for r in variant.run_ids if base_of.get(r) == base_of.get(ref_run)), variant.run_ids[0])
    before, after = float_weights(study_dir, arts.get(ref_run)), float_weights(study_dir, arts.get(run))
    same = {n: w for n, w in before.items() if n in after and w.shape == after[n].shape}
    changed = {n: (w.ndim, w.size) for n, w in same.items() if not np.array_equal(w, after[n])}
    return variant, {n: (before[n], after[n]) for n in histogram_layers(changed, list(same), requested)}


def _artefacts(res: StudyResults) -> pd.Series:
    return res.runs.set_index("run_id").artefact
