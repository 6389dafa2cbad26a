"""How a study's runs are executed: one by one in this process, side by side in local worker
processes, or as tasks on a Ray cluster. An executor is one file in `executors/` that registers a
class taking the study's `ExecutionConfig`; it only decides where and when runs execute. Whatever
executes them, the driver (`Driver`) is the store's single writer and a run computes the same thing."""
from __future__ import annotations

from typing import Protocol

from ..config import ExecutionConfig
from ..registry import Registry
from .driver import Batch, Driver
from .graph import Schedule, dependencies
from .worker import Outcome, execute


class Executor(Protocol):
    settings_used: tuple[str, ...]  # the `ExecutionConfig` fields it reads (`faircompress plugins` lists them)

    def __init__(self, settings: ExecutionConfig) -> None: ...

    def describe(self) -> str:
        """One line for the study's log: where its runs execute, how many at once, with how many threads."""
        ...

    def run(self, batch: Batch, driver: Driver) -> None:
        """Execute every run of ``batch``, telling ``driver`` as each starts and ends; return when all have."""
        ...


EXECUTORS: Registry[type[Executor]] = Registry("executor", "faircompress.execute.executors")

__all__ = ["EXECUTORS", "Batch", "Driver", "Executor", "Outcome", "Schedule", "dependencies", "execute"]
