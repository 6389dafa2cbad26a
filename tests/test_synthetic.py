import numpy as np
import pytest
from conftest import TINY_DATA
from pydantic import ValidationError

from faircompress.data.dataset import SPLITS
from faircompress.data.synthetic import CKPLUS_CLASSES, RAFDB_CLASSES, GroupBias, SyntheticParams, generate


@pytest.fixture(scope="module")
def default_ds():
    return generate(SyntheticParams())


def test_default_is_ckplus_like(default_ds):
    ds = default_ds
    assert ds.images.shape == (327 * 4, 1, 48, 48) and ds.images.dtype == np.uint8
    assert ds.class_names == CKPLUS_CLASSES
    subjects = np.unique(ds.subjects)
    assert len(subjects) == 123
    first = {s: ds.attributes["gender"][ds.subjects == s][0] for s in subjects}
    assert sorted(np.bincount(list(first.values()))) == [39, 84]
    # one neutral and three peak frames per sequence
    assert (ds.labels[::4] == CKPLUS_CLASSES.index("neutral")).all()
    assert (ds.labels.reshape(-1, 4)[:, 1:] == ds.labels.reshape(-1, 4)[:, 1:2]).all()
    assert len(set(ds.labels.tolist())) == 8


def test_subject_attributes_persist_and_splits_are_subject_disjoint(default_ds):
    ds = default_ds
    for attr, codes in ds.attributes.items():
        for s in np.unique(ds.subjects)[:30]:
            assert len(np.unique(codes[ds.subjects == s])) == 1, attr
    sets = [set(ds.subjects[ds.split == i]) for i in range(len(SPLITS))]
    assert all(sets) and not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    for i in range(len(SPLITS)):  # both gender groups in every split
        assert len(np.unique(ds.attributes["gender"][ds.split == i])) == 2


def test_same_params_give_identical_arrays_and_seed_changes_them():
    a, b = generate(SyntheticParams(**TINY_DATA)), generate(SyntheticParams(**TINY_DATA))
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert all(np.array_equal(a.attributes[k], b.attributes[k]) for k in a.attributes)
    c = generate(SyntheticParams(**{**TINY_DATA, "seed": 4}))
    assert not np.array_equal(a.images, c.images)


def test_rafdb_classes_rgb_and_size_options():
    ds = generate(SyntheticParams(**{**TINY_DATA, "classes": "rafdb", "rgb": True, "image_size": 100}))
    assert ds.images.shape[1:] == (3, 100, 100)
    assert ds.class_names == RAFDB_CLASSES
    assert not np.array_equal(ds.images[:, 0], ds.images[:, 2])  # really colour


def test_images_vary_with_expression_not_just_noise():
    p = SyntheticParams(**{**TINY_DATA, "image_size": 48, "nuisance": {"rotation_deg": 0, "shift": 0, "illumination": 0,
                                                                      "noise": 0, "blur_prob": 0, "occluder_prob": 0,
                                                                      "scale": (1, 1), "cue_noise": 0}})
    ds = generate(p)
    # within the face, a sequence's neutral frame differs from its peak frames more than peaks among themselves
    x = ds.images[:, 0, 8:40, 8:40].reshape(-1, 3, 32 * 32).astype(float)
    neutral_vs_peak = np.abs(x[:, 0] - x[:, 2]).mean()
    peak_vs_peak = np.abs(x[:, 1] - x[:, 2]).mean()
    assert neutral_vs_peak > 2 * peak_vs_peak


def test_representation_knob_shifts_image_share():
    base = dict(TINY_DATA, subjects=40, sequences=200)
    plain = generate(SyntheticParams(**base))
    heavy = generate(SyntheticParams(**base, bias={"gender": {"male": {"representation": 5.0}}}))
    share = lambda ds: (ds.attributes["gender"] == 1).mean()  # noqa: E731
    assert share(heavy) > share(plain) + 0.15


