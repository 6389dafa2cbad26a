"""Layer-wise sensitivity scans and pruning-then-quantisation with per-layer sparsities: one layer
compressed at a time, the store round trip, the selection rule, per-layer recipes (identity, labels,
errors), and a tiny study end to end through the CLI (scan, then prune-from-sensitivity + int8)."""
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
import yaml
from conftest import TINY_DATA
from onnx import numpy_helper
from torch import nn

from faircompress import sensitivity as S
from faircompress.compress.layerwise import choose_sparsities
from faircompress.compress.pruning import PruneStep, prunable
from faircompress.compress.qat import fake_quant_int8
from faircompress.compress.recipes import RecipeError, TuneContext, parse_recipe
from faircompress.config import ConfigError, load_config
from faircompress.data.synthetic import SyntheticParams, generate
from faircompress.evaluate.metrics import evaluate_split
from faircompress.plan import plan
from faircompress.store import ResultStore

DATA = {**TINY_DATA, "val_fraction": 0.35}  # a validation split with two groups of 5+ images in every attribute
LEVELS = [0.0, 0.3, 0.9]


@pytest.fixture(scope="module")
def tiny():
    return generate(SyntheticParams(**DATA))


def _small_cnn(seed=0):
    """A conv (72 weights), a dense layer (4,096) and a head (256): 16 x 16 grey images in, 8 classes out."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                         nn.Linear(128, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


# --- the scan ----------------------------------------------------------------------------------------
def test_each_evaluated_copy_differs_from_the_baseline_in_one_layer_only(tiny, monkeypatch):
    model = _small_cnn()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    seen, real = [], S._predict

    def spy(m, images, batch_size, device):
        seen.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        return real(m, images, batch_size, device)

    monkeypatch.setattr(S, "_predict", spy)
    rows = S.scan_model(model, tiny, "val", LEVELS, torch.device("cpu"))
    jobs = S.jobs_for(model, LEVELS)
    assert [j[0] for j in jobs if j[2] == "int8"] == ["4.weight"]  # the conv (72) and the head (256) stay float in int8-weights
    assert len(seen) == 1 + len(jobs)  # the unmodified baseline, then one fresh copy per (layer, technique, level)
    assert all(torch.equal(seen[0][k], base[k]) and torch.equal(model.state_dict()[k], base[k]) for k in base)
    for state, (layer, _, technique, level) in zip(seen[1:], jobs):
        changed = [k for k in base if not torch.equal(state[k], base[k])]
        assert changed == ([] if technique == "prune" and level == 0 else [layer]), (layer, technique, level)
        w, w0 = state[layer], base[layer]
        if technique == "prune":
            assert int((w == 0).sum()) == round(level * w.numel())  # that layer at exactly that sparsity
            kept = w != 0
            assert torch.equal(w[kept], w0[kept])
            if level:
                assert w0[kept].abs().min() >= w0[~kept].abs().max()  # the smallest magnitudes went
        else:
            assert torch.equal(w, fake_quant_int8(w0, None))  # dense: one scale for the tensor, as int8-weights
            assert len(torch.unique(torch.round(w / (w0.abs().max() / 127)))) <= 255
    assert set(rows.attribute) == {"", "gender", "skin_tone", "age"}
    assert (rows[(rows.technique == "prune") & (rows.level == 0)].delta == 0).all()
    assert len(rows) == 4 * len(jobs) and (rows.value - rows.reference == rows.delta).all()
    pruned = rows[(rows.technique == "prune") & (rows.attribute == "")]
    assert np.allclose(pruned.sparsity, pruned.level, atol=0.01)


def test_the_scans_measures_are_the_projects_accuracy_and_gap(tiny):
    pred = S._predict(_small_cnn(), tiny.images[tiny.indices("val")], 64, torch.device("cpu"))
    got = S.split_measures(tiny, "val", pred)
    ev = evaluate_split(tiny, pred, "val")
    gaps = ev.disparity.set_index("attribute").gap
    assert got[""] == ev.accuracy
    assert got["gender"] == pytest.approx(gaps["gender"])  # both groups have 5+ images: the stored gap
    groups = ev.groups[(ev.groups.attribute == "skin_tone") & (ev.groups["count"] >= 5)].accuracy
    assert got["skin_tone"] == pytest.approx(groups.max() - groups.min())  # a group under 5 images is left out, as in the report


def test_choose_sparsities_takes_the_largest_level_every_lower_level_passes():
    def rows(layer, position, deltas, gap=()):
        out = [(layer, position, "prune", lv, "", d) for lv, d in deltas.items()]
        return out + [(layer, position, "prune", lv, "gender", d) for lv, d in gap]

    scan = pd.DataFrame(rows("a", 0, {0.0: 0, 0.2: 0.0, 0.5: -0.01, 0.7: -0.05, 0.9: 0.0})      # 0.9 passes, after 0.7 failed
                        + rows("b", 1, {0.2: -0.02, 0.5: 0.0}, [(0.2, 0.0), (0.5, 0.0)])
                        + rows("c", 2, {0.2: 0.0, 0.5: 0.0}, [(0.2, 0.0), (0.5, 0.03)])
                        + [("a", 0, "int8", 8.0, "", -0.5)],
                        columns=["layer", "position", "technique", "level", "attribute", "delta"])
    assert choose_sparsities(scan, 0.01) == {"a": 0.5, "b": 0.0, "c": 0.5}  # a drop equal to the tolerance passes
    assert choose_sparsities(scan, 0.01, gaps=True) == {"a": 0.5, "b": 0.0, "c": 0.2}
    assert choose_sparsities(scan, 0.1) == {"a": 0.9, "b": 0.5, "c": 0.5}


def test_a_scan_is_stored_in_one_table_keyed_by_baseline_layer_technique_level_attribute(tmp_path):
    store = ResultStore(tmp_path)
    store.start_run("b1", study="s", identity={"kind": "baseline", "label": "b", "seed": 0}, config={}, versions={}, git_commit="x")
    rows = pd.DataFrame([("l.weight", 0, "prune", 0.5, "", 0.7, 0.8, -0.1, 0.5, 4096),
                         ("l.weight", 0, "prune", 0.5, "gender", 0.2, 0.1, 0.1, 0.5, 4096),
                         ("l.weight", 0, "int8", 8.0, "", 0.8, 0.8, 0.0, 0.0, 4096)], columns=list(ResultStore.SENSITIVITY_COLUMNS))
    meta = {"checkpoint_sha256": "abc", "dataset_key": "d", "images": 10, "levels": [0.5], "device": "cpu", "seconds": 1.0}
    store.record_sensitivity("b1", "val", meta, rows)
    store.close()
    store = ResultStore(tmp_path)  # reopened: the rows as written, typed
    back = store.sensitivity("b1", "val")
    assert back[list(ResultStore.SENSITIVITY_COLUMNS)].sort_values(["technique", "attribute"]).reset_index(drop=True).equals(
        rows.sort_values(["technique", "attribute"]).reset_index(drop=True))
    types = {r[1]: r[2] for r in store.conn.execute("PRAGMA table_info(sensitivity)")}
    assert types["level"] == "REAL" and types["elements"] == "INTEGER" and types["position"] == "INTEGER" and types["delta"] == "REAL"
    pk = [r[1] for r in sorted(store.conn.execute("PRAGMA table_info(sensitivity)"), key=lambda r: r[5]) if r[5]]
    assert pk == ["baseline_id", "split", "layer", "technique", "level", "attribute"]
    store.record_sensitivity("b1", "val", meta | {"images": 12}, rows.iloc[:1])  # a new scan replaces the old one
    assert len(store.sensitivity()) == 1 and store.sensitivity_scans().images.tolist() == [12]
    store.conn.executescript("DROP TABLE sensitivity; DROP TABLE sensitivity_scans;")  # a store made before scans existed
    store.close()
    store = ResultStore(tmp_path)
    assert store.sensitivity().empty and store.sensitivity_scans().empty  # gains the tables on opening, no migration
    store.close()


# --- per-layer recipes -------------------------------------------------------------------------------
def test_existing_recipes_keep_their_keys_and_labels():
    plain = parse_recipe([{"prune": {"sparsity": 0.5}}])
    assert plain.key() == "d9048a4a879f" and plain.label == "prune 50%" and plain.level == 0.5 and plain.technique == "prune"
    runs = [r for r in plan(load_config()) if r.recipe is not None]  # the default grid, as before per-layer sparsities existed
    blob = json.dumps([[r.recipe.key(), r.recipe.label, r.recipe.technique, r.recipe.level] for r in runs])
    assert hashlib.sha256(blob.encode()).hexdigest()[:16] == "b650366864f9f4b8"


def test_per_layer_recipes_label_level_technique_and_refusals():
    explicit = parse_recipe([{"prune": {"sparsity": {"0.weight": 0.2, "default": 0.8}}}, {"quantize": {}}])
    step = explicit.steps[0]
    assert explicit.technique == "prune-layerwise + quantize" and explicit.level is None  # until the study derives it
    assert step.params.layer_sparsities(["0.weight", "4.weight", "6.weight"]) == {"0.weight": 0.2, "4.weight": 0.8, "6.weight": 0.8}
    with pytest.raises(ValueError, match=r"no layer 'x.weight' in this model; its prunable layers are 0.weight, 4.weight"):
        parse_recipe([{"prune": {"sparsity": {"x.weight": 0.2}}}]).steps[0].params.layer_sparsities(["0.weight", "4.weight"])
    derived = parse_recipe([{"prune": {"sparsity": {"0.weight": 0.2, "default": 0.8}, "overall": 0.62}}])
    assert derived.label == "prune per-layer (62%)" and derived.level == 0.62 and derived.key() != parse_recipe(
        [{"prune": {"sparsity": {"0.weight": 0.2, "default": 0.8}}}]).key()
    rule = parse_recipe([{"prune": {"from_sensitivity": {"tolerance": 0.005}}}, {"quantize": {}}])
    assert rule.label == "prune from sensitivity (tol 0.5%) + int8-weights" and rule.technique == "prune-sensitivity + quantize"
    resolved = parse_recipe([{"prune": {"from_sensitivity": {"tolerance": 0.01, "gaps": True}, "sparsity": {"0.weight": 0.5},
                                        "overall": 0.4}}])
    assert resolved.label == "prune from sensitivity (tol 1%, gaps, 40%)" and resolved.key() != rule.key()
    for bad, needle in [({"from_sensitivity": {"tolerance": 0.01}, "sparsity": 0.5}, "not both"),
                        ({"sparsity": {"0.weight": 0.5}, "scope": "global"}, "scope: global"),
                        ({"sparsity": {"0.weight": 1.0}}, "sparsity: each layer's fraction"),
                        ({"sparsity": 0.5, "overall": 0.5}, "overall: only per-layer"),
                        ({"epochs": 1}, "sparsity: required")]:
        with pytest.raises(RecipeError, match=needle):
            parse_recipe([{"prune": bad}])


def test_unknown_layer_names_stop_the_config_when_it_loads_in_one_line():
    with pytest.raises(ConfigError) as e:
        load_config(None, {"recipes": [[{"prune": {"sparsity": {"features.0.weight": 0.2, "classifier.0.weight": 0.8}}}]]})
    line = next(x for x in str(e.value).splitlines() if "classifier.0.weight" in x)
    assert "recipe 1: prune sparsity: no layer 'classifier.0.weight'" in line and "features.0.weight, features.5.weight" in line
    assert "classifier.9.weight" in line  # the valid names, as `prunable` (and the scan) lists them
    load_config(None, {"recipes": [[{"prune": {"sparsity": {"features.0.weight": 0.2, "classifier.9.weight": 0.8}}}]]})


def test_unknown_layer_names_stop_a_study_before_anything_is_written(tiny, tmp_path):
    from faircompress.study import _check_layers

    cfg = load_config(None, {"output_dir": str(tmp_path / "s"), "dataset.params": DATA, "recipes": []})
    bad = cfg.model_copy(update={"recipes": [[{"prune": {"sparsity": {"features.1.weight": 0.5}}}]]})  # as if no shape were declared
    with pytest.raises(ConfigError, match=r"recipe 1: prune sparsity: no layer 'features.1.weight'.*features.0.weight, features.5.weight"):
        _check_layers(bad, tiny)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("method", ["magnitude", "random"])
def test_per_layer_pruning_prunes_each_layer_at_its_own_level(method):
    model = _small_cnn()
    step = parse_recipe([{"prune": {"sparsity": {"4.weight": 0.75, "default": 0.5}, "epochs": 0, "method": method}}]).steps[0]
    assert isinstance(step, PruneStep)
    ctx = TuneContext(fine_tune=lambda *a: None, seed=0)
    step.apply(model, ctx)
    zeros = {k: float((w == 0).float().mean()) for k, w in prunable(model).items()}
    assert zeros == pytest.approx({"0.weight": 0.5, "4.weight": 0.75, "6.weight": 0.5})
    assert ctx.details["prune"]["sparsity"] == pytest.approx(zeros)
    assert ctx.details["prune"]["overall"] == pytest.approx((36 + 3072 + 128) / (72 + 4096 + 256))


# --- a tiny study through the CLI --------------------------------------------------------------------
SMALL_MODEL = """from torch import nn


