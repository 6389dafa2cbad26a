"""pca_mlp (Dixit et al.'s SFEW model): the LPQ and PHOG descriptors' defining properties, the torch
forward against the NumPy reference, the PCA fitted on training images only and kept by checkpoints,
and a tiny study through every default technique family."""
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import TINY_DATA
from onnx import numpy_helper

from faircompress.compress.pruning import prunable
from faircompress.config import load_config
from faircompress.data import descriptors as D
from faircompress.data.synthetic import SyntheticParams, generate
from faircompress.models import build_model
from faircompress.models.pca_mlp import PHOGDescriptor
from faircompress.store import ResultStore
from faircompress.study import run_study
from faircompress.train import fit_to_training, load_checkpoint, save_checkpoint

SIDE = 48


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    return generate(SyntheticParams(**{**TINY_DATA, "image_size": SIDE})).images[:12]


@pytest.fixture(scope="module")
def tiny():
    return generate(SyntheticParams(**TINY_DATA))


def _noise(n: int = 4, channels: int = 1, side: int = SIDE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, channels, side, side)).astype(np.uint8)


def _model(**params) -> torch.nn.Module:
    params = {"in_channels": 1, "num_classes": 8, "input_size": SIDE} | params
    return build_model("pca_mlp", **params).eval()


# --- LPQ ---------------------------------------------------------------------------------------
def test_lpq_kernels_are_the_stft_of_the_window_at_the_four_frequencies():
    """Each kernel pair gives Re and Im of F(u) = sum_y f(y) exp(-2 pi i u.y) over the centred window,
    u = (1/M, 0), (0, 1/M), (1/M, 1/M), (1/M, -1/M): here from NumPy's FFT of the window."""
    m, r = 7, 3
    patch = np.random.default_rng(1).uniform(-1, 1, (m, m))
    response = (D.lpq_filters(m) * patch).sum(axis=(1, 2))
    spectrum = np.fft.fft2(patch)  # [k_row, k_col], window indices 0..M-1 = offsets -r..r
    expected = []
    for k_row, k_col in ((0, 1), (1, 0), (1, 1), (-1, 1)):
        f = spectrum[k_row, k_col] * np.exp(2j * np.pi * (k_row + k_col) * r / m)  # back to centred offsets
        expected += [f.real, f.imag]
    assert np.allclose(response, expected, atol=0.05)  # kernels rounded to 2^-10
    assert np.all(D.lpq_filters(m).sum(axis=(1, 2)) == 0)  # a flat patch gives exactly zero


def _lbp_histogram(images: np.ndarray) -> np.ndarray:
    """The basic 3x3 LBP (Ojala et al. 2002): bit p set where neighbour p >= the centre."""
    g = D.grey(images)
    c = g[:, 1:-1, 1:-1]
    h, w = c.shape[1:]
    codes = np.zeros(c.shape, np.int64)
    for bit, (dy, dx) in enumerate([(-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1)]):
        codes |= (g[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] >= c).astype(np.int64) << bit
    return D.code_histogram(codes)


def _gaussian_blur(images: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """A centrally symmetric PSF, separable, border replicated, back to uint8."""
    r = 2
    k = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma**2))
    k /= k.sum()
    h, w = images.shape[2:]
    g = np.pad(images.astype(np.float64), ((0, 0), (0, 0), (r, r), (r, r)), mode="edge")
    g = sum(k[i] * g[:, :, i : i + h, :] for i in range(2 * r + 1))
    g = sum(k[i] * g[:, :, :, i : i + w] for i in range(2 * r + 1))
    return np.round(g).astype(np.uint8)


def test_lpq_histogram_changes_far_less_under_blur_than_lbp(faces):
    for images in (faces, _noise(8)):
        blurred = _gaussian_blur(images)
        lpq_change = np.abs(D.lpq_histogram(images) - D.lpq_histogram(blurred)).sum(axis=1)
        lbp_change = np.abs(_lbp_histogram(images) - _lbp_histogram(blurred)).sum(axis=1)
        assert np.all(lpq_change < 0.6 * lbp_change), (lpq_change, lbp_change)  # measured: 0.3-0.45 of it
        assert lbp_change.min() > 0.5  # the blur is strong enough to matter


def test_a_flat_image_has_lpq_code_0_everywhere_and_no_phog():
    flat = np.full((1, 1, SIDE, SIDE), 90, np.uint8)
    assert D.lpq_histogram(flat)[0, 0] == 1.0
    assert not D.phog(flat).any()
    lpq, phog = _model().descriptors(torch.from_numpy(flat).float())
    assert lpq[0, 0] == pytest.approx(1.0) and not phog.any()


