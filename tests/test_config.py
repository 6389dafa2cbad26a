import re
from pathlib import Path

import pytest
import yaml

from faircompress.config import ConfigError, StudyConfig, dump_config, load_config
from faircompress.plan import plan
from fakes import write_imagenet_resnet18

ROOT = Path(__file__).resolve().parents[1]


def test_default_config_file_matches_built_in_default():
    from_file = load_config(ROOT / "configs" / "synthetic.yaml")
    assert from_file == load_config(None) == StudyConfig()


def test_dataset_params_are_normalised_to_the_full_set():
    cfg = load_config(None)
    assert cfg.dataset.params["subjects"] == 123 and cfg.dataset.params["image_size"] == 48


@pytest.mark.parametrize(
    "text,field,line",
    [
        ("train:\n  epochs: 0\n", "train.epochs", 2),
        ("train:\n  epochs: ten\n", "train.epochs", 2),
        ("train:\n  lr: 0.001\n  colour: red\n", "train.colour", 3),
        ("seeds: []\n", "seeds", 1),
        ("model:\n  name: resnet\n", "model", 1),
        ("dataset:\n  name: synthetic\n  params:\n    subjects: 2\n", "dataset.params", 3),
        ("dataset:\n  name: nowhere\n", "dataset.name", 2),
        ("train:\n  selection: holdout\n", "train.selection", 2),
        ("train:\n  lr: 0.001\n  min_lr: 0.01\n", "train", 1),
    ],
)
def test_bad_config_names_field_and_line(tmp_path, text, field, line):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert str(f) in msg and f"{field} (line {line})" in msg


