import numpy as np
import pytest
import torch
from conftest import TINY_DATA

from faircompress.config import TrainConfig, load_config
from faircompress.data.synthetic import SyntheticParams, generate
from faircompress.models import build_model
from faircompress.train import (DeviceError, augment, fit, load_checkpoint, predict, require_device, resolve_device,
                                resolve_precision, save_checkpoint)


@pytest.fixture(scope="module")
def tiny():
    return generate(SyntheticParams(**TINY_DATA))


def _model(ds, seed=0):
    torch.manual_seed(seed)
    return build_model("paper_cnn", in_channels=ds.channels, num_classes=ds.num_classes, input_size=ds.image_size[0])


def test_augment_flips_and_rotates_whole_batches():
    x = torch.zeros(64, 1, 16, 16)
    x[:, :, :, :4] = 1.0  # a bar on the left
    g = torch.Generator().manual_seed(0)
    flipped = augment(x, flip=True, rotation_deg=0, gen=g)
    right = flipped[:, 0, :, -4:].mean((1, 2)) == 1
    assert 10 < right.sum() < 54  # about half flipped
    assert torch.equal(flipped[~right], x[~right])
    rot = augment(x, flip=False, rotation_deg=10, gen=g)
    assert rot.shape == x.shape and not torch.equal(rot, x)
    assert (rot - x).abs().mean() < 0.2  # small rotations only


def test_training_learns_and_keeps_the_best_epoch(tiny):
    torch.manual_seed(0)
    m = _model(tiny)
    cfg = TrainConfig(epochs=4, batch_size=8, precision="fp32", device="cpu")
    res = fit(m, tiny, cfg, seed=0)
    assert len(res.history) == 4 and 1 <= res.best_epoch <= 4
    assert res.best_sel_acc == max(h.sel_acc for h in res.history)
    # the model holds the best epoch's weights: its selection accuracy is that epoch's
    sel = tiny.indices("val")
    acc = (predict(m, tiny.images[sel]) == tiny.labels[sel]).mean()
    assert acc == pytest.approx(res.best_sel_acc, abs=1e-6)
    assert res.history[-1].train_loss < res.history[0].train_loss


def test_test_selection_trains_on_train_and_val(tiny):
    m = _model(tiny)
    res = fit(m, tiny, TrainConfig(epochs=1, batch_size=8, selection="test", precision="fp32", device="cpu"), seed=0)
    assert res.train_images == len(tiny.indices("train", "val")) and res.selection == "test"


def test_interrupted_training_resumes_to_the_same_weights(tiny, tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=8, precision="fp32", device="cpu")
    full = _model(tiny)
    fit(full, tiny, cfg, seed=1)

    class Stop(Exception):
        pass

    def die_after_2(log):
        if log.epoch == 2:
            raise Stop

    state = tmp_path / "state.safetensors"
    first = _model(tiny)
    with pytest.raises(Stop):
        fit(first, tiny, cfg, seed=1, state_path=state, on_epoch=die_after_2)
    assert state.exists()
    resumed = _model(tiny)  # fresh process, fresh model: everything comes from the state file
    res = fit(resumed, tiny, cfg, seed=1, state_path=state)
    assert [h.epoch for h in res.history] == [1, 2, 3]
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), k


def test_checkpoint_round_trip(tiny, tmp_path):
    m = _model(tiny)
    save_checkpoint(m, tmp_path / "m.safetensors", {"note": "x"})
    m2 = _model(tiny, seed=5)
    assert load_checkpoint(m2, tmp_path / "m.safetensors") == {"note": "x"}
    x = torch.from_numpy(tiny.images[:4]).float()
    m.eval(), m2.eval()
    assert torch.equal(m(x), m2(x))


def test_precision_resolution():
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert resolve_precision("auto", torch.device("cpu")) in ("bf16", "fp32")


@pytest.mark.parametrize("native, expected", [(True, "training precision: bf16 on cpu (precision auto: this CPU computes bf16 natively"),
                                              (False, "training precision: fp32 on cpu (precision auto: this CPU has no native bf16")])
def test_the_precision_note_says_what_auto_chose_and_why(monkeypatch, native, expected):
    import faircompress.train as train_mod

    monkeypatch.setattr(train_mod, "cpu_supports_bf16", lambda: native)
    assert train_mod.precision_note("auto", torch.device("cpu")).startswith(expected)
    assert train_mod.precision_note("fp32", torch.device("cpu")) == "training precision: fp32 on cpu (as train.precision sets it)"


def test_cuda_on_a_machine_without_it_stops_before_the_study_directory_is_made(tmp_path, monkeypatch):
    from faircompress.study import run_study

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_config(None, {"train.device": "cuda", "output_dir": str(tmp_path / "study"), "dataset.params": TINY_DATA,
                             "recipes": []})  # the config itself stays valid on any machine
    message = r"^train.device is 'cuda' but this machine has no CUDA device \(torch.cuda.is_available\(\) is False\); use --device cpu or auto$"
    with pytest.raises(DeviceError, match=message):
        run_study(cfg)
    assert not (tmp_path / "study").exists()
    with pytest.raises(DeviceError, match=message):
        resolve_device("cuda")
    require_device("cpu")
    require_device("auto")
    assert resolve_device("auto") == torch.device("cpu")


def test_bf16_autocast_trains_on_cpu(tiny):
    m = _model(tiny)
    res = fit(m, tiny, TrainConfig(epochs=1, batch_size=8, precision="bf16", device="cpu"), seed=0)
    assert np.isfinite(res.history[0].train_loss) and res.precision == "bf16"


def test_stale_training_state_is_discarded_not_fatal(tiny, tmp_path):
    state = tmp_path / "state.safetensors"
    state.write_bytes(b"garbage")
    cfg = TrainConfig(epochs=1, batch_size=8, precision="fp32", device="cpu")
    with pytest.warns(UserWarning, match="training from epoch 1"):
        res = fit(_model(tiny), tiny, cfg, seed=0, state_path=state)
    assert [h.epoch for h in res.history] == [1]


def test_learning_rate_drops_when_keras_drops_it():
    """Keras: an epoch that does not improve the monitored loss by 1e-4 adds one to `wait`; the rate
    drops once `wait >= patience`. With patience 2 and a flat loss that is after epoch 3."""
    import torch

    from faircompress.train import plateau_scheduler

    for patience, drops_after in [(2, 3), (1, 2), (0, 2), (3, 4)]:
        opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        sched = plateau_scheduler(opt, TrainConfig(plateau_patience=patience, min_lr=0))
        lrs = []
        for loss in [1.0, 1.0, 1.0, 1.0, 1.0]:
            sched.step(loss)
            lrs.append(opt.param_groups[0]["lr"])
        first_drop = next(i + 1 for i, lr in enumerate(lrs) if lr < 1e-3)
        assert first_drop == drops_after, (patience, lrs)