def test_label_noise_hits_only_train_and_val_of_the_chosen_group():
    base = dict(TINY_DATA, subjects=40, sequences=200)
    clean = generate(SyntheticParams(**base))
    noisy = generate(SyntheticParams(**base, bias={"gender": {"female": {"label_noise": 0.5}}}))
    changed = clean.labels != noisy.labels
    assert not changed[noisy.split == SPLITS.index("test")].any()
    assert not changed[noisy.attributes["gender"] == 1].any()
    rate = changed[(noisy.attributes["gender"] == 0) & (noisy.split != SPLITS.index("test"))].mean()
    assert 0.35 < rate < 0.65


def test_intensity_knob_makes_group_expressions_subtler():
    from faircompress.data import synthetic as syn

    p = SyntheticParams(**TINY_DATA, bias={"gender": {"male": {"intensity": 0.5}}})
    rng = np.random.default_rng(0)
    subj = syn._sample_subjects(p, rng)
    frames = syn._sample_images(p, subj, rng)
    male = subj["gender"][frames["subject"]] == 1
    peak = frames["intensity"] > 0
    assert frames["intensity"][male & peak].max() <= 0.5 * p.intensity_range[1] + 1e-9
    assert frames["intensity"][~male & peak].min() >= 0.85 * p.intensity_range[0] - 1e-9


@pytest.mark.parametrize(
    "bad",
    [{"subjects": 2}, {"proportions": {"gender": [1, 2, 3]}}, {"proportions": {"height": [1]}},
     {"bias": {"gender": {"other": {"intensity": 0.5}}}}, {"bias": {"age": {"70+": {"label_noise": 1.5}}}},
     {"image_size": 8}, {"sequences": 5, "subjects": 10}, {"colour": True}],
)
def test_bad_parameters_are_rejected(bad):
    with pytest.raises(ValidationError):
        SyntheticParams(**bad)


# --- one test per facial feature: change one trait or cue, see its drawing change -----------------
def _faces(**overrides):
    """Two upright, centred faces at 64 px, identical except where ``overrides`` gives two values."""
    from faircompress.data.synthetic import CUES
    from faircompress.data.synthetic.render import place

    p = SyntheticParams(image_size=64, nuisance={"rotation_deg": 0, "shift": 0, "scale": (1, 1)})
    frame = {"label": np.zeros(2, int), "face_w": np.full(2, 0.55), "face_h": np.full(2, 0.75), "eye_dx": np.full(2, 0.23),
             "eye_size": np.ones(2), "mouth_w": np.full(2, 0.2), "nose_len": np.ones(2), "hair_tone": np.full(2, 0.2),
             "skin_jitter": np.zeros(2), "gender": np.zeros(2, int), "skin_tone": np.zeros(2, int), "age": np.full(2, 2),
             "cues": np.zeros((2, len(CUES)))}
    for key, pair in overrides.items():
        if key in CUES:
            frame["cues"][:, CUES.index(key)] = pair
        else:
            frame[key] = np.asarray(pair)
    return place(p, frame, np.random.default_rng(0))[0]


def test_eyes_open_with_the_eye_open_cue():
    from faircompress.data.synthetic.render import draw_eyes

    f = _faces(eye_open=[0.0, 1.0])
    img = draw_eyes(f, np.zeros((2, 1, 64, 64)))
    bright = (img[:, 0] > 0.5).sum((1, 2))
    assert bright[1] > 1.5 * bright[0] > 0


def test_brows_rise_with_brow_raise():
    from faircompress.data.synthetic.render import brows

    f = _faces(brow_raise=[0.0, 1.0])
    mask = brows(f)
    rows = np.arange(64)[None, :, None]
    centre = (mask * rows).sum((1, 2)) / mask.sum((1, 2))
    assert centre[1] < centre[0] - 2  # higher up the image by more than two pixels


