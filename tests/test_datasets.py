"""Real-dataset loaders, each on a tiny fake tree in the published layout, quirks included."""
from pathlib import Path

import numpy as np
import pytest
from fakes import make_ckplus, make_fer2013, make_rafdb, make_sfew, write_csv
from typer.testing import CliRunner

from faircompress.cli import app
from faircompress.data import images as images_mod
from faircompress.data.common import report_of
from faircompress.data.dataset import SPLITS, UNKNOWN
from faircompress.data.export import write_image_folder
from faircompress.data.problems import DatasetError
from faircompress.data.registry import DATASETS, identify, load_dataset
from faircompress.data.synthetic import SyntheticParams, generate
from faircompress.data.tables import read_csv


def _split_counts(ds):
    return {s: len(ds.indices(s)) for s in SPLITS}


# --- CK+ -------------------------------------------------------------------------------------------
@pytest.fixture
def ckplus(tmp_path):
    root = tmp_path / "CK+"
    return root, make_ckplus(root, subjects=8, sequences=3, frames=6)


def test_ckplus_takes_first_frame_neutral_and_last_three_labelled(ckplus):
    root, truth = ckplus
    ds = load_dataset("ckplus", {"root": root, "detector": "none"})
    assert len(ds) == truth["images"] and ds.images.shape[1:] == (1, 48, 48)
    assert sorted(ds.labels.tolist()) == sorted(truth["labels"])
    assert (np.bincount(ds.labels, minlength=8)[0]) == truth["labelled"]  # one neutral per labelled sequence
    assert ds.class_names[0] == "neutral" and len(ds.class_names) == 8
    # subject-disjoint splits with a validation split from training subjects
    by_split = {s: set(ds.subjects[ds.indices(s)]) for s in SPLITS}
    assert not (by_split["train"] & by_split["test"]) and not (by_split["val"] & by_split["test"])
    assert not (by_split["train"] & by_split["val"])
    # gender from the authors' annotation: S037 is male, S100 female
    g = ds.attribute_groups["gender"]
    assert ds.attributes["gender"][ds.subjects == "S037"][0] == g.index("male")
    assert ds.attributes["gender"][ds.subjects == "S100"][0] == g.index("female")
    notes = " ".join(report_of(ds).notes)
    assert f"{truth['labelled']} labelled sequences used" in notes
    assert f"{truth['sequences'] - truth['labelled']} image sequences without a label file skipped" in notes


def test_ckplus_label_out_of_range_names_file_and_line(ckplus):
    root, _ = ckplus
    label = sorted((root / "Emotion").rglob("*_emotion.txt"))[0]
    label.write_text("   9.0000000e+00\n")
    with pytest.raises(DatasetError, match=rf"{label.name} line 1: label .* 0-7"):
        load_dataset("ckplus", {"root": root, "detector": "none"})


def test_ckplus_missing_folder_shows_expected_layout(tmp_path):
    (tmp_path / "cohn-kanade-images").mkdir()
    with pytest.raises(DatasetError, match=r"(?s)Emotion is missing. Expected layout:\n.*cohn-kanade-images/S005"):
        load_dataset("ckplus", {"root": tmp_path})


def test_ckplus_corrupt_frame_is_skipped_and_listed_or_stops_when_strict(ckplus):
    root, truth = ckplus
    seq = sorted((root / "Emotion").rglob("*_emotion.txt"))[0].parent
    first = sorted((root / "cohn-kanade-images" / seq.parent.name / seq.name).glob("*.png"))[0]
    first.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    ds = load_dataset("ckplus", {"root": root, "detector": "none"})
    assert len(ds) == truth["images"] - 1
    assert [p for k, p, _ in report_of(ds).problems if k == "unreadable image"] == [str(first)]
    with pytest.raises(DatasetError, match=first.name):
        load_dataset("ckplus", {"root": root, "detector": "none"}, strict=True)


def test_ckplus_faces_not_found_fall_back_to_a_centre_crop_and_are_listed(ckplus):
    root, truth = ckplus
    ds = load_dataset("ckplus", {"root": root, "detector": "haar"})  # noise has no face
    assert len(ds) == truth["images"]
    assert report_of(ds).kinds()["face not found"] == truth["images"]


