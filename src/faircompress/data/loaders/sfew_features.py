"""SFEW's precomputed features (Dhall et al. 2011, as Dixit et al. use them): a table, one row per
image, as SFEW.xlsx distributes them: the image name, the label (1..7 = angry, disgust, fear, happy,
neutral, sad, surprise, or the class names), then the feature columns (5 LPQ and 5 PHOG principal
components in SFEW's layout). CSV or XLSX. The samples are float32 (N, F, 1, 1), not pictures: a
model must take features (``pca_mlp`` with ``input: features``).

The first row is the header, unless all its feature cells are numbers (a table without one). The
feature columns are every column after the label that holds a number (a column of text only is
left out, with a note); ``features`` makes their count a checked property. A row with a missing or
non-numeric feature, or no label, is dropped (as Dixit et al. drop their NaN rows), counted and
listed in the load report. The table has no split: a seeded random ``test_fraction`` of the images
(the paper's 10 %) or, with ``test_split: grouped``, of the movies the images come from (an SFEW name
such as ``Airheads_000519240_00000005`` is from movie ``Airheads``: the part before the first
``_<digits>``), so that no movie is in both; validation comes from the training part the same way."""
from __future__ import annotations

import csv
import re
from contextlib import closing
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..common import assemble, attributes_from_csv
from ..dataset import FaceDataset, InputShape
from ..examples import make_sfew_features
from ..problems import DatasetError, LoadReport
from ..registry import DATASETS, DatasetSource
from ..splits import subject_split
from ..tables import read_csv, text_lines
from .sfew import CLASSES

XLSX = (".xlsx", ".xlsm")
LAYOUT = ("columns: image name, label (1..7 = " + ", ".join(CLASSES) + ", or the names), then the feature columns "
          "(SFEW: 5 LPQ, 5 PHOG)")
_MOVIE = re.compile(r"^(.*?)_\d")


class SFEWFeaturesParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: Path = Field(..., description="the features table: SFEW.xlsx, or a CSV with its columns")
    sheet: str | int = Field(0, description="XLSX: the sheet, by name or 0-based position")
    features: int | None = Field(None, ge=1, description="how many feature columns the table must have (SFEW: 10); "
                                                         "default: whatever it has")
    attributes_csv: Path | None = Field(None, description="CSV: name (or path),<attribute>... (the image name, matched "
                                                          "without folder and extension)")
    test_split: Literal["random", "grouped"] = Field("random", description="random images, or whole movies (grouped)")
    test_fraction: float = Field(0.1, gt=0, lt=1, description="share of images (or movies) for test; the paper's 10 %")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of the training images (or movies) for validation")
    seed: int = 0


