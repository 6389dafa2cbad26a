"""Quiet timing beside parallel runs: latency and throughput are measured while no other run of this
machine computes. Runs hold a shared lock on a node-wide file and step aside at every training batch;
a timing takes it exclusively. A second file gives the timing priority: a run stepping aside waits on
it, so a busy run cannot take the lock back before the waiting timing gets it. Locks are per machine
(files in the temporary folder), so Ray tasks on other nodes do not wait for each other."""
from __future__ import annotations

import fcntl
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class QuietLock:
    """One process's handle on the machine's timing lock."""

    def __init__(self, folder: Path | None = None) -> None:
        folder = Path(folder or tempfile.gettempdir())
        self._main = open(folder / "faircompress-quiet.lock", "a+")
        self._intent = open(folder / "faircompress-quiet-intent.lock", "a+")
        self._shared = False

    @contextmanager
    def running(self) -> Iterator[None]:
        """Hold the shared lock while a run computes (stepping aside at `step_aside`)."""
        self._take_shared()
        try:
            yield
        finally:
            self._release_shared()

    def step_aside(self) -> None:
        """Let a waiting timing go first (called between training batches)."""
        if self._shared:
            self._release_shared()
            self._take_shared()

    @contextmanager
    def timing(self) -> Iterator[None]:
        """Exclusive: no run of this machine computes until the block ends."""
        held = self._shared
        if held:
            self._release_shared()
        fcntl.flock(self._intent, fcntl.LOCK_EX)
        try:
            fcntl.flock(self._main, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._main, fcntl.LOCK_UN)
        finally:
            fcntl.flock(self._intent, fcntl.LOCK_UN)
            if held:
                self._take_shared()

    def _take_shared(self) -> None:
        fcntl.flock(self._intent, fcntl.LOCK_SH)  # waits while a timing has announced itself
        fcntl.flock(self._intent, fcntl.LOCK_UN)
        fcntl.flock(self._main, fcntl.LOCK_SH)
        self._shared = True

    def _release_shared(self) -> None:
        fcntl.flock(self._main, fcntl.LOCK_UN)
        self._shared = False


class _NoLock:
    """One run at a time: nothing else computes, so timing needs no lock."""

    @contextmanager
    def running(self) -> Iterator[None]:
        yield

    def step_aside(self) -> None: ...

    @contextmanager
    def timing(self) -> Iterator[None]:
        yield


_current: QuietLock | _NoLock = _NoLock()


def install(lock: QuietLock | _NoLock | None) -> None:
    """This process's lock: set by a worker process, left as none when runs go one by one."""
    global _current
    _current = lock if lock is not None else _NoLock()


def current() -> QuietLock | _NoLock:
    return _current


@contextmanager
def timed_quietly() -> Iterator[None]:
    """Around a measurement of speed."""
    with _current.timing():
        yield