def test_unreadable_and_non_mapping_configs(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    f = tmp_path / "list.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(f)
    f.write_text("train: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)


def test_overrides_apply_dotted_fields():
    cfg = load_config(None, {"train.epochs": 3, "dataset.params": {"subjects": 10, "sequences": 20}})
    assert cfg.train.epochs == 3 and cfg.dataset.params["subjects"] == 10


def test_all_shipped_configs_validate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the weights a config names relative to where it runs (dixit-sfew's ResNet-18)
    write_imagenet_resnet18(tmp_path / "resnet18-f37072fd.pth")
    for f in (ROOT / "configs").glob("*.yaml"):
        load_config(f)
        assert yaml.safe_load(f.read_text())


def test_the_sfew_papers_config_is_its_two_models_with_their_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_imagenet_resnet18(tmp_path / "resnet18-f37072fd.pth")
    resnet, mlp = load_config(ROOT / "configs" / "dixit-sfew.yaml").studies()
    assert (resnet.train.lr, resnet.train.batch_size, resnet.train.epochs) == (0.001, 8, 25)
    assert (mlp.train.lr, mlp.train.batch_size, mlp.train.epochs, mlp.model.params["hidden"]) == (0.001, 1, 1200, 30)
    assert resnet.model.params_sha256 and resnet.dataset.params["image_size"] == 224 and resnet.dataset.params["channels"] == 3
    assert resnet.dataset.augment.copies == 2 and not resnet.train.augment_flip and resnet.train.augment_rotation_deg == 0


def test_config_not_utf8_names_line_and_column_and_a_bom_stays_accepted(tmp_path):
    f = tmp_path / "latin1.yaml"
    f.write_bytes(b"# \xc3\xa9tude\ntrain:\n  epochs: 2  # caf\xe9\n")  # UTF-8 'é' on line 1, Latin-1 'é' on line 3
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(e.value) == f"{f} line 3: not UTF-8 (byte 0xE9 at column 19)"
    f.write_bytes(b"\xef\xbb\xbftrain:\n  epochs: 2\n")
    assert load_config(f).train.epochs == 2


@pytest.mark.parametrize("text", ["", "  \n\n", "# nothing yet\n", "null\n", "~\n"])
def test_empty_config_is_refused_not_run_as_the_default_study(tmp_path, text):
    f = tmp_path / "empty.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(e.value) == f"{f}: the config is empty (to run the built-in default study, give no config)"


@pytest.mark.parametrize(
    "text,detail",
    [
        ("train:\n  epochs: 2\nseeds: [0]\ntrain:\n  lr: 0.1\n", "key 'train' is given twice (lines 1 and 4)"),
        ("train:\n  epochs: 2\n  lr: 0.1\n\n\n\n  epochs: 3\n", "key 'epochs' is given twice (lines 2 and 7) under train"),
        ("train: {epochs: 2, epochs: 3}\n", "key 'epochs' is given twice (line 1) under train"),
        ("recipes:\n  - [{prune: {sparsity: 0.5}}]\n  - - prune:\n        sparsity: 0.5\n        sparsity: 0.6\n",
         "key 'sparsity' is given twice (lines 4 and 5) under recipes.1.0.prune"),
    ],
)
def test_key_given_twice_names_the_key_both_lines_and_where(tmp_path, text, detail):
    f = tmp_path / "twice.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(e.value) == f"{f}: {detail}"


def test_a_merge_key_may_still_be_overridden(tmp_path):
    f = tmp_path / "merge.yaml"
    f.write_text("train:\n  <<: {epochs: 2, lr: 0.01}\n  epochs: 3\n")
    cfg = load_config(f)
    assert cfg.train.epochs == 3 and cfg.train.lr == 0.01


def test_an_empty_recipe_is_refused_naming_its_line(tmp_path):
    f = tmp_path / "recipes.yaml"
    f.write_text("recipes:\n  - [{prune: {sparsity: 0.5}}]\n  - []\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert ("recipes.1 (line 3): an empty recipe is the fp32 baseline, which every study measures already; remove it"
            in str(e.value))


def test_a_models_grid_is_one_study_per_model_labelled_by_what_tells_them_apart(tmp_path):
    cfg = load_config(None, {"output_dir": str(tmp_path / "grid"), "name": "g", "models": [
        {"name": "pca_mlp", "params": {"hidden": 30}}, {"name": "pca_mlp", "params": {"hidden": 50}, "train": {"lr": 0.01}},
        {"name": "paper_cnn", "label": "cnn", "dataset": {"params": {"image_size": 32}}}]})
    studies = cfg.studies()
    assert [s.name for s in studies] == ["g-pca_mlp-hidden=30", "g-pca_mlp-hidden=50", "g-cnn"]
    assert [s.output_dir for s in studies] == [tmp_path / "grid" / x for x in ("pca_mlp-hidden=30", "pca_mlp-hidden=50", "cnn")]
    assert [s.train.lr for s in studies] == [5e-4, 0.01, 5e-4]  # the entry's own settings, over the grid's
    assert [s.dataset.params["image_size"] for s in studies] == [48, 48, 32]
    assert all(s.models is None and s.recipes == cfg.recipes and s.seeds == cfg.seeds for s in studies)
    # each model's study is the one study it would be on its own: its runs' ids are those of that study
    alone = load_config(None, {"output_dir": str(tmp_path / "x"), "model": {"name": "pca_mlp", "params": {"hidden": 30}}})
    assert [r.run_id for r in plan(studies[0])] == [r.run_id for r in plan(alone)]
    assert "models" not in yaml.safe_load(dump_config(alone))  # a one-model study is stored as before


@pytest.mark.parametrize("text, detail", [
    ("model: {name: paper_cnn}\nmodels: [{name: paper_cnn, label: a}, {name: pca_mlp}]\n", "give model (one) or models"),
    ("models:\n  - {name: pca_mlp}\n  - {name: pca_mlp}\n", "models (line 1): models 0 and 1 would both be labelled 'pca_mlp'"),
    ("models:\n  - {name: pca_mlp}\n  - {name: paper_cnn, train: {lr: 7}}\n", "models (line 1): models.1 (paper_cnn): train.lr"),
    ("models:\n  - {name: pca_mlp}\n  - {name: paper_cnn, label: a/b}\n", "models.1.label (line 3): label 'a/b' names a folder"),
    ("models: [{name: pca_mlp}]\n", "models (line 1): List should have at least 2 items"),
])
def test_a_bad_models_grid_names_the_entry(tmp_path, text, detail):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=re.escape(detail)):
        load_config(tmp_path / "c.yaml")
