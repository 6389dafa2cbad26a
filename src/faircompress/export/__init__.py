"""`faircompress export --format NAME STUDY_DIR`: a finished study's results in another tool's layout.

One format is one module in this folder that registers a function ``(study_dir, out) -> Exported``
with `EXPORT_FORMATS`; the command and `faircompress plugins` find it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..registry import Registry


@dataclass
class Exported:
    """What an export wrote, and what it left out and why."""

    folder: Path
    files: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


ExportFormat = Callable[[Path, Path], Exported]
EXPORT_FORMATS: Registry[ExportFormat] = Registry("export format", "faircompress.export")
