"""Tiny dataset trees in the exact layouts users download (quirks included): each loader's example
(the registry tests load every registered dataset from its example), the loader tests, and at full
scale benchmarks/data_load.py. No real face is involved: images are smooth noise."""
from __future__ import annotations

import csv
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

CKPLUS_MALE = ["S037", "S044", "S045"]  # a few of the authors' male subjects, so both groups occur


def _image(rng: np.random.Generator, h: int, w: int, rgb: bool = False) -> np.ndarray:
    import cv2

    base = cv2.resize(rng.integers(0, 256, (8, 8, 3 if rgb else 1), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    noise = rng.integers(0, 12, base.shape, dtype=np.uint8)
    return cv2.add(base, noise)


def make_ckplus(root: Path, subjects: int = 6, sequences: int = 3, frames: int = 6, size: tuple[int, int] = (64, 48),
                labelled: float = 0.7, seed: int = 0) -> dict:
    """cohn-kanade-images/Sxxx/nnn/Sxxx_nnn_000000ii.png and Emotion/Sxxx/nnn/..._emotion.txt.
    Quirks: unlabelled sequences, empty Emotion folders, .DS_Store files, some RGB frames."""
    import cv2

    rng = np.random.default_rng(seed)
    w, h = size
    names = CKPLUS_MALE[: max(1, subjects // 3)] + [f"S{100 + i:03d}" for i in range(subjects)]
    names = names[:subjects]
    counts = {"sequences": 0, "labelled": 0, "images": 0, "labels": []}
    for s_i, subj in enumerate(names):
        for q in range(1, sequences + 1):
            seq = f"{q:03d}"
            d = root / "cohn-kanade-images" / subj / seq
            d.mkdir(parents=True, exist_ok=True)
            rgb = (s_i + q) % 4 == 0
            base = _image(rng, h, w, rgb)
            jobs = [(d / f"{subj}_{seq}_{f:08d}.png", cv2.add(base, rng.integers(0, 4, base.shape, dtype=np.uint8)))
                    for f in range(1, frames + 1)]
            with ThreadPoolExecutor() as pool:  # OpenCV releases the GIL while encoding
                list(pool.map(lambda job: cv2.imwrite(str(job[0]), job[1]), jobs))
            (d / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
            counts["sequences"] += 1
            e = root / "Emotion" / subj / seq
            if rng.random() < labelled:
                e.mkdir(parents=True, exist_ok=True)
                code = int(rng.integers(1, 8))
                (e / f"{subj}_{seq}_{frames:08d}_emotion.txt").write_text(f"   {code:.7e}\n")
                counts["labelled"] += 1
                counts["images"] += 1 + min(3, frames - 1)
                counts["labels"] += [0] + [code] * min(3, frames - 1)
            elif q % 2:
                e.mkdir(parents=True, exist_ok=True)  # an empty Emotion folder, as in the real release
    (root / "cohn-kanade-images" / ".DS_Store").write_bytes(b"\0")
    counts["subjects"] = names
    return counts


def make_rafdb(root: Path, train: int = 20, test: int = 8, side: int = 100, seed: int = 0) -> dict:
    """EmoLabel/list_patition_label.txt, Image/aligned/*_aligned.jpg, Annotation/manual/*_manu_attri.txt."""
    import cv2

    rng = np.random.default_rng(seed)
    for d in ("EmoLabel", "Image/aligned", "Annotation/manual"):
        (root / d).mkdir(parents=True, exist_ok=True)
    lines, truth = [], {}
    for part, n in (("train", train), ("test", test)):
        for i in range(1, n + 1):
            stem = f"{part}_{i:05d}"
            code = int(rng.integers(1, 8))
            lines.append(f"{stem}.jpg {code}")
            cv2.imwrite(str(root / "Image" / "aligned" / f"{stem}_aligned.jpg"), _image(rng, side, side, rgb=True))
            gender, race, age = int(rng.integers(0, 3)), int(rng.integers(0, 3)), int(rng.integers(0, 5))
            marks = "\n".join(f"{rng.uniform(20, 80):.2f}\t{rng.uniform(20, 80):.2f}" for _ in range(5))
            (root / "Annotation" / "manual" / f"{stem}_manu_attri.txt").write_text(f"{marks}\n{gender}\n{race}\n{age}\n")
            truth[stem] = (code, gender, race, age)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    return truth


def make_fer2013(path: Path, n: int = 30, kaggle: bool = False, seed: int = 0) -> list[tuple[int, str]]:
    """fer2013.csv (emotion,pixels,Usage) or Kaggle's icml_face_data.csv (emotion, Usage, pixels)."""
    rng = np.random.default_rng(seed)
    usages = ["Training", "PublicTest", "PrivateTest"]
    rows = []
    with open(path, "w", newline="") as fh:
        fh.write("emotion, Usage, pixels\n" if kaggle else "emotion,pixels,Usage\n")
        for i in range(n):
            emo, usage = int(rng.integers(0, 7)), usages[i % 3]
            pixels = " ".join(map(str, _image(rng, 48, 48).ravel()))
            fh.write(f"{emo}, {usage}, {pixels}\n" if kaggle else f"{emo},{pixels},{usage}\n")
            rows.append((emo, usage))
    return rows


def make_sfew(root: Path, per_class: int = 3, aligned: bool = True, seed: int = 0) -> dict:
    """Train/Train_Aligned_Faces/<Emotion>/*.png and Val/... (or the flat Train/<Emotion>/ variant)."""
    import cv2

    rng = np.random.default_rng(seed)
    files = {}
    for part in ("Train", "Val"):
        base = root / part / f"{part}_Aligned_Faces" if aligned else root / part
        for emo in ("Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"):
            (base / emo).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                name = f"{part.lower()}_{emo.lower()}_{i:03d}.png"
                cv2.imwrite(str(base / emo / name), _image(rng, 181, 143, rgb=True))
                files[f"{base.relative_to(root)}/{emo}/{name}"] = emo.lower()
            (base / emo / ".DS_Store").write_bytes(b"\0")
    return files


def write_csv(path: Path, header: list[str], rows: list[list], bom: bool = False, crlf: bool = False, pad: bool = False) -> None:
    """A CSV with the quirks users' files have: a byte-order mark, CRLF line ends, spaces around values."""
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as fh:
        w = csv.writer(fh, lineterminator="\r\n" if crlf else "\n")
        for row in [header, *rows]:
            w.writerow([f" {v} " if pad else v for v in row])


def make_folder(root: Path) -> dict:
    """A tiny synthetic set written as the generic folder layout: PNGs plus labels.csv."""
    from .export import write_image_folder
    from .synthetic import SyntheticParams, generate

    write_image_folder(generate(SyntheticParams(subjects=12, sequences=18, peak_frames=2, image_size=16, seed=3)), root)
    return {"root": str(root)}


SFEW_MOVIES = ["Airheads", "BlackSwan", "Harry_Potter", "LittleManhattan", "Serendipity", "TheTerminal"]


def make_sfew_features(root: Path, per_class: int = 10, xlsx: bool = False, missing: int = 2, seed: int = 0) -> Path:
    """SFEW.xlsx's layout: Image, Label (1..7), LPQ1..LPQ5, PHOG1..PHOG5, one row per image named
    ``<Movie>_<frame>_<n>`` (a movie name with an underscore among them). The blocks' scales differ by
    orders of magnitude, as principal components of two descriptors do; each class shifts both blocks.
    ``missing`` feature cells are empty or NaN (rows a loader must drop). Returns the file's path."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (7, 10))
    header = ["Image", "Label", *[f"LPQ{i}" for i in range(1, 6)], *[f"PHOG{i}" for i in range(1, 6)]]
    rows: list[list] = []
    for label in range(7):
        for i in range(per_class):
            x = centres[label] + rng.normal(0, 0.7, 10)
            x[:5] *= 1000.0
            x[5:] *= 0.01
            name = f"{SFEW_MOVIES[(label + i) % len(SFEW_MOVIES)]}_{rng.integers(1e8, 1e9):09d}_{i:08d}"
            rows.append([name, label + 1, *[float(v) for v in x]])
    for k, r in enumerate(rng.choice(len(rows), size=missing, replace=False)):
        rows[r][2 + int(rng.integers(10))] = None if k % 2 == 0 else float("nan")
    root.mkdir(parents=True, exist_ok=True)
    if xlsx:
        import openpyxl

        book = openpyxl.Workbook()
        for row in [header, *rows]:
            book.active.append(row)
        path = root / "SFEW.xlsx"
        book.save(path)
        return path
    path = root / "SFEW.csv"
    write_csv(path, header, [["" if v is None else "NaN" if isinstance(v, float) and np.isnan(v) else v for v in r] for r in rows])
    return path
