"""What a loader found wrong with a dataset, kept with the dataset so `data check` can print it.

Three grades: a fatal error (a missing folder, a label code out of range) raises ``DatasetError``
naming the file and line; a skippable problem (an unreadable image, an annotation without its image)
is counted and listed, or raises under ``strict``; a note records something worth knowing that is not
a fault (sequences without labels skipped as the paper does, faces not found and centre-cropped).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field


class DatasetError(ValueError):
    """A dataset cannot be loaded as given; the message names the file (and line) at fault."""


@dataclass
class LoadReport:
    strict: bool = False
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, path, detail)
    notes: list[str] = field(default_factory=list)

    def problem(self, kind: str, path: object, detail: str, stop_if_strict: bool = True) -> None:
        """Record a skipped or patched item; under ``strict`` the first skip stops the load."""
        if self.strict and stop_if_strict:
            raise DatasetError(f"{path}: {detail} (--strict stops at the first problem)")
        self.problems.append((kind, str(path), detail))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def kinds(self) -> Counter:
        return Counter(kind for kind, _, _ in self.problems)

    def to_json(self) -> str:
        return json.dumps({"problems": self.problems, "notes": self.notes})

    @classmethod
    def from_json(cls, text: str) -> "LoadReport":
        blob = json.loads(text) if text else {}
        return cls(problems=[tuple(p) for p in blob.get("problems", [])], notes=blob.get("notes", []))


def expected_layout_error(missing: object, layout: str) -> DatasetError:
    return DatasetError(f"{missing} is missing. Expected layout:\n{layout.rstrip()}")