def build(in_channels, num_classes, input_size):
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                         nn.Linear(128, 32), nn.ReLU(), nn.Linear(32, num_classes))
"""


def _config(tmp_path: Path, out: str, recipes) -> Path:
    (tmp_path / "small.py").write_text(SMALL_MODEL)
    cfg = {"name": "sun-tiny", "output_dir": str(tmp_path / out), "dataset": {"name": "synthetic", "params": DATA},
           "model": {"file": str(tmp_path / "small.py")},
           "train": {"epochs": 1, "batch_size": 8, "precision": "fp32", "device": "cpu"}, "repeats": 1,
           "evaluation": {"latency": False, "memory": False}, "recipes": recipes}
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


RECIPES = [[{"quantize": {"mode": "int8-weights"}}],
           [{"prune": {"from_sensitivity": {"tolerance": 0.02, "gaps": True}, "epochs": 1}}, {"quantize": {"mode": "int8-weights"}}]]


def test_a_scan_trains_the_baseline_first_and_writes_table_and_figures(tmp_path):
    from typer.testing import CliRunner

    from faircompress.cli import app

    cfg = _config(tmp_path, "fresh", RECIPES)
    res = CliRunner().invoke(app, ["sensitivity", str(cfg), "--levels", "0.5,0,0.9"])
    assert res.exit_code == 0, res.output
    study = tmp_path / "fresh"
    store = ResultStore.open_existing(study)
    runs = store.runs()
    assert set(runs.kind) == {"baseline", "variant"} and (runs.status == "finished").all()  # the baselines and their fp32 exports only
    assert (runs[runs.kind == "variant"].is_reference == 1).all()
    scan = store.sensitivity()
    assert set(scan.baseline_id) == {runs[runs.kind == "baseline"].run_id.iloc[0]} and set(scan.split) == {"val"}
    assert sorted(scan[scan.technique == "prune"].level.unique()) == [0.0, 0.5, 0.9]
    assert json.loads(store.sensitivity_scans().levels_json.iloc[0]) == [0.0, 0.5, 0.9]
    store.close()
    assert len(load_config(study / "config.yaml").recipes) == 2  # the study's config, not the baselines-only one
    csv = pd.read_csv(study / "tables" / "sensitivity.csv")
    assert len(csv) == len(scan) and set(csv.metric) == {"accuracy", "gap"}
    for name in ("sensitivity-curves", "sensitivity-heatmap"):
        assert (study / "figures" / f"{name}.png").stat().st_size > 1000 and (study / "figures" / f"{name}.svg").exists()
    assert "4.weight" in res.output and "sensitivity.csv" in res.output


def test_pruning_from_the_scan_then_int8_end_to_end(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from faircompress.cli import app
    from faircompress.report import build

    runner, cfg, study = CliRunner(), _config(tmp_path, "sun", RECIPES), tmp_path / "sun"
    res = runner.invoke(app, ["run", str(cfg), "--no-report"])
    assert res.exit_code == 1 and "faircompress sensitivity CONFIG` first" in res.output  # no scan yet: that variant fails
    store = ResultStore.open_existing(study)
    assert not store.runs().technique.fillna("").str.startswith("prune").any()  # and is not recorded
    store.close()
    res = runner.invoke(app, ["sensitivity", str(study), "--levels", "0.2,0.5,0.9"])  # the study directory works too
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["run", str(cfg), "--no-report"])
    assert res.exit_code == 0, res.output
    store = ResultStore.open_existing(study)
    runs = store.runs().set_index("technique")
    scan = store.sensitivity()
    chosen = choose_sparsities(scan, 0.02, gaps=True)
    prune = json.loads(runs.recipe_json["prune-sensitivity + quantize"])[0]["prune"]
    assert prune["sparsity"] == chosen and prune["from_sensitivity"] == {"tolerance": 0.02, "gaps": True}  # in the run's identity
    sizes = {"0.weight": 72, "4.weight": 4096, "6.weight": 256}
    overall = sum(round(chosen[k] * n) for k, n in sizes.items()) / sum(sizes.values())
    assert runs.level["prune-sensitivity + quantize"] == pytest.approx(overall) == prune["overall"]
    assert runs.variant["prune-sensitivity + quantize"].startswith(f"prune from sensitivity (tol 2%, gaps, {overall:.0%})")
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(study / runs.artefact["prune-sensitivity + quantize"])).graph.initializer}
    assert (inits["4.weight_int8"] == 0).mean() == pytest.approx(chosen["4.weight"], abs=1e-3)  # int8 codes of the pruned kernel
    exact = {k: round(chosen[k] * n) / n for k, n in sizes.items()}  # each kernel's count, rounded as magnitude pruning rounds it
    assert (inits["0.weight"] == 0).mean() == pytest.approx(exact["0.weight"])  # under 1,024 elements: left float
    details = json.loads(runs.details_json["prune-sensitivity + quantize"])["steps"]["prune"]
    assert details["sparsity"] == pytest.approx(exact) and details["overall"] == pytest.approx(overall)
    store.close()
    monkeypatch.setattr(build, "_figures", lambda *a, **k: [])  # the study's other figures are drawn (and tested) elsewhere
    report = build.write_report(study, n_boot=100, faces=False)
    html = report.html.read_text()
    assert "Layer-wise sensitivity" in html and "sensitivity-heatmap" in html and "sensitivity-curves" in html
    assert [p.stem for p in report.figures] == ["sensitivity-curves", "sensitivity-heatmap"]
    assert (study / "tables" / "report-sensitivity.csv").exists() and (study / "tables" / "sensitivity.csv").exists()


def test_the_sun_config_scans_then_prunes_from_the_scan_and_quantises():
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "sun-layerwise.yaml")
    assert cfg.model.name == "paper_cnn" and cfg.dataset.params["classes"] == "ckplus" and cfg.dataset.params["image_size"] == 48
    labels = [parse_recipe(r).label for r in cfg.recipes]
    assert labels == ["int8-weights", "prune 50% + int8-weights"] + [
        f"prune from sensitivity (tol {t}%) + int8-weights" for t in ("0.5", "1", "2")]
