"""Lottery tickets (`ticket`): the defining property (survivors = the weights they were reset to,
captured right before retraining), the mask, the controls, the zeros held through retraining, the
per-epoch record, and one tiny study end to end (the reset is the baseline's own start; the files run)."""
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import TINY_DATA, finished_mlp_study
from torch import nn

from faircompress.compress.lottery import derived_seed, random_masks_like, reset_keys
from faircompress.compress.pruning import percentile_masks, prunable
from faircompress.compress.recipes import STEPS, TuneContext, parse_recipe
from faircompress.config import TrainConfig, load_config
from faircompress.data.synthetic import SyntheticParams, generate
from faircompress.store import ResultStore
from faircompress.train import fit


@pytest.fixture(scope="module")
def tiny():
    return generate(SyntheticParams(**TINY_DATA))


class Net(nn.Module):
    """Conv + BatchNorm, a dense layer, a head, and a buffer fitted to data (as pca_mlp's PCA)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("offset", torch.zeros(1))
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.dense = nn.Linear(6 * 16, 24)
        self.head = nn.Linear(24, 8)

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(torch.relu(self.bn(self.conv(x / 255 - self.offset))), 4)
        return self.head(torch.relu(self.dense(x.flatten(1))))


def _net(seed: int) -> Net:
    torch.manual_seed(seed)
    return Net()


def _trained(seed: int = 0) -> Net:
    """The 'baseline': its initial model moved away from the start, BatchNorm statistics and the fitted buffer set."""
    model = _net(seed)
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
        model.bn.running_mean.fill_(0.7)
        model.bn.running_var.fill_(2.0)
        model.offset.fill_(0.25)
        model.dense.weight[:, :10] = 0  # zeros of an earlier step: they stay pruned, and are not counted
    return model


def _step(**params):
    cls = STEPS.get("ticket")
    return cls(cls.Params(**params))


def _ctx(tiny, seen: dict, seed: int = 1000, epochs: int = 2):
    """A context like a study's: the initial model of the baseline's seed (0), test accuracy, and a
    fine_tune that records the model right before retraining and the weights after every epoch."""
    cfg = TrainConfig(epochs=epochs, batch_size=8, precision="fp32", device="cpu")

    def fine_tune(model, e, after, on_epoch=None):
        seen["before"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        seen["epochs"] = []

        def each(log):
            seen["epochs"].append({k: v.detach().clone() for k, v in prunable(model).items()})
            on_epoch(log)

        return fit(model, tiny, cfg.model_copy(update={"epochs": e}), seed, after_step=after, on_epoch=each)

    def accuracy(model, split):
        idx = tiny.indices(split)
        with torch.no_grad():
            model.eval()
            return float((model(torch.from_numpy(tiny.images[idx]).float()).argmax(1).numpy() == tiny.labels[idx]).mean())

    return TuneContext(fine_tune=fine_tune, seed=seed, initial_model=lambda s=None: _net(0 if s is None else s),
                       accuracy=accuracy, train_epochs=epochs)


def test_a_ticket_is_the_percentile_mask_of_the_trained_weights_on_the_initial_ones_held_through_retraining(tiny):
    model, initial, seen = _trained(), _net(0), {}
    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    masks = percentile_masks(prunable(model), 0.5)
    ctx = _ctx(tiny, seen)
    _step(sparsity=0.5).apply(model, ctx)
    before, init = seen["before"], initial.state_dict()
    for k, keep in masks.items():  # the defining property: the survivors are the initial weights, the rest zero
        assert torch.equal(before[k][keep], init[k][keep]) and (before[k][~keep] == 0).all(), k
    assert int((~masks["dense.weight"]).sum()) == 240 + round(0.5 * (24 * 96 - 240))  # existing zeros + half the survivors
    for k in ("conv.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "head.bias"):
        assert torch.equal(before[k], init[k]), k  # every parameter and BatchNorm's statistics reset
    assert torch.equal(before["offset"], trained["offset"])  # state fitted to data is the trained model's
    assert "offset" not in reset_keys(model)
    assert len(seen["epochs"]) == 2
    for weights in [*seen["epochs"], prunable(model)]:  # every epoch's weights and the selected ones
        for k, keep in masks.items():
            assert (weights[k][~keep] == 0).all(), k
    assert not torch.equal(prunable(model)["conv.weight"], before["conv.weight"])  # it did retrain
    rec = ctx.details["ticket"]
    assert [e["epoch"] for e in rec["per_epoch"]] == [1, 2]
    assert all(0 <= e["test_acc"] <= 1 and 0 <= e["sel_acc"] <= 1 for e in rec["per_epoch"])
    tests = [e["test_acc"] for e in rec["per_epoch"]]
    assert rec["best_test_acc"] == max(tests) and tests[rec["best_test_epoch"] - 1] == max(tests)
    reach = rec["reaches_unpruned_epoch"]
    assert reach is None and max(tests) < rec["unpruned_test_acc"] or tests[reach - 1] >= rec["unpruned_test_acc"] > max(tests[: reach - 1], default=-1)
    assert rec["layers"]["dense.weight"]["pruned"] == int((~masks["dense.weight"]).sum()) and rec["control"] == "none"
    json.dumps(rec)  # stored as JSON


def test_random_mask_control_keeps_the_per_layer_counts_and_random_init_the_mask(tiny):
    ticket = percentile_masks(prunable(_trained()), 0.5)
    model, seen = _trained(), {}
    _step(sparsity=0.5, control="random_mask", epochs=1).apply(model, ctx := _ctx(tiny, seen, seed=1000))
    init = _net(0).state_dict()
    for k, keep in ticket.items():
        random_keep = seen["before"][k] != 0
        assert int(random_keep.sum()) == int(keep.sum()), k  # the same count per kernel
        assert torch.equal(seen["before"][k][random_keep], init[k][random_keep])  # reset to the same initial weights
    assert not torch.equal(seen["before"]["dense.weight"] != 0, ticket["dense.weight"])  # other weights
    assert (seen["before"]["dense.weight"][:, :10] == 0).all()  # existing zeros stay pruned
    assert ctx.details["ticket"]["mask_seed"] == 1000

    model, seen = _trained(), {}
    _step(sparsity=0.5, control="random_init", epochs=1).apply(model, ctx := _ctx(tiny, seen, seed=1000))
    fresh = _net(derived_seed(1000, "ticket random_init")).state_dict()
    for k, keep in ticket.items():
        assert torch.equal(seen["before"][k][keep], fresh[k][keep]) and (seen["before"][k][~keep] == 0).all()
        assert not torch.equal(fresh[k], init[k])
    assert ctx.details["ticket"]["init_seed"] == derived_seed(1000, "ticket random_init") != 1000


def test_random_masks_like_draws_among_the_survivors():
    w = {"a": torch.tensor([[0.0, 1, 2, 3], [4, 5, 0, 7]])}
    masks = percentile_masks(w, 0.5)
    for s in range(5):
        out = random_masks_like(w, masks, torch.Generator().manual_seed(s))["a"]
        assert int(out.sum()) == int(masks["a"].sum()) == 3 and not out[0, 0] and not out[1, 2]


def test_an_unreproducible_initial_model_and_a_missing_one_are_refused(tiny):
    ctx = _ctx(tiny, {})
    ctx.initial_model = lambda s=None: Net()  # unseeded: two builds differ
    with pytest.raises(ValueError, match="not reproducible"):
        _step(sparsity=0.5, epochs=1).apply(_trained(), ctx)
    with pytest.raises(ValueError, match="initial_model"):
        _step(sparsity=0.5, epochs=1).apply(_trained(), TuneContext(fine_tune=None, seed=0))


def test_ticket_recipes_labels_and_families():
    plain, rmask, rinit = (parse_recipe([{"ticket": {"sparsity": 0.5, **extra}}]) for extra in
                           ({}, {"control": "random_mask"}, {"control": "random_init", "epochs": 3}))
    assert plain.to_config() == [{"ticket": {"sparsity": 0.5, "control": "none", "epochs": None, "scope": "per_tensor"}}]
    assert (plain.label, rmask.label, rinit.label) == ("ticket 50%", "ticket 50% random mask", "ticket 50% random init [epochs=3]")
    assert (plain.technique, rmask.technique, rinit.technique) == ("ticket", "ticket-random_mask", "ticket-random_init")
    assert plain.level == 0.5 and len({plain.key(), rmask.key(), rinit.key()}) == 3


def test_a_tiny_study_with_tickets_end_to_end(tiny_overrides, monkeypatch):
    """The reset is what the baseline's training started from (captured when its fit began); the
    ticket and its random-mask control are stored with their per-epoch accuracies; the files run;
    the report's ticket figure and table, and the distinctiveness table, come from the stored runs."""
    import faircompress.baseline as baseline_mod
    import faircompress.variants as variants_mod
    from faircompress.report.build import write_report
    from faircompress.report.lottery import distinct_match_table, ticket_curves, ticket_table
    from faircompress.report.results import load_results

    starts: dict[str, list] = {"baseline": [], "variant": []}

    def capture(kind, real):
        def wrapped(model, *a, **kw):
            starts[kind].append({k: v.detach().clone() for k, v in model.state_dict().items()})
            return real(model, *a, **kw)
        return wrapped

    monkeypatch.setattr(baseline_mod, "fit", capture("baseline", baseline_mod.fit))
    monkeypatch.setattr(variants_mod, "fit", capture("variant", variants_mod.fit))
    recipes = [[{"ticket": {"sparsity": 0.5}}], [{"ticket": {"sparsity": 0.5, "control": "random_mask"}}],
               [{"prune": {"sparsity": 0.5, "method": "percentile", "epochs": 0}}],
               [{"distinct": {"similar_below": 85, "complementary_above": 95}}]]
    out, store, runs = finished_mlp_study(tiny_overrides, recipes, epochs=2)
    variants = runs[(runs.kind == "variant") & (runs.is_reference == 0)].set_index("technique")
    base_start = starts["baseline"][0]
    base_ckpt = runs[runs.kind == "baseline"].artefact.iloc[0]
    from safetensors.torch import load_file
    trained = load_file(out / base_ckpt)
    assert len(starts["variant"]) == 2  # the two tickets retrain; percentile with 0 epochs and distinct do not
    for start, technique in zip(starts["variant"], ("ticket", "ticket-random_mask")):
        rec = json.loads(variants.details_json[technique])["steps"]["ticket"]
        assert rec["epochs"] == 2 and len(rec["per_epoch"]) == 2 and all(e["test_acc"] is not None for e in rec["per_epoch"])
        assert rec["unpruned_test_acc"] is not None and "best_test_acc" in rec and "reaches_unpruned_epoch" in rec
        assert all(torch.equal(start[k], base_start[k]) for k in ("lpq_weight", "lpq_bias", "phog_weight", "phog_bias"))  # fitted PCA kept
        assert not torch.equal(base_start["lpq_weight"], torch.eye(*base_start["lpq_weight"].shape))  # (fitted before training began)
        for k in prunable_names(trained):
            keep = start[k] != 0
            assert torch.equal(start[k][keep], base_start[k][keep]), k  # reset to the baseline's own start
            assert abs(keep.float().mean().item() - 0.5) < 0.01, k
            if technique == "ticket":
                assert torch.equal(keep, percentile_masks({k: trained[k]}, 0.5)[k])  # percentile of the trained weights
        sess = ort.InferenceSession(str(out / variants.artefact[technique]), providers=["CPUExecutionProvider"])
        x = tiny_images()
        assert np.isfinite(sess.run(None, {sess.get_inputs()[0].name: x})[0]).all()
    epochs = store.epochs()
    assert len(epochs[epochs.run_id == variants.run_id["ticket"]]) == 2  # the retraining's epochs in the store too
    res = load_results(store)
    table = ticket_table(res)
    assert list(table.control) == ["none", "random_mask"] and (table.runs == 1).all()
    path = ticket_curves(res, out / "figures")
    assert path is not None and path.exists()
    match = distinct_match_table(res)
    assert len(match) == 1 and match.matched_percentile.iloc[0] == "prune 50% percentile [epochs=0]"
    store.close()
    report = write_report(out, n_boot=20, faces=False)
    assert {"tickets", "distinct_match"} <= set(report.tables) and (out / "figures" / "tickets.png").exists()
    page = report.html.read_text()
    assert "Lottery tickets" in page and "Distinctiveness beside percentile pruning" in page


