from pathlib import Path

import pytest
import yaml

from faircompress.config import ConfigError, StudyConfig, load_config

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


def test_all_shipped_configs_validate():
    for f in (ROOT / "configs").glob("*.yaml"):
        load_config(f)
        assert yaml.safe_load(f.read_text())