def test_mouth_corners_lift_with_a_smile():
    from faircompress.data.synthetic.render import draw_mouth

    f = _faces(mouth_curve=[-1.0, 1.0])
    dark = draw_mouth(f, np.ones((2, 1, 64, 64)))[:, 0] < 0.6
    def corner_minus_centre(d):  # row of the lip at the mouth's corners minus at its centre (+: corners lower)
        rows = np.arange(64)[:, None]
        mid, side = d[:, 30:34], d[:, 38:41]
        return (rows * side).sum() / side.sum() - (rows * mid).sum() / mid.sum()
    assert corner_minus_centre(dark[0]) > 0 > corner_minus_centre(dark[1])


def test_nose_wrinkles_only_with_the_wrinkle_cue():
    from faircompress.data.synthetic.render import nose

    f = _faces(nose_wrinkle=[0.0, 1.0])
    feat = nose(f, np.zeros((2, 64, 64)))
    assert feat[1].sum() > feat[0].sum() + 5


def test_age_lines_appear_from_middle_age():
    from faircompress.data.synthetic.render import age_lines

    young, old = age_lines(_faces(age=[1, 4]), np.zeros((2, 64, 64)))
    assert young.sum() == 0 and old.sum() > 5


def test_stubble_only_for_adult_male_presentation():
    from faircompress.data.synthetic.render import head_distance, stubble

    f = _faces(gender=[0, 1])
    s = stubble(f, head_distance(f))
    assert s[0].sum() == 0 and s[1].sum() > 1
    baby = _faces(gender=[1, 1], age=[0, 2])
    assert stubble(baby, head_distance(baby))[0].sum() == 0


def test_long_hair_and_jaw_shape_follow_gender_presentation():
    from faircompress.data.synthetic.render import hair_mask, head_distance

    f = _faces(gender=[0, 1])
    hair = hair_mask(f)
    assert hair[0].sum() > hair[1].sum() + 20  # side strands
    jaw = (head_distance(f) < 0)[:, 40:, :].sum((1, 2))  # the lower half of the head
    assert jaw[1] > jaw[0]  # squarer


def test_cue_shift_gives_a_group_its_own_expression_to_cue_table():
    from faircompress.data.synthetic import CUES, _EXPRESSION_CUES, _expression_cues
    from faircompress.data.synthetic.sampling import _sample_subjects

    p = SyntheticParams(bias={"gender": {"male": {"cue_shift": 3}}})
    subj = _sample_subjects(p, np.random.default_rng(0))
    expr = np.array([_EXPRESSION_CUES[c] for c in p.class_names])
    tables = _expression_cues(p, subj, expr)
    happy, curve = p.class_names.index("happy"), CUES.index("mouth_curve")
    female, male = np.flatnonzero(subj["gender"] == 0)[0], np.flatnonzero(subj["gender"] == 1)[0]
    assert tables[female, happy, curve] == 1.0  # smiles with the mouth
    assert tables[male, happy, curve] != 1.0 and tables[male, happy, (curve + 3) % len(CUES)] == 1.0  # through another cue
    assert np.array_equal(tables[female], expr)
    a, b = generate(SyntheticParams(**TINY_DATA)), generate(SyntheticParams(**TINY_DATA, bias={"gender": {"male": {"cue_shift": 2}}}))
    females = a.attributes["gender"] == 0
    assert np.array_equal(a.images[females], b.images[females]) and not np.array_equal(a.images[~females], b.images[~females])


def test_shortcut_gives_a_groups_images_a_background_that_names_the_expression():
    base = {**TINY_DATA, "subjects": 30, "sequences": 60, "image_size": 24}
    plain = generate(SyntheticParams(**base))
    assert np.array_equal(plain.images, generate(SyntheticParams(**base, bias={"gender": {"male": {"shortcut": 0.0}}})).images)
    d = generate(SyntheticParams(**base, bias={"gender": {"female": {"shortcut": 1.0}}}))
    corner = d.images[:, 0, :2, :2].reshape(len(d), -1).mean(axis=1) / 255  # background only
    female = d.attributes["gender"] == 0
    r_female = np.corrcoef(corner[female], d.labels[female])[0, 1]
    r_male = np.corrcoef(corner[~female], d.labels[~female])[0, 1]
    assert r_female > 0.8 and abs(r_male) < 0.5  # an easy cue for one group only
    assert np.array_equal(d.images[~female], plain.images[~female])  # the other group's images are untouched