def prunable_names(state: dict) -> list[str]:
    return [k for k, v in state.items() if k.endswith(".weight") and v.dim() in (2, 4)]


def tiny_images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (4, 1, TINY_DATA["image_size"], TINY_DATA["image_size"])).astype(np.float32)


def test_given_baseline_weights_refuse_a_ticket(tiny_overrides, tmp_path):
    from safetensors.torch import save_file

    from faircompress.config import ConfigError
    from faircompress.models import build_model

    model = build_model("pca_mlp", in_channels=1, num_classes=8, input_size=TINY_DATA["image_size"])
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    over = {**tiny_overrides, "model": {"name": "pca_mlp"}, "baseline": {"weights": str(tmp_path / "w.safetensors")}}
    load_config(None, {**over, "recipes": [[{"prune": {"sparsity": 0.5}}]]})  # other training steps are fine
    with pytest.raises(ConfigError, match="'ticket' resets weights to the ones the baseline's training started from"):
        load_config(None, {**over, "recipes": [[{"ticket": {"sparsity": 0.5}}]]})


def test_initial_model_is_the_baselines_start_and_from_scratch_the_same_architecture(tmp_path):
    from fakes import write_imagenet_resnet18

    from faircompress.baseline import initial_model
    from faircompress.compress.lottery import same_state
    from faircompress.data.dataset import InputShape
    from faircompress.models.resnet import read_weights

    weights = write_imagenet_resnet18(tmp_path / "r.pth")
    cfg = load_config(None, {"model": {"name": "resnet18", "params": {"pretrained": str(weights)}}, "recipes": []})
    shape = InputShape(1, 8, 16)
    a, b = initial_model(cfg, 0, shape), initial_model(cfg, 0, shape)
    assert same_state(a, b) is None and not torch.equal(a.fc.weight, initial_model(cfg, 1, shape).fc.weight)  # the seed draws the head
    assert torch.equal(a.layer1[0].conv1.weight, read_weights(weights)["layer1.0.conv1.weight"])  # the ImageNet file's weights
    scratch = initial_model(cfg, 5, shape, from_scratch=True)
    assert {k: v.shape for k, v in scratch.state_dict().items()} == {k: v.shape for k, v in a.state_dict().items()}  # 7x7 stem kept
    assert not torch.equal(scratch.layer1[0].conv1.weight, a.layer1[0].conv1.weight)


