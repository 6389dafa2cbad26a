"""Reading the small text tables datasets ship with (CSV label files, attribute files), forgivingly:
byte-order marks, CRLF line ends, stray spaces around names and values, ``#`` comment lines. Text must be
UTF-8: another encoding stops with the line of the first bad byte, never a silently garbled name."""
from __future__ import annotations

import codecs
import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .problems import DatasetError

UNKNOWN_VALUES = {"", "unknown", "unsure", "na", "n/a", "none", "-1", "?"}


@dataclass
class Row:
    line: int               # 1-based line in the file, for error messages
    values: dict[str, str]  # column -> stripped value


def decode_utf8(data: bytes, path: str | os.PathLike, error: type[Exception] = DatasetError) -> str:
    """``data`` as text, a UTF-8 byte-order mark dropped. Any other encoding raises ``error`` naming
    the line and column of the first byte that is not UTF-8."""
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line, start = data.count(b"\n", 0, e.start) + 1, data.rfind(b"\n", 0, e.start) + 1
        column = len(data[start : e.start].decode("utf-8")) + 1  # the bytes before the first bad one decode
        raise error(f"{path} line {line}: not UTF-8 (byte 0x{data[e.start]:02X} at column {column})") from None


def read_text(path: str | os.PathLike) -> str:
    """The whole text of a UTF-8 file (see `decode_utf8`); unreadable files raise DatasetError."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror or e})") from None
    return decode_utf8(data, path)


def text_lines(path: str | os.PathLike) -> Iterator[str]:
    """The lines of a UTF-8 text file, streamed (line ends kept, as ``newline=""`` gives them to `csv`)
    for files too big to hold twice; a file that is not UTF-8 raises `read_text`'s DatasetError."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            yield from fh
    except UnicodeDecodeError:
        read_text(path)  # raises the DatasetError naming the line of the first bad byte
        raise


def read_csv(path: str | os.PathLike, required: tuple[str, ...] = ()) -> tuple[list[str], list[Row]]:
    """Columns and rows of a CSV; a missing required column stops with the file named."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    lines = [(i, line) for i, line in enumerate(text_lines(path), start=1) if line.strip() and not line.lstrip().startswith("#")]
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