# --- PHOG --------------------------------------------------------------------------------------
def test_phog_level_0_is_the_whole_image_orientation_histogram(faces):
    bins, levels = 8, 3
    gx, gy = D.gradients(faces)
    theta = np.degrees(np.arctan2(gy, gx)) % 360
    whole = np.stack([np.histogram(t, bins=bins, range=(0, 360), weights=np.hypot(x, y))[0]
                      for t, x, y in zip(theta, gx, gy)])
    whole /= whole.sum(axis=1, keepdims=True)
    desc = D.phog(faces, bins, levels)
    assert desc.shape == (len(faces), D.phog_size(bins, levels))
    assert np.allclose(desc[:, :bins] * (levels + 1), whole)  # each level holds 1 / (L + 1) of the total
    level1 = desc[:, bins : 5 * bins].reshape(len(faces), 4, bins)
    assert np.allclose(level1.sum(axis=1), desc[:, :bins])  # the four quadrants make up the whole image


def test_orientation_bins_on_their_boundaries_match_atan2():
    """Integer gradients at exactly 0, 45, ..., 315 degrees (and between) land in the same bin in the
    torch comparisons as in atan2's; 180 degrees folds opposite gradients together."""
    gx = np.array([1, 1, 0, -1, -1, -1, 0, 1, 3, -2, 5], dtype=np.float64)  # a zero gradient has no weight: left out
    gy = np.array([0, 1, 1, 1, 0, -1, -1, -1, 1, 7, -4], dtype=np.float64)
    for bins, angle in ((8, 360), (4, 180)):
        phog = PHOGDescriptor(SIDE, bins, 1, angle)
        t = lambda a: torch.tensor(a, dtype=torch.float32)[None, None, None, :]  # noqa: E731
        onehot = phog._onehot(t(gx), t(gy))[0, :, 0].numpy()  # (bins, 11)
        assert np.all(onehot.sum(axis=0) == 1)
        assert list(onehot.argmax(axis=0)) == list(D.orientation_bins(gx, gy, bins, angle))
    assert list(D.orientation_bins(gx[:8], gy[:8], 8, 360)) == list(range(8))


# --- torch forward against the reference -------------------------------------------------------
@pytest.mark.parametrize("params,channels", [({}, 1), ({"phog_bins": 9, "phog_angle": 180, "phog_levels": 2, "lpq_window": 5}, 1), ({}, 3)])
def test_torch_descriptors_equal_the_numpy_reference(faces, params, channels):
    images = np.concatenate([np.repeat(faces, channels, axis=1), _noise(3, channels)])
    model = _model(in_channels=channels, **params)
    with torch.no_grad():
        lpq, phog = model.descriptors(torch.from_numpy(images).float())
    window = params.get("lpq_window", 7)
    assert np.allclose(lpq.numpy(), D.lpq_histogram(images, window), rtol=0, atol=1e-7)  # one code = 1/1764
    ref = D.phog(images, params.get("phog_bins", 8), params.get("phog_levels", 3), params.get("phog_angle", 360))
    assert np.allclose(phog.numpy(), ref, rtol=1e-5, atol=1e-8)


def test_bf16_autocast_leaves_the_features_in_float32(faces):
    model = _model()
    x = torch.from_numpy(faces).float()
    with torch.no_grad():
        plain = model.features(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cast = model.features(x)
    assert cast.dtype == torch.float32 and torch.equal(cast, plain)


def test_bad_parameters_name_themselves():
    for params, message in [({"lpq_window": 9}, "lpq_window"), ({"phog_bins": 9}, "phog_bins must be even"),
                            ({"phog_angle": 90}, "phog_angle"), ({"input_size": 6}, "too small"), ({"in_channels": 2}, "in_channels"),
                            ({"components": 300}, "components"), ({"phog_levels": 6}, "phog_levels 6 needs images of at least 64")]:
        with pytest.raises(ValueError, match=message):
            _model(**params)


# --- the fit hook --------------------------------------------------------------------------------
def _fitted_buffers(data, selection: str = "val") -> dict[str, torch.Tensor]:
    model = build_model("pca_mlp", in_channels=1, num_classes=data.num_classes, input_size=data.image_size[0])
    assert fit_to_training(model, data, selection)
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("lpq_", "phog_"))}


def _with_changed_images(data, split: str):
    changed = data.take(np.arange(len(data)))
    idx = changed.indices(split)[:3]
    assert len(idx), split
    changed.images[idx] = 255 - changed.images[idx]
    return changed