# ----------------------------------------------------------------------------- Frankle & Carbin's iterative form

def _earlier(tiny, made: list):
    """A context's ``earlier``: the step applied to the trained model in a context of its own (as a
    study makes the round before), recursively; ``made`` lists the rounds made."""
    def earlier(step):
        model, ctx = _trained(), _ctx(tiny, {}, epochs=1)
        ctx.earlier = _earlier(tiny, made)
        step.apply(model, ctx)
        made.append(step.params.rounds)
        return model, ctx.details
    return earlier


def test_round_two_prunes_the_round_one_ticket_again_and_resets_its_survivors(tiny):
    made: list[int] = []
    round1, _ = _earlier(tiny, made)(_step(sparsity=0.5, epochs=1, scope="global"))
    masks = percentile_masks(prunable(round1), 0.5, "global")  # round 2's mask: half of what round 1 left
    assert all((~masks[k][w == 0]).all() for k, w in prunable(round1).items())  # round 1's zeros stay pruned
    model, seen = _trained(), {}
    ctx = _ctx(tiny, seen, epochs=1)
    ctx.earlier, made[:] = _earlier(tiny, made), []
    step = _step(sparsity=0.5, epochs=1, scope="global", rounds=2)
    step.apply(model, ctx)
    assert made == [1]  # round 2 asked for round 1 (no control), which was made once
    init = _net(0).state_dict()
    for k, keep in masks.items():  # the defining property, at round 2
        assert torch.equal(seen["before"][k][keep], init[k][keep]) and (seen["before"][k][~keep] == 0).all(), k
    rec = ctx.details["ticket"]
    total = sum(m.numel() for m in masks.values())
    assert rec["pruned_share"] == sum(int((~m).sum()) for m in masks.values()) / total
    alive = total - 240  # the trained model's zeros (an earlier step's) do not count
    for _ in range(2):
        alive -= round(0.5 * alive)
    assert rec["pruned_share"] == (total - alive) / total and step.level_value() == 0.75 and rec["rounds"] == 2
    assert rec["unpruned_test_acc"] == made_round1_unpruned(tiny)  # the dense model's, as round 1 measured it


