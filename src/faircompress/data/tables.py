"""Reading the small text tables datasets ship with (CSV label files, attribute files), forgivingly:
byte-order marks, CRLF line ends, stray spaces around names and values, ``#`` comment lines."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from .problems import DatasetError

UNKNOWN_VALUES = {"", "unknown", "unsure", "na", "n/a", "none", "-1", "?"}


@dataclass
class Row:
    line: int               # 1-based line in the file, for error messages
    values: dict[str, str]  # column -> stripped value


def read_csv(path: str | os.PathLike, required: tuple[str, ...] = ()) -> tuple[list[str], list[Row]]:
    """Columns and rows of a CSV; a missing required column stops with the file named."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    with open(path, encoding="utf-8-sig", newline="") as fh:
        lines = [(i, line) for i, line in enumerate(fh, start=1) if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise DatasetError(f"{path}: empty file (expected a header row)")
    reader = csv.reader([line for _, line in lines], skipinitialspace=True)
    header = [h.strip() for h in next(reader)]
    missing = [c for c in required if c not in header]
    if missing:
        raise DatasetError(f"{path} line {lines[0][0]}: missing column(s) {', '.join(missing)} (found: {', '.join(header)})")
    rows = []
    for (lineno, _), cells in zip(lines[1:], reader):
        if len(cells) != len(header):
            raise DatasetError(f"{path} line {lineno}: {len(cells)} fields, the header has {len(header)}")
        rows.append(Row(lineno, {h: c.strip() for h, c in zip(header, cells)}))
    return header, rows
