"""A study is bound to one dataset and one plan: the store records the dataset's content key (with
every file's hash) and the config fields that change what a run computes, and a later `run` with a
different dataset or plan is refused, saying what changed. Seeds, recipes and repeats may be added
(new runs of the same question); the device, caching and measurement settings may differ."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .data.identity import Manifest
from .data.registry import DatasetIdentity
from .plan import result_fields

_SHOWN = 4  # changed fields named in a refusal


class BindingError(Exception):
    """The study directory holds runs of another dataset or plan; the message says what changed."""


@dataclass(frozen=True)
class StudyBinding:
    dataset: str            # the dataset's key: loader, parameters and files' content
    plan: dict[str, Any]    # the result-changing config fields (`plan.result_fields`)

    def to_json(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "plan": self.plan}

    @classmethod
    def from_json(cls, blob: dict[str, Any]) -> "StudyBinding":
        return cls(blob["dataset"], blob["plan"])


def binding_for(cfg: Any, ident: DatasetIdentity) -> StudyBinding:
    return StudyBinding(ident.key, result_fields(cfg))


def refusal(recorded: StudyBinding, files: dict[str, str], now: StudyBinding, manifest: Manifest) -> str | None:
    """Why a study bound to ``recorded`` (with dataset ``files``) cannot take runs of ``now``; None if it can."""
    reasons = []
    fields = changed_fields(recorded.plan, now.plan)
    if fields:
        shown = "; ".join(f"{name}: {old} -> {new}" for name, old, new in fields[:_SHOWN])
        more = f" (and {len(fields) - _SHOWN} more)" if len(fields) > _SHOWN else ""
        reasons.append(f"the config changed what runs compute ({shown}{more})")
    if recorded.dataset != now.dataset and not fields:
        change = manifest.changes(Manifest(files))
        reasons.append(f"the dataset's files changed since its runs were made ({change})" if change
                       else "the dataset's loader now prepares the images differently (a new faircompress version)")
    return "; ".join(reasons) or None


def changed_fields(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(dotted field, old value, new value) for every leaf that differs."""
    old, new = _flatten(before), _flatten(after)
    missing = "(unset)"
    return [(k, str(old.get(k, missing)), str(new.get(k, missing))) for k in sorted(old.keys() | new.keys())
            if old.get(k, missing) != new.get(k, missing)]


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out