def made_round1_unpruned(tiny) -> float:
    ctx = _ctx(tiny, {}, epochs=1)
    return ctx.accuracy(_trained(), "test")


def test_round_two_controls_branch_off_the_tickets_chain(tiny):
    round1, _ = _earlier(tiny, [])(_step(sparsity=0.5, epochs=1))
    ticket = percentile_masks(prunable(round1), 0.5)
    model, seen = _trained(), {}
    ctx = _ctx(tiny, seen, epochs=1)
    ctx.earlier = _earlier(tiny, [])
    _step(sparsity=0.5, epochs=1, rounds=2, control="random_mask").apply(model, ctx)
    regrown = 0
    for k, keep in ticket.items():
        alive = seen["before"][k] != 0
        assert int(alive.sum()) == int(keep.sum()), k  # round 2's count per kernel
        regrown += int((alive & (prunable(round1)[k] == 0)).sum())
    assert regrown > 0  # drawn among all the weights, not only round 1's survivors
    model, seen = _trained(), {}
    ctx = _ctx(tiny, seen, epochs=1)
    ctx.earlier = _earlier(tiny, [])
    _step(sparsity=0.5, epochs=1, rounds=2, control="random_init").apply(model, ctx)
    for k, keep in ticket.items():
        assert torch.equal(seen["before"][k] != 0, keep & (_net(derived_seed(1000, "ticket random_init")).state_dict()[k] != 0)), k