def test_pca_and_scaling_are_fitted_on_the_training_images_only(tiny):
    fitted = _fitted_buffers(tiny)
    for split in ("test", "val"):  # neither is seen (val selects the best epoch)
        assert all(torch.equal(fitted[k], v) for k, v in _fitted_buffers(_with_changed_images(tiny, split)).items())
    assert not all(torch.equal(fitted[k], v) for k, v in _fitted_buffers(_with_changed_images(tiny, "train")).items())
    # the authors' protocol trains on train + val, so the fit sees val too
    on_test = _fitted_buffers(tiny, "test")
    assert not all(torch.equal(on_test[k], v) for k, v in _fitted_buffers(_with_changed_images(tiny, "val"), "test").items())
    assert not torch.equal(fitted["lpq_weight"], torch.eye(5, 256))  # fitted, not the unfitted default


def test_features_are_each_block_standardised_principal_components(tiny):
    from sklearn.decomposition import PCA

    model = _model(num_classes=tiny.num_classes, input_size=tiny.image_size[0])
    fit_to_training(model, tiny, "val")
    train = tiny.images[tiny.indices("train")]
    with torch.no_grad():
        feats = model.features(torch.from_numpy(train).float()).double().numpy()
    for block, desc in ((feats[:, :5], D.lpq_histogram(train)), (feats[:, 5:], D.phog(train))):
        assert abs(block.mean()) < 1e-5 and abs(block.std() - 1) < 1e-5  # one mean and sd per block (Dixit et al. 2.2)
        scores = PCA(5, svd_solver="full").fit_transform(desc)  # "auto" may pick the randomized solver: unseeded
        scores /= scores.std()
        assert np.allclose(np.abs(block), np.abs(scores), atol=1e-3)  # the same components, up to sign


def test_fitted_state_survives_a_checkpoint_and_only_the_mlp_is_trainable(tiny, tmp_path):
    model = _model(num_classes=tiny.num_classes, input_size=tiny.image_size[0])
    fit_to_training(model, tiny, "val")
    save_checkpoint(model, tmp_path / "m.safetensors")
    again = _model(num_classes=tiny.num_classes, input_size=tiny.image_size[0])
    load_checkpoint(again, tmp_path / "m.safetensors")
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    x = torch.from_numpy(tiny.images[:4]).float()
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert {n for n, _ in model.named_parameters()} == {"hidden.weight", "hidden.bias", "out.weight", "out.bias"}
    assert set(prunable(model)) == {"hidden.weight", "out.weight"}


# --- a tiny study ------------------------------------------------------------------------------------
RECIPES = [[{"prune": {"sparsity": 0.5, "epochs": 1}}], [{"quantize": {"mode": "int8-weights"}}], [{"cluster": {"clusters": 4, "epochs": 1}}]]


def _initializers(path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def test_a_study_with_pca_mlp_runs_every_technique_and_its_files_run_in_onnxruntime(tiny_overrides, tiny):
    cfg = load_config(None, {**tiny_overrides, "model": {"name": "pca_mlp", "params": {"hidden": 30}}, "train.epochs": 1,
                             "evaluation.memory": False, "evaluation.latency": False, "recipes": RECIPES, "repeats": 1})
    run_study(cfg)
    study = Path(cfg.output_dir)
    store = ResultStore.open_existing(study)
    runs = store.runs().set_index("label")
    assert (runs.status == "finished").all(), runs[["status", "error"]]
    variants = list(runs[runs.kind == "variant"].index)  # the fp32 export and the three recipes
    assert len(variants) == 4 and all(sum(word in v for v in variants) == 1 for word in ("prune", "int8", "cluster"))
    baseline = _model(num_classes=tiny.num_classes, input_size=tiny.image_size[0])
    load_checkpoint(baseline, study / runs[runs.kind == "baseline"].artefact.iloc[0])
    fitted_lpq = baseline.lpq_weight.numpy()
    assert not np.array_equal(fitted_lpq, np.eye(5, 256))  # the baseline ran the fit hook
    test = tiny.images[tiny.indices("test")].astype(np.float32)
    for label, run in runs[runs.kind == "variant"].iterrows():
        path = study / run.artefact
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        y_pred = sess.run(None, {sess.get_inputs()[0].name: test})[0].argmax(1)
        assert list(y_pred) == list(store.predictions(run.run_id).y_pred), label  # the file is what was measured
        inits = _initializers(path)
        if "int8" in label:  # the fixed PCA projections are >= 1,024 elements: int8; the MLP's kernels stay float
            assert inits["lpq_weight_int8"].dtype == np.int8 and inits["hidden.weight"].dtype == np.float32
        else:  # fine-tuned from the baseline checkpoint: the fitted PCA came with it
            assert np.array_equal(inits["lpq_weight"], fitted_lpq)
        if "prune" in label:
            assert (inits["hidden.weight"] == 0).mean() == 0.5 and (inits["out.weight"] == 0).mean() == 0.5
        if "cluster" in label:
            assert len(np.unique(inits["hidden.weight"])) <= 4
    store.close()