def test_detected_face_is_cropped_with_margin_clamped_to_the_image(tmp_path, monkeypatch):
    img = np.zeros((100, 200), np.uint8)
    img[20:60, 150:190] = 255  # the "face": 40x40 at x=150, y=20
    import cv2

    cv2.imwrite(str(tmp_path / "f.png"), img)
    monkeypatch.setattr(images_mod, "_detect", lambda gray, det: (150, 20, 40, 40))
    report = images_mod.LoadReport()
    out, ok = images_mod.load_images([tmp_path / "f.png"], images_mod.Preprocess(size=48, detector="haar", margin=0.25), report)
    # margin 10 px each side: x 140..200 (clamped from 200), y 10..70 -> the face fills the centre
    assert ok.all() and not report.problems
    crop = out[0, 0]
    assert crop[24, 30] == 255 and crop[2, 2] == 0 and crop.shape == (48, 48)


def test_dlib_detector_without_dlib_says_how_to_get_it(ckplus, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib now raises ImportError, installed or not
    with pytest.raises(DatasetError, match="needs the dlib package: pip install dlib"):
        load_dataset("ckplus", {"root": ckplus[0], "detector": "dlib"})


def test_ckplus_user_gender_csv_with_bom_crlf_and_spaces(ckplus, tmp_path):
    root, truth = ckplus
    csv = tmp_path / "gender.csv"
    write_csv(csv, ["subject", "gender", "age"], [[s, "man" if i % 2 else "woman", "adult"] for i, s in enumerate(truth["subjects"])],
              bom=True, crlf=True, pad=True)
    ds = load_dataset("ckplus", {"root": root, "detector": "none", "gender_csv": csv})
    assert ds.attribute_groups == {"gender": ["man", "woman"], "age": ["adult"]}
    assert (ds.attributes["gender"] != UNKNOWN).all()


# --- RAF-DB ----------------------------------------------------------------------------------------
def test_rafdb_reads_labels_attributes_and_the_original_split(tmp_path):
    truth = make_rafdb(tmp_path, train=30, test=10)
    ds = load_dataset("rafdb", {"root": tmp_path, "val_fraction": 0.2})
    assert len(ds) == 40 and ds.images.shape[1:] == (1, 100, 100)
    assert _split_counts(ds) == {"train": 24, "val": 6, "test": 10}
    for i, stem in enumerate(ds.subjects):
        code, gender, race, age = truth[stem]
        assert ds.labels[i] == code - 1
        assert ds.attributes["gender"][i] == (UNKNOWN if gender == 2 else gender)
        assert ds.attributes["race"][i] == race and ds.attributes["age"][i] == age
    assert all(s.startswith("test_") for s in ds.subjects[ds.indices("test")])
    assert load_dataset("rafdb", {"root": tmp_path, "channels": 3}).images.shape[1] == 3


def test_rafdb_bad_codes_and_missing_files(tmp_path):
    make_rafdb(tmp_path, train=6, test=2)
    (tmp_path / "Annotation/manual/train_00002_manu_attri.txt").unlink()
    (tmp_path / "Image/aligned/train_00003_aligned.jpg").unlink()
    (tmp_path / "Annotation/manual/train_09999_manu_attri.txt").write_text("1 1\n0\n0\n0\n")
    ds = load_dataset("rafdb", {"root": tmp_path})
    kinds = report_of(ds).kinds()
    assert len(ds) == 7 and kinds["label without image"] == 1 and kinds["image without annotation"] == 1
    assert kinds["annotation without image"] == 2  # train_00003 (its image is gone) and train_09999
    assert ds.attributes["race"][list(ds.subjects).index("train_00002")] == UNKNOWN

    attri = tmp_path / "Annotation/manual/train_00001_manu_attri.txt"
    attri.write_text("\n".join(attri.read_text().splitlines()[:5]) + "\n0\n7\n0\n")
    with pytest.raises(DatasetError, match=r"train_00001_manu_attri.txt line 7: race code 7 is out of range"):
        load_dataset("rafdb", {"root": tmp_path})
    labels = tmp_path / "EmoLabel/list_patition_label.txt"
    lines = labels.read_text().splitlines()
    lines[3] = "train_00004.jpg 8"
    labels.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"list_patition_label.txt line 4: emotion code 8 is outside 1-7"):
        load_dataset("rafdb", {"root": tmp_path})