def test_rewinding_resets_to_the_replayed_early_weights_and_says_when_the_replay_differs(tiny):
    early = _trained(seed=5)  # stands for the baseline after epoch 1
    notes: list[str] = []
    model, seen = _trained(), {}
    ctx = _ctx(tiny, seen, epochs=1)
    ctx.note = notes.append
    ctx.rewind = lambda epoch: (early, {"epoch": epoch, "replay_matches_baseline": False})
    masks = percentile_masks(prunable(_trained()), 0.5)
    _step(sparsity=0.5, epochs=1, rewind_epoch=1).apply(model, ctx)
    for k, keep in masks.items():
        assert torch.equal(seen["before"][k][keep], early.state_dict()[k][keep]), k
    assert torch.equal(seen["before"]["bn.running_mean"], early.bn.running_mean)
    assert ctx.details["ticket"]["rewind"]["epoch"] == 1 and any("does not reproduce" in n for n in notes)
    with pytest.raises(ValueError, match="TuneContext.earlier"):
        _step(sparsity=0.5, epochs=1, rounds=2).apply(_trained(), _ctx(tiny, {}))


def test_iterative_recipes_keep_one_round_ids_and_name_their_level():
    one = parse_recipe([{"ticket": {"sparsity": 0.2}}])
    assert one.to_config() == [{"ticket": {"sparsity": 0.2, "control": "none", "epochs": None, "scope": "per_tensor"}}]
    three = parse_recipe([{"ticket": {"sparsity": 0.2, "rounds": 3, "scope": "global", "rewind_epoch": 1}}])
    assert three.label == "ticket 48.8% (3 rounds of 20%) global rewind 1" and abs(three.level - 0.488) < 1e-9
    assert three.technique == "ticket"


def test_a_tiny_study_makes_each_round_once_and_replays_the_baseline_exactly(tiny_overrides, monkeypatch):
    """Round 2 alone makes round 1 on the way (and keeps it); adding round 1 as a variant reuses it;
    the rewind point is a replay whose per-epoch figures equal the baseline's (CPU, fp32)."""
    import faircompress.variants as variants_mod
    from faircompress.study import run_study

    fits: list[int] = []
    real = variants_mod.fit
    monkeypatch.setattr(variants_mod, "fit", lambda model, data, cfg, *a, **kw: fits.append(cfg.epochs) or real(model, data, cfg, *a, **kw))
    ticket = {"sparsity": 0.5, "scope": "global", "epochs": 1, "rewind_epoch": 1}
    over = {**tiny_overrides, "model": {"name": "pca_mlp", "params": {"hidden": 30}}, "evaluation.latency": False, "repeats": 1}
    run_study(load_config(None, {**over, "recipes": [[{"ticket": {**ticket, "rounds": 2}}]]}))
    assert fits == [1, 1, 1, 1]  # round 1 (replay, retraining), then round 2 (replay, retraining)
    run_study(load_config(None, {**over, "recipes": [[{"ticket": ticket}], [{"ticket": {**ticket, "rounds": 2}}]]}))
    assert len(fits) == 4  # round 1 was kept: its variant only exports and measures it
    from faircompress.report.lottery import ticket_sparsity_curves, ticket_table
    from faircompress.report.results import load_results

    store = ResultStore.open_existing(Path(over["output_dir"]))
    runs, res = store.runs(), load_results(store)
    store.close()
    table = ticket_table(res)
    assert list(table.rounds) == [1, 2] and list(table.rewind_epoch) == [1, 1] and table.pruned_share.iloc[1] > 0.74
    assert ticket_sparsity_curves(res, Path(over["output_dir"]) / "figures").exists()
    assert (runs.status == "finished").all()
    recs = {r.level: json.loads(r.details_json)["steps"]["ticket"] for r in runs[runs.technique == "ticket"].itertuples()}
    assert set(recs) == {0.5, 0.75}
    assert all(rec["rewind"]["replay_matches_baseline"] for rec in recs.values())
    assert recs[0.75]["unpruned_test_acc"] == recs[0.5]["unpruned_test_acc"] and recs[0.75]["rounds"] == 2
    assert abs(recs[0.75]["pruned_share"] - 0.75) < 0.01
