"""A study is bound to one dataset and one plan: the store records the dataset's content key (with
every file's hash) and the config fields that change what a run computes, and a later `run` with a
different dataset or plan is refused, saying what changed. Seeds, recipes and repeats may be added
(new runs of the same question); the device, caching and measurement settings may differ."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data.dataset import FaceDataset
from .data.identity import Manifest
from .data.registry import DatasetIdentity
from .plan import result_fields
from .store import ResultStore

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


def check_binding(out: Path, store: ResultStore, now: StudyBinding, ident: DatasetIdentity, test: list[tuple]) -> None:
    """Raise `BindingError` when the study at ``out`` was made on another dataset or plan; bind a
    study that is not bound yet (adopting the runs an older version made, when they fit)."""
    recorded = store.binding()
    if recorded is None:
        old_keys = adoptable(out, store, now, ident, test)
        store.adopt(old_keys, ident.key, now.to_json(), ident.manifest.files)
        return
    before = StudyBinding.from_json(recorded[0])
    why = refusal(before, recorded[1], now, ident.manifest)
    if why:
        raise BindingError(f"{out}: this study holds runs of another question: {why}. Its results cannot be pooled with "
                           "new runs: run into a new directory (--out DIR), or restore the dataset and config it was made with")
    merged = _with_added_seeds(before.plan, now.plan)
    if merged != before.plan:  # the added seeds' weights are bound too, so a later change to them is refused
        store.bind(StudyBinding(before.dataset, merged).to_json(), recorded[1])


def adoptable(out: Path, store: ResultStore, now: StudyBinding, ident: DatasetIdentity, test: list[tuple]) -> list[str]:
    """The dataset keys of a study made before studies were bound, when every one holds exactly the
    test samples the dataset gives now and every run was made with this plan; else `BindingError`.
    Nothing is written here: the caller moves them all in one transaction."""
    keys = [k for (k,) in store.conn.execute("SELECT dataset_key FROM datasets").fetchall() if k != ident.key]
    if any(store.sample_rows(k) != test for k in keys):
        raise BindingError(f"{out}: this study's runs were scored on another test set than the {ident.name} dataset gives now; "
                           "run into a new directory (--out DIR)")
    for (config_json,) in store.conn.execute("SELECT DISTINCT config_json FROM runs WHERE status='finished'").fetchall():
        fields = changed_fields(result_fields(json.loads(config_json)), now.plan)
        if fields:
            shown = "; ".join(f"{name}: {old} -> {new}" for name, old, new in fields[:_SHOWN])
            raise BindingError(f"{out}: this study holds runs made with another config ({shown}); "
                               "run into a new directory (--out DIR), or restore the config it was made with")
    return keys


def test_rows(data: FaceDataset) -> list[tuple]:
    """The test samples as the store keeps them: (sample, subject, label, attributes_json)."""
    test = data.indices("test")
    return [(int(i), str(data.subjects[i]), int(data.labels[i]), json.dumps({a: int(v[i]) for a, v in data.attributes.items()}))
            for i in test]


def refusal(recorded: StudyBinding, files: dict[str, str], now: StudyBinding, manifest: Manifest) -> str | None:
    """Why a study bound to ``recorded`` (with dataset ``files``) cannot take runs of ``now``; None if it can."""
    reasons = []
    fields = changed_fields(*_common_seeds(recorded.plan, now.plan))
    if fields:
        shown = "; ".join(f"{name}: {old} -> {new}" for name, old, new in fields[:_SHOWN])
        more = f" (and {len(fields) - _SHOWN} more)" if len(fields) > _SHOWN else ""
        reasons.append(f"the config changed what runs compute ({shown}{more})")
    change = manifest.changes(Manifest(files)) if recorded.dataset != now.dataset else ""
    if change:
        reasons.append(f"the dataset's files differ from those its runs were made with ({change})")
    elif recorded.dataset != now.dataset and not fields:
        reasons.append("the dataset's loader now prepares the images differently (a new faircompress version)")
    return "; ".join(reasons) or None


def _seed_weights(plan: dict[str, Any]) -> dict[str, str] | None:
    return plan.get("baseline", {}).get("weights_sha256")


def _common_seeds(before: dict[str, Any], after: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The plans with given weights compared on the seeds both have: a seed added or left out is
    more (or less) of the same question, like seeds themselves."""
    old, new = _seed_weights(before), _seed_weights(after)
    if old is None or new is None:
        return before, after
    common = sorted(old.keys() & new.keys())
    return ({**before, "baseline": {"weights_sha256": {k: old[k] for k in common}}},
            {**after, "baseline": {"weights_sha256": {k: new[k] for k in common}}})


def _with_added_seeds(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    old, new = _seed_weights(before), _seed_weights(after)
    if old is None or new is None or new.keys() <= old.keys():
        return before
    return {**before, "baseline": {"weights_sha256": {**old, **new}}}


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