# --- FER2013 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kaggle", [False, True])
def test_fer2013_both_csv_variants(tmp_path, kaggle):
    name = "icml_face_data.csv" if kaggle else "fer2013.csv"
    rows = make_fer2013(tmp_path / name, n=30, kaggle=kaggle)
    attrs = tmp_path / "attrs.csv"
    write_csv(attrs, ["index", "gender"], [[i, "f" if i % 2 else "m"] for i in range(29)], bom=True, crlf=True)
    ds = load_dataset("fer2013", {"root": tmp_path, "attributes_csv": attrs})
    assert len(ds) == 30 and ds.images.shape[1:] == (1, 48, 48)
    assert ds.labels.tolist() == [e for e, _ in rows]
    assert _split_counts(ds) == {"train": 10, "val": 10, "test": 10}
    assert ds.attributes["gender"][29] == UNKNOWN and report_of(ds).kinds()["image without annotation"] == 1


def test_fer2013_bad_rows(tmp_path):
    path = tmp_path / "fer2013.csv"
    make_fer2013(path, n=5)
    lines = path.read_text().splitlines()
    lines[2] = "3,1 2 3,Training"  # too few pixels: skipped and listed
    path.write_text("\n".join(lines) + "\n")
    ds = load_dataset("fer2013", {"root": path})
    assert len(ds) == 4 and report_of(ds).kinds()["unreadable image"] == 1
    lines[3] = "7," + lines[3].split(",", 1)[1]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"fer2013.csv line 4: emotion '7'"):
        load_dataset("fer2013", {"root": path})


# --- SFEW ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("aligned", [True, False])
def test_sfew_layouts_and_splits(tmp_path, aligned):
    files = make_sfew(tmp_path, per_class=4, aligned=aligned)
    (tmp_path / "Train" / ("Train_Aligned_Faces" if aligned else "") / "Contempt").mkdir()
    import cv2

    cv2.imwrite(str(tmp_path / "Train" / ("Train_Aligned_Faces" if aligned else "") / "Contempt" / "x.png"), np.zeros((9, 9), np.uint8))
    attrs = tmp_path / "a.csv"
    write_csv(attrs, ["path", "gender"], [[Path(k).name, "f"] for k in list(files)[:-1]])
    ds = load_dataset("sfew", {"root": tmp_path, "attributes_csv": attrs, "val_fraction": 0.25})
    assert len(ds) == len(files) == 56
    assert _split_counts(ds) == {"train": 21, "val": 7, "test": 28}
    assert all(ds.class_names[c] == files[k] for c, k in zip(ds.labels, ds.subjects))
    kinds = report_of(ds).kinds()
    assert kinds["unknown emotion folder"] == 1 and kinds["image without annotation"] == 1


# --- generic folder + CSV --------------------------------------------------------------------------
def test_folder_round_trips_the_synthetic_export(tmp_path):
    src = generate(SyntheticParams(subjects=12, sequences=20, peak_frames=1, seed=3))
    write_image_folder(src, tmp_path / "synth")
    ds = load_dataset("folder", {"root": tmp_path / "synth", "classes": src.class_names})  # names absent classes too
    assert ds.class_names == src.class_names
    assert np.array_equal(ds.images, src.images) and np.array_equal(ds.labels, src.labels)
    assert np.array_equal(ds.split, src.split) and list(ds.subjects) == list(src.subjects)
    for attr in src.attributes:
        names = np.array(src.attribute_groups[attr])[src.attributes[attr]]
        assert list(np.array(ds.attribute_groups[attr])[ds.attributes[attr]]) == list(names)


def test_folder_csv_quirks_names_and_errors(tmp_path):
    import cv2

    for i in range(6):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((30, 30), i * 40, np.uint8))
    cv2.imwrite(str(tmp_path / "stray.png"), np.zeros((5, 5), np.uint8))
    rows = [[f"{i}.png", ["happy", "sad"][i % 2], f"p{i // 2}", "adult" if i < 4 else ""] for i in range(6)] + [["gone.png", "sad", "p9", "child"]]
    write_csv(tmp_path / "labels.csv", ["path", "label", "subject", "age"], rows, bom=True, crlf=True, pad=True)
    ds = load_dataset("folder", {"root": tmp_path, "test_fraction": 0.34, "val_fraction": 0.0})
    assert ds.class_names == ["happy", "sad"] and ds.labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert ds.attribute_groups == {"age": ["adult", "child"]} and ds.attributes["age"].tolist() == [0, 0, 0, 0, -1, -1]
    kinds = report_of(ds).kinds()
    assert kinds["label without image"] == 1 and kinds["image without label"] == 1
    assert any("group 'child' has no images" in n for n in report_of(ds).notes)  # dropped, and said so
    with pytest.raises(DatasetError, match=r"labels.csv line 3: label 'sad' is not one of the classes \(happy, angry\)"):
        load_dataset("folder", {"root": tmp_path, "classes": ["happy", "angry"]})


