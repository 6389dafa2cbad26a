"""A dataset's identity by content: the SHA-256 of every file a loader reads (labels, annotations,
CSVs and images alike), so an edit that keeps a file's name, size and time still gives a new key.

Hashing a CK+-sized tree (10,000 PNGs, 2 GB) takes 5-11 s (`benchmarks/data_identity.py`), so an
image's digest is remembered with its size, mtime and ctime (ctime changes on every write and
cannot be set back) and reused while all three hold; label and annotation files are always read."""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from ..atomic import EnvironmentFault, write_text_atomic
from .problems import DatasetError


@dataclass(frozen=True)
class Manifest:
    """Every file under a dataset's roots, as its path (relative, prefixed by its root's name) and
    the SHA-256 of its content."""

    files: dict[str, str]

    def key(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.files):
            h.update(f"{name}\0{self.files[name]}\n".encode())
        return h.hexdigest()[:16]

    def changes(self, before: "Manifest", limit: int = 5) -> str:
        """What changed since ``before``, in words ('2 files changed (a.csv, b.txt); 1 file added (c.png)'), '' when nothing did."""
        old, new = before.files, self.files
        kinds = {"changed": sorted(n for n in new.keys() & old.keys() if new[n] != old[n]),
                 "added": sorted(new.keys() - old.keys()), "removed": sorted(old.keys() - new.keys())}
        parts = []
        for kind, names in kinds.items():
            if names:
                shown = ", ".join(names[:limit]) + (f", … {len(names) - limit} more" if len(names) > limit else "")
                parts.append(f"{len(names)} file{'s' if len(names) > 1 else ''} {kind} ({shown})")
        return "; ".join(parts)


def file_sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _files_under(root: Path) -> list[tuple[str, Path]]:
    if root.is_file():
        return [(root.name, root)]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = Path(os.path.relpath(dirpath, root))
        found += [((Path(root.name) / rel / f).as_posix(), Path(dirpath) / f) for f in sorted(filenames)]
    return found


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


class DigestMemo:
    """Images' digests by (size, mtime, ctime), kept in one JSON file (best effort: a memo that
    cannot be read or written only costs time)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, list] = {}
        if path is not None and path.is_file():
            try:
                self.entries = json.loads(path.read_text())
            except (OSError, ValueError):
                self.entries = {}

    def digest(self, path: Path) -> str:
        """``path``'s SHA-256 (``path`` resolved: it keys the memo)."""
        if path.suffix.lower() not in IMAGE_SUFFIXES or self.path is None:
            return file_sha256(path)
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns]
        key = str(path)
        known = self.entries.get(key)
        if known is not None and known[:3] == stamp:
            return known[3]
        digest = file_sha256(path)
        self.entries[key] = [*stamp, digest]
        return digest

    def save(self) -> None:
        if self.path is None:
            return
        with suppress(EnvironmentFault):
            write_text_atomic(self.path, json.dumps(self.entries))


def manifest(*roots: str | os.PathLike, threads: int | None = None, memo: Path | None = None) -> Manifest:
    """Hash every file under ``roots`` (files or folders); with ``memo`` (a JSON file), images whose
    size, mtime and ctime are unchanged since they were last hashed are not read again. Hashing
    releases the GIL, so threads read and hash files in parallel."""
    named, seen = [], set()
    for root in roots:
        for name, path in _files_under(Path(root)):
            path = path.resolve()
            if path not in seen:  # a file under two roots (a CSV inside the image folder) counts once
                seen.add(path)
                named.append((name, path))

    remembered = DigestMemo(memo)

    def digest(item: tuple[str, Path]) -> str:
        try:
            return remembered.digest(item[1])
        except OSError as e:
            raise DatasetError(f"{item[1]}: cannot read ({e.strerror or e})") from None

    with ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(digest, named))
    if named:
        remembered.save()
    return Manifest({name: d for (name, _), d in zip(named, digests)})