# ----------------------------------------------------------------------------- reading the table
def read_table(path: Path, sheet: str | int = 0) -> list[tuple[int, list[Any]]]:
    """(row number as a spreadsheet or text editor shows it, cells) of every non-blank row, header first.
    CSV cells are stripped text; XLSX cells are what the workbook holds (numbers, text, None)."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found (the features table, CSV or XLSX)")
    rows = _xlsx_rows(path, sheet) if path.suffix.lower() in XLSX else _csv_rows(path)
    rows = [(n, cells) for n, cells in rows if any(not _blank(c) for c in cells)]
    if not rows:
        raise DatasetError(f"{path}: empty table ({LAYOUT})")
    return rows


def _csv_rows(path: Path) -> list[tuple[int, list[Any]]]:
    if path.suffix.lower() == ".xls":
        raise DatasetError(f"{path}: the old .xls format cannot be read; save it as .xlsx or CSV")
    with closing(text_lines(path)) as lines:
        numbered = [(i, line) for i, line in enumerate(lines, start=1) if line.strip() and not line.lstrip().startswith("#")]
    try:
        cells = list(csv.reader((line for _, line in numbered), skipinitialspace=True))
    except csv.Error as e:
        raise DatasetError(f"{path}: not a readable CSV ({e})") from None
    if len(cells) != len(numbered):  # a quoted field spanning lines: numbering would drift
        raise DatasetError(f"{path}: a quoted field spans lines; the table must have one row per line")
    return [(n, [c.strip() for c in row]) for (n, _), row in zip(numbered, cells)]


def _xlsx_rows(path: Path, sheet: str | int) -> list[tuple[int, list[Any]]]:
    import openpyxl

    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as e:  # not a zip, not a workbook, a damaged part: openpyxl raises many kinds
        raise DatasetError(f"{path}: not a readable XLSX workbook ({_why(e)})") from None
    try:
        names = book.sheetnames
        if isinstance(sheet, int) and not 0 <= sheet < len(names) or isinstance(sheet, str) and sheet not in names:
            raise DatasetError(f"{path}: no sheet {sheet!r} (sheets: {', '.join(names)})")
        ws = book[names[sheet] if isinstance(sheet, int) else sheet]
        return [(n, list(row)) for n, row in enumerate(ws.iter_rows(min_row=1, values_only=True), start=1)]
    except DatasetError:
        raise
    except Exception as e:
        raise DatasetError(f"{path}: sheet {sheet!r} cannot be read ({_why(e)})") from None
    finally:
        book.close()


def _why(e: Exception) -> str:
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {first[:120]}" if first else type(e).__name__


def _blank(cell: Any) -> bool:
    return cell is None or (isinstance(cell, str) and not cell.strip()) or (isinstance(cell, float) and np.isnan(cell))


def _number(cell: Any) -> float | None:
    """The cell as a finite number, or None (blank, text, NaN, infinite)."""
    if isinstance(cell, bool):
        return None
    if isinstance(cell, (int, float)):
        value = float(cell)
    else:
        try:
            value = float(str(cell).strip())
        except ValueError:
            return None
    return value if np.isfinite(value) else None


def _label(cell: Any) -> int | None:
    """Class index of a label cell (1..7 in SFEW's order, or a class name in any case), else None."""
    number = _number(cell)
    if number is not None:
        return int(number) - 1 if number == int(number) and 1 <= number <= len(CLASSES) else None
    text = str(cell).strip().lower()
    return CLASSES.index(text) if text in CLASSES else None


def _text(cell: Any) -> str:
    if _blank(cell):
        return ""
    return str(int(cell)) if isinstance(cell, float) and cell.is_integer() else str(cell).strip()


# ----------------------------------------------------------------------------- the dataset
def movie(name: str) -> str:
    """The movie an SFEW image name comes from: the part before the first ``_<digits>`` (the whole name
    when it has none)."""
    m = _MOVIE.match(name)
    return m.group(1) if m and m.group(1) else name


def _columns(path: Path, rows: list[tuple[int, list[Any]]]) -> tuple[list[str], list[tuple[int, list[Any]]]]:
    """(column names, data rows cut or padded to the first row's width): the header row taken off,
    unless the first row is data (all its feature cells numbers)."""
    first = rows[0][1]
    width = max((i + 1 for i, c in enumerate(first) if not _blank(c)), default=0)
    for n, cells in rows:
        extra = next((i for i in range(width, len(cells)) if not _blank(cells[i])), None)
        if extra is not None:
            raise DatasetError(f"{path} row {n}: a value in column {extra + 1}, beyond the {width} columns of row {rows[0][0]}")
    rows = [(n, (list(cells) + [None] * width)[:width]) for n, cells in rows]
    if width < 2:
        raise DatasetError(f"{path} row {rows[0][0]}: missing label column: one column found ({LAYOUT})")
    if width < 3:
        raise DatasetError(f"{path}: no feature columns: only an image name and a label column ({LAYOUT})")
    if all(_number(c) is not None for c in first[2:width]):  # no header: columns named by position
        return [f"column {i + 1}" for i in range(width)], rows
    return [_text(c) or f"column {i + 1}" for i, c in enumerate(rows[0][1])], rows[1:]


def _feature_columns(path: Path, names: list[str], rows: list[tuple[int, list[Any]]], p: SFEWFeaturesParams,
                     report: LoadReport) -> list[int]:
    text_only = [i for i in range(2, len(names)) if not any(_number(cells[i]) is not None for _, cells in rows)]
    features = [i for i in range(2, len(names)) if i not in text_only]
    if text_only and rows:
        report.note(f"column(s) without any number left out of the features: {', '.join(names[i] for i in text_only)}")
    if not features:
        raise DatasetError(f"{path}: no feature columns: no column after the label holds a number ({LAYOUT})")
    if p.features is not None and len(features) != p.features:
        raise DatasetError(f"{path}: {len(features)} feature column(s) ({', '.join(names[i] for i in features)}), but "
                           f"features is {p.features}")
    report.note(f"{len(features)} features per image: {', '.join(names[i] for i in features)}")
    return features


def load(p: SFEWFeaturesParams, report: LoadReport) -> FaceDataset:
    path = p.root
    names, rows = _columns(path, read_table(path, p.sheet))
    if not rows:
        raise DatasetError(f"{path}: no data rows ({LAYOUT})")
    cols = _feature_columns(path, names, rows, p, report)
    keys, labels, values = [], [], []
    for n, cells in rows:
        name = _text(cells[0])
        if not name:
            raise DatasetError(f"{path} row {n}, column {names[0]!r}: no image name")
        if _blank(cells[1]):
            report.problem("missing value", path, f"row {n} ({name}): no label in column {names[1]!r}: row dropped", stop_if_strict=False)
            continue
        label = _label(cells[1])
        if label is None:
            raise DatasetError(f"{path} row {n}, column {names[1]!r}: unknown label {_text(cells[1])!r} (expected 1..{len(CLASSES)} "
                               f"or {', '.join(CLASSES)})")
        row = [_number(cells[i]) for i in cols]
        bad = [names[i] for i, v in zip(cols, row) if v is None]
        if bad:
            report.problem("missing value", path, f"row {n} ({name}): {', '.join(bad)} missing or not a number: row dropped",
                           stop_if_strict=False)
            continue
        keys.append(name)
        labels.append(label)
        values.append(row)
    dropped = len(rows) - len(keys)
    if dropped:
        report.note(f"{dropped} of {len(rows)} rows dropped for a missing value (Dixit et al. drop them too)")
    if not keys:
        raise DatasetError(f"{path}: every row has a missing value; nothing to load")
    keys_arr = np.array(keys)
    subjects = np.array([movie(k) for k in keys]) if p.test_split == "grouped" else keys_arr
    split = subject_split(subjects, p.test_fraction, p.val_fraction, p.seed)
    attrs, groups = _attributes(p, keys, report)
    features = np.asarray(values, dtype=np.float32)[:, :, None, None]  # (N, F, 1, 1)
    return assemble("sfew_features", features, np.ones(len(keys), bool), np.array(labels), CLASSES, attrs, groups, subjects,
                    split, report, meta={"source": str(path), "features": str(features.shape[1])})


def _stem(entry: str) -> str:
    """An image name without folder and image extension, so a table's names and an attribute CSV's paths meet."""
    name = PurePosixPath(entry.replace("\\", "/")).name
    stem, dot, ext = name.rpartition(".")
    return stem if dot and ext.lower() in ("png", "jpg", "jpeg", "bmp", "tif", "tiff") else name


def _attributes(p: SFEWFeaturesParams, keys: list[str], report: LoadReport) -> tuple[dict, dict]:
    if p.attributes_csv is None:
        report.note("no attributes_csv given: SFEW ships no demographics, so there are no groups to compare")
        return {}, {}
    header, rows = read_csv(p.attributes_csv)
    column = next((c for c in ("name", "path") if c in header), None)
    if column is None:
        raise DatasetError(f"{p.attributes_csv}: missing column name (or path) (found: {', '.join(header)})")
    entries: dict[str, str] = {}
    for row in rows:
        value = row.values[column]
        seen = entries.setdefault(_stem(value), value)
        if seen != value:
            raise DatasetError(f"{p.attributes_csv} line {row.line}: {column} {value!r} and {seen!r} name the same image")
    lookup = [entries.get(_stem(k), k) for k in keys]
    return attributes_from_csv(p.attributes_csv, lookup, column, report, exclude=("name", "path"))


def sources(p: SFEWFeaturesParams) -> list[Path]:
    return [p.root] + ([p.attributes_csv] if p.attributes_csv else [])


def example(root: Path) -> dict:
    """A tiny table in SFEW's layout (random features, a few missing values), for the registry tests."""
    return {"root": str(make_sfew_features(root)), "features": 10}


DATASETS.register("sfew_features")(DatasetSource(
    params=SFEWFeaturesParams, load=load, sources=sources, version="1", example=example,
    shape=lambda p: InputShape(p.features, len(CLASSES), 1) if p.features else None))