def test_folder_paths_leading_outside_the_root_are_refused_and_listed(tmp_path):
    import cv2

    root, outside = tmp_path / "data", tmp_path / "secret"
    root.mkdir()
    outside.mkdir()
    cv2.imwrite(str(outside / "private.png"), np.full((30, 30), 200, np.uint8))
    (root / "link.png").symlink_to(outside / "private.png")  # a symlink out
    for i in range(6):
        cv2.imwrite(str(root / f"{i}.png"), np.full((30, 30), i * 40, np.uint8))
    hostile = ["../secret/private.png", str(outside / "private.png"), "link.png"]  # '..', absolute, symlink
    rows = [[f"{i}.png", i % 2, f"p{i}"] for i in range(6)] + [[h, 0, "px"] for h in hostile]
    write_csv(root / "labels.csv", ["path", "label", "subject"], rows)
    ds = load_dataset("folder", {"root": root, "test_fraction": 0.34, "val_fraction": 0.0})
    assert len(ds) == 6  # only the images inside the root
    refused = [(path, detail) for kind, path, detail in report_of(ds).problems if kind == "path outside the dataset root"]
    assert [p for p, _ in refused] == hostile and all("not opened" in d for _, d in refused)
    res = CliRunner().invoke(app, ["data", "check", "folder", str(root), "-p", "test_fraction=0.34", "-p", "val_fraction=0", "--no-cache"],
                             terminal_width=200)
    assert "path outside the dataset root: 3" in res.output and "../secret/private.png" in res.output


# --- text that is not UTF-8 ------------------------------------------------------------------------
def _spoil_line(path: Path, lineno: int) -> int:
    """Appends a Latin-1 'é' (byte 0xE9) to line ``lineno`` of an ASCII file; returns its column."""
    lines = path.read_bytes().split(b"\n")
    lines[lineno - 1] = lines[lineno - 1].rstrip(b"\r") + b"\xe9"
    path.write_bytes(b"\n".join(lines))
    return len(lines[lineno - 1])


def test_csv_not_utf8_names_file_line_and_column_and_a_bom_stays_accepted(tmp_path):
    f = tmp_path / "labels.csv"
    f.write_bytes(b"\xef\xbb\xbfpath,label\r\n\xc3\xa4.png,happy\r\nb.png,caf\xe9\r\n")  # UTF-8 BOM and 'ä', then Latin-1 'é'
    with pytest.raises(DatasetError) as e:
        read_csv(f)
    assert str(e.value) == f"{f} line 3: not UTF-8 (byte 0xE9 at column 10)"
    f.write_bytes(b"\xef\xbb\xbfpath,label\r\n\xc3\xa4.png,happy\r\n")
    assert read_csv(f)[0] == ["path", "label"] and read_csv(f)[1][0].values["path"] == "ä.png"


def test_loader_text_files_not_utf8_name_file_line_and_column(tmp_path):
    make_rafdb(tmp_path / "raf", train=6, test=2)
    make_fer2013(tmp_path / "fer2013.csv", n=5)
    make_ckplus(tmp_path / "CK+", subjects=4, sequences=2, frames=4)
    cases = [("rafdb", tmp_path / "raf", tmp_path / "raf/EmoLabel/list_patition_label.txt", 3),
             ("rafdb", tmp_path / "raf", tmp_path / "raf/Annotation/manual/train_00001_manu_attri.txt", 7),
             ("fer2013", tmp_path / "fer2013.csv", tmp_path / "fer2013.csv", 4),
             ("ckplus", tmp_path / "CK+", sorted((tmp_path / "CK+/Emotion").rglob("*_emotion.txt"))[0], 1)]
    for name, root, spoilt, line in cases:
        original = spoilt.read_bytes()
        column = _spoil_line(spoilt, line)
        with pytest.raises(DatasetError) as e:
            load_dataset(name, {"root": root, **({"detector": "none"} if name == "ckplus" else {})})
        assert str(e.value) == f"{spoilt} line {line}: not UTF-8 (byte 0xE9 at column {column})"
        spoilt.write_bytes(original)


