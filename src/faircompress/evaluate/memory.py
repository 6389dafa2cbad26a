"""What shipping an exported file costs in memory: the peak resident memory of loading it in ONNX
Runtime and running batch 1, then the throughput batch, over the resident memory of a process that
has imported ONNX Runtime but loaded nothing.

Each file is measured in a fresh child process (`memory_probe.py`, run by path so that it imports
neither faircompress nor torch), so no variant sees another's allocations or the parent's. A child
that fails, crashes or times out gives no figures and a note saying why, never an error.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

PROBE = Path(__file__).with_name("memory_probe.py")
TIMEOUT_S = 120.0


@dataclass(frozen=True)
class MemoryUse:
    base_mb: float | None   # the child's RSS with ONNX Runtime imported, before loading the file
    b1_mb: float | None     # peak RSS over base_mb while loading and running batch 1
    batch_mb: float | None  # peak RSS over base_mb while loading, batch 1, then the throughput batch
    method: str = ""        # how the peak was read
    note: str | None = None  # why a figure is missing

    def scalars(self) -> dict[str, float]:
        """The figures as stored metrics; a missing one is left out, never stored as a number."""
        values = {"rss_base_mb": self.base_mb, "peak_rss_mb_b1": self.b1_mb, "peak_rss_mb_batch": self.batch_mb}
        return {k: float(v) for k, v in values.items() if v is not None}

    def to_json(self) -> dict:
        return asdict(self)


def unmeasured(note: str) -> MemoryUse:
    return MemoryUse(None, None, None, note=note)


class MemoryProbe:
    """The probe of one file, started at once in its child process; `result` waits for it. The parent
    may do other work meanwhile (the study computes the file's size): a peak RSS is the child's own,
    whatever else the machine runs, but nothing timed should run beside it."""

    def __init__(self, path: str | Path, image_shape: tuple[int, ...], batch: int, threads: int = 0,
                 timeout_s: float = TIMEOUT_S) -> None:
        args = json.dumps({"path": str(Path(path).resolve()), "shape": list(image_shape), "batch": batch, "threads": threads})
        # -P: the probe's folder is not put on sys.path, where evaluate/'s modules could shadow others
        command = [sys.executable, "-P", str(PROBE), args]
        self.timeout_s, self.deadline = timeout_s, time.monotonic() + timeout_s
        self.failed: str | None = None
        try:
            self.child: subprocess.Popen | None = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        except OSError as e:
            self.child, self.failed = None, f"the memory probe could not start: {e}"

    def result(self) -> MemoryUse:
        if self.child is None:
            return unmeasured(self.failed or "the memory probe did not start")
        try:
            stdout, stderr = self.child.communicate(timeout=max(self.deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            self.stop()
            return unmeasured(f"the memory probe timed out after {self.timeout_s:g} s")
        return parse_probe(self.child.returncode, stdout, stderr)

    def stop(self) -> None:
        """Kill the child when its result is no longer wanted (the parent failed meanwhile)."""
        if self.child is not None and self.child.poll() is None:
            self.child.kill()
            self.child.communicate()


def measure_memory(path: str | Path, image_shape: tuple[int, ...], batch: int, threads: int = 0,
                   timeout_s: float = TIMEOUT_S) -> MemoryUse:
    """Peak RSS of loading ``path`` and running batch 1 and ``batch`` images of ``image_shape`` in a
    child process. ``threads``: ONNX Runtime intra-op threads (0 = its default, all cores)."""
    return MemoryProbe(path, image_shape, batch, threads, timeout_s).result()


def parse_probe(returncode: int, stdout: str, stderr: str) -> MemoryUse:
    """The probe's JSON line as a `MemoryUse`; a failed probe as one with a note."""
    if returncode != 0:
        how = f"was killed by signal {-returncode}" if returncode < 0 else f"exited with status {returncode}"
        return unmeasured(f"the memory probe {how}: {_last_line(stderr) or 'no message'}")
    out = _result_line(stdout)
    if out is None:
        return unmeasured(f"the memory probe printed no result: {_last_line(stdout) or 'nothing'}")
    if "error" in out:
        return unmeasured(str(out["error"]))
    missing = out["b1_mb"] is None or out["batch_mb"] is None
    note = "the peak RSS did not rise above the imports' peak and could not be reset here" if missing else None
    return MemoryUse(out["base_mb"], out["b1_mb"], out["batch_mb"], out["method"], note)


_FIELDS = {"base_mb", "b1_mb", "batch_mb", "method"}


def _result_line(stdout: str) -> dict | None:
    """The probe's result: the JSON object on its last line, with every field (or an error)."""
    try:
        out = json.loads(_last_line(stdout))
    except ValueError:
        return None
    return out if isinstance(out, dict) and ("error" in out or _FIELDS <= set(out)) else None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
