"""Every finished run's artefact (a checkpoint or a deployable ONNX file) is recorded with its
SHA-256; `faircompress verify` checks them, and `run` rebuilds a run whose file is gone or altered."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .data.identity import file_sha256
from .store import ResultStore


@dataclass(frozen=True)
class ArtefactCheck:
    run_id: str
    label: str
    path: Path
    state: str  # 'ok', 'missing', 'unreadable', 'altered', 'unrecorded' (no checksum kept: an older store)

    @property
    def damaged(self) -> bool:
        return self.state in ("missing", "unreadable", "altered")

    def describe(self) -> str:
        why = {"missing": "is missing", "unreadable": "cannot be read", "altered": "differs from the file its results were measured on (SHA-256)",
               "unrecorded": "exists (no checksum recorded, made by an older version)", "ok": "matches its checksum"}
        return f"{self.label}: {self.path} {why[self.state]}"


def _digest(path: Path) -> str:
    """The file's SHA-256, or 'missing' / 'unreadable'."""
    if not path.is_file():
        return "missing"
    try:
        return file_sha256(path)
    except OSError:
        return "unreadable"


def check_artefacts(store: ResultStore, study_dir: Path) -> list[ArtefactCheck]:
    """One check per finished run; a file shared by several runs is hashed once."""
    runs = store.conn.execute("SELECT run_id, label, artefact, artefact_sha256 FROM runs WHERE status='finished' ORDER BY started_at")
    hashes: dict[Path, str | None] = {}
    checks = []
    for run_id, label, artefact, recorded in runs.fetchall():
        path = study_dir / (artefact or "")
        if path not in hashes:
            hashes[path] = _digest(path) if artefact else None
        found = hashes[path]
        state = found if found in ("missing", "unreadable") else "unrecorded" if not recorded else "ok" if found == recorded else "altered"
        checks.append(ArtefactCheck(run_id, label, path, state))
    return checks