# --- cache and `data check` ------------------------------------------------------------------------
def test_cache_is_reused_and_keyed_by_the_file_list(tmp_path, monkeypatch):
    make_rafdb(tmp_path / "raf", train=6, test=2)
    params = DATASETS.get("rafdb").params(root=tmp_path / "raf")
    first = load_dataset("rafdb", params, tmp_path / "cache")
    key = identify("rafdb", params).key
    from faircompress.data.loaders import rafdb

    monkeypatch.setattr(rafdb, "load_images", lambda *a, **k: pytest.fail("decoded again instead of using the cache"))
    again = load_dataset("rafdb", params, tmp_path / "cache")
    assert np.array_equal(first.images, again.images) and report_of(again).notes == report_of(first).notes
    assert len(list((tmp_path / "cache").glob("rafdb-*.npz"))) == 1
    (tmp_path / "raf/Image/aligned/train_00001_aligned.jpg").unlink()
    assert identify("rafdb", params).key != key


def test_cache_key_follows_content_not_size(tmp_path):
    """Swapping two labels keeps every file's name, size (and here its time) but not its content:
    the cache must not serve the old labels."""
    import os

    make_rafdb(tmp_path / "raf", train=6, test=2)
    params = DATASETS.get("rafdb").params(root=tmp_path / "raf")
    first = load_dataset("rafdb", params, tmp_path / "cache")
    labels = tmp_path / "raf/EmoLabel/list_patition_label.txt"
    lines = labels.read_text().splitlines()
    i, j = next((i, j) for i in range(len(lines)) for j in range(i) if lines[i].split()[1] != lines[j].split()[1])
    a, b = lines[i].split(), lines[j].split()
    lines[i], lines[j] = f"{a[0]} {b[1]}", f"{b[0]} {a[1]}"
    stat = labels.stat()
    labels.write_text("\n".join(lines) + "\n")
    os.utime(labels, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert labels.stat().st_size == stat.st_size
    again = load_dataset("rafdb", params, tmp_path / "cache")
    assert not np.array_equal(first.labels, again.labels)
    assert len(list((tmp_path / "cache").glob("rafdb-*.npz"))) == 2


def test_data_check_prints_counts_and_problems(tmp_path):
    make_rafdb(tmp_path / "raf", train=12, test=4)
    (tmp_path / "raf/Image/aligned/train_00002_aligned.jpg").write_bytes(b"not a jpeg")
    res = CliRunner().invoke(app, ["data", "check", "rafdb", str(tmp_path / "raf"), "--no-cache"])
    assert res.exit_code == 0, res.output
    assert "15 images" in res.output and "unreadable image: 1" in res.output and "train_00002_aligned.jpg" in res.output
    assert "images per race group and split" in res.output
    res = CliRunner().invoke(app, ["data", "check", "rafdb", str(tmp_path / "raf"), "--no-cache", "--strict"])
    assert res.exit_code == 1 and "train_00002_aligned.jpg" in res.output


def test_data_check_exits_nonzero_for_unusable_or_missing_data(tmp_path):
    make_sfew(tmp_path / "sfew", per_class=1)
    for d in (tmp_path / "sfew/Train/Train_Aligned_Faces").iterdir():
        if d.name != "Happy":
            for f in d.iterdir():
                f.unlink()
    res = CliRunner().invoke(app, ["data", "check", "sfew", str(tmp_path / "sfew"), "--no-cache", "-p", "val_fraction=0"])
    assert res.exit_code == 1 and "training split holds 1 class" in res.output
    res = CliRunner().invoke(app, ["data", "check", "ckplus", str(tmp_path / "nowhere"), "--no-cache"])
    assert res.exit_code == 1 and "Expected layout" in res.output


def test_paper_config_run_on_a_missing_copy_says_what_is_missing(tmp_path):
    root = Path(__file__).resolve().parents[1]
    res = CliRunner().invoke(app, ["run", str(root / "configs" / "paper-ckplus.yaml"), "--data", str(tmp_path / "CK+"),
                                   "--out", str(tmp_path / "study")])
    assert res.exit_code == 2 and "cohn-kanade-images is missing. Expected layout" in res.output