def test_contrast_makes_a_groups_facial_features_fainter_and_leaves_the_others_alone():
    base = {**TINY_DATA, "subjects": 30, "sequences": 60, "image_size": 32}
    plain = generate(SyntheticParams(**base))
    assert np.array_equal(plain.images, generate(SyntheticParams(**base, bias={"gender": {"male": {"contrast": 1.0}}})).images)
    faint = generate(SyntheticParams(**base, bias={"gender": {"male": {"contrast": 0.3}}}))
    male = plain.attributes["gender"] == 1
    assert np.array_equal(faint.images[~male], plain.images[~male])
    centre = (slice(None), 0, slice(10, 22), slice(8, 24))  # eyes, nose and mouth
    spread = lambda imgs: imgs[centre].reshape(len(imgs), -1).astype(float).std(axis=1).mean()  # noqa: E731
    assert spread(faint.images[male]) < 0.85 * spread(plain.images[male])


def test_expressions_knob_gives_a_group_its_own_expression_mix():
    base = {"subjects": 200, "sequences": 1200, "image_size": 16, "peak_frames": 1}
    rare = {"contempt": 8.0, "fear": 8.0, "sadness": 8.0}
    p = SyntheticParams(**base, bias={"gender": {"male": {"expressions": rare}, "female": {"expressions": {"fear": 0.0}}}})
    d = generate(p)
    peak = d.labels.reshape(-1, 2)[:, 1]  # one expression frame per sequence
    male = d.attributes["gender"].reshape(-1, 2)[:, 1] == 1
    names = [p.class_names.index(c) for c in rare]
    share = lambda m: np.isin(peak[m], names).mean()  # noqa: E731
    assert share(male) > 0.55 and share(~male) < 0.25  # CK+'s mix: 71 of 327 sequences
    assert not (peak[~male] == p.class_names.index("fear")).any()
    # neutral by default: an empty mix is left out of the identity and draws as before
    assert SyntheticParams(bias={"gender": {"male": {"expressions": {}}}}).model_dump() == SyntheticParams(
        bias={"gender": {"male": {}}}).model_dump()
    assert "expressions" not in GroupBias().model_dump()
    plain = generate(SyntheticParams(**TINY_DATA))
    assert np.array_equal(plain.labels, generate(SyntheticParams(**TINY_DATA, bias={"gender": {"male": {"expressions": {}}}})).labels)
    for bad in ({"joy": 2.0}, {"fear": -1.0}, dict.fromkeys(["anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"], 0.0)):
        with pytest.raises(ValidationError):
            SyntheticParams(bias={"gender": {"male": {"expressions": bad}}})


def test_skin_draws_a_groups_faces_darker_and_leaves_the_others_alone():
    base = {**TINY_DATA, "subjects": 30, "sequences": 60, "image_size": 32}
    plain = generate(SyntheticParams(**base))
    assert np.array_equal(plain.images, generate(SyntheticParams(**base, bias={"gender": {"male": {"skin": 1.0}}})).images)
    assert SyntheticParams(bias={"gender": {"male": {"skin": 1.0}}}).model_dump()["bias"]["gender"]["male"] == GroupBias().model_dump()
    dark = generate(SyntheticParams(**base, bias={"gender": {"male": {"skin": 0.5}}}))
    male = plain.attributes["gender"] == 1
    assert np.array_equal(dark.images[~male], plain.images[~male])
    cheeks = (slice(None), 0, slice(17, 20), slice(9, 12))  # skin beside the nose, below the eye
    level = lambda imgs: imgs[cheeks].astype(float).mean()  # noqa: E731
    assert level(dark.images[male]) < 0.7 * level(plain.images[male])
