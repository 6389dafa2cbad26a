"""A study: the grid of runs one config describes, executed resumably into a results store."""
from __future__ import annotations

import fcntl
import hashlib
import json
import platform
import subprocess
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .config import StudyConfig, dump_config
from .data.registry import DATASETS, cache_key, default_cache_dir, load_dataset
from .store import ResultStore, RunResult, StoreError

PROTOCOL_VERSION = 1  # bump when a change makes old results incomparable


def _hash(obj: Any, n: int = 20) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:n]


@dataclass(frozen=True)
class RunSpec:
    kind: str                     # "baseline" (training) or "variant" (a recipe applied to a baseline)
    label: str
    seed: int                     # baseline seed
    identity: dict[str, Any]
    recipe: list[dict[str, Any]] | None = None
    repeat: int = 0
    baseline_id: str | None = None

    @property
    def run_id(self) -> str:
        return _hash(self.identity)

    @property
    def tune_seed(self) -> int:
        return 1000 * (self.repeat + 1) + self.seed

    @property
    def prefix_id(self) -> str:
        """Identity of the fine-tuned PyTorch model this variant exports: recipes that share their
        training steps (e.g. prune 50 % and prune 50 % + int8) share it, so it is trained once."""
        from .compress.recipes import parse_recipe

        recipe = parse_recipe(self.recipe or [])
        if not recipe.train_steps:
            return self.baseline_id or ""
        return _hash({"baseline": self.baseline_id, "steps": recipe.key(recipe.train_steps), "repeat": self.repeat})


def plan(cfg: StudyConfig) -> list[RunSpec]:
    """Every run the study needs, in execution order: baselines, then each baseline's variants
    (its fp32 export first, then every recipe x repeat; recipes without fine-tuning run once)."""
    from .compress.recipes import parse_recipe

    train = cfg.train.model_dump(mode="json", exclude={"device", "eval_batch_size"})  # these do not change results
    base = {
        "protocol": PROTOCOL_VERSION,
        "dataset": cfg.dataset.model_dump(mode="json", exclude={"cache"}),
        "model": cfg.model.model_dump(mode="json"),
        "train": train,
    }
    evaluation = cfg.evaluation.model_dump(mode="json", exclude={"threads"})
    specs = [RunSpec("baseline", f"baseline seed={s}", s, {**base, "kind": "baseline", "seed": s}) for s in cfg.seeds]
    variants = []
    for b in specs:
        for raw in [[], *cfg.recipes]:
            recipe = parse_recipe(raw)
            repeats = cfg.repeats if recipe.train_steps else 1
            for r in range(repeats):
                ident = {"kind": "variant", "baseline": b.run_id, "recipe": recipe.to_config(), "repeat": r, "evaluation": evaluation}
                label = f"{recipe.label} | seed={b.seed}" + (f" rep={r}" if repeats > 1 else "")
                variants.append(RunSpec("variant", label, b.seed, ident, recipe.to_config(), r, b.run_id))
    return specs + variants


def package_versions() -> dict[str, str]:
    import fairlearn
    import numpy
    import torch

    from . import __version__

    return {"faircompress": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "fairlearn": fairlearn.__version__}


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass
class StudyReport:
    ran: list[str]
    skipped: list[str]
    failed: dict[str, str]


class Hooks:
    """Progress callbacks; the CLI fills these with rich output, tests leave them quiet."""

    def run_started(self, spec: RunSpec, index: int, total: int) -> None: ...
    def run_skipped(self, spec: RunSpec) -> None: ...
    def run_finished(self, spec: RunSpec, result: RunResult) -> None: ...
    def run_failed(self, spec: RunSpec, error: str) -> None: ...
    def batch(self, epoch: int, done: int, total: int) -> None: ...
    def epoch(self, log: Any) -> None: ...


def run_study(cfg: StudyConfig, hooks: Hooks | None = None) -> StudyReport:
    """Run every planned run that is not finished yet. Failures are recorded and the study goes on."""
    out = Path(cfg.output_dir)
    store = ResultStore(out)
    try:
        with study_lock(out):
            return _run_locked(cfg, hooks or Hooks(), out, store)
    finally:
        store.close()


@contextmanager
def study_lock(out: Path) -> Iterator[None]:
    """One process per study directory: a second `faircompress run` on it stops instead of racing."""
    fh = open(out / ".lock", "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise StoreError(f"{out}: another faircompress process is running this study; wait for it or stop it") from None
    try:
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def _run_locked(cfg: StudyConfig, hooks: Hooks, out: Path, store: ResultStore) -> StudyReport:
    tmp = out / "config.yaml.tmp"
    tmp.write_text(dump_config(cfg))
    tmp.replace(out / "config.yaml")
    specs = plan(cfg)
    todo = [s for s in specs if store.status(s.run_id) != "finished"]
    report = StudyReport(ran=[], skipped=[s.run_id for s in specs if s not in todo], failed={})
    for s in specs:
        if s not in todo:
            hooks.run_skipped(s)
    if not todo:
        return report

    ds_params = DATASETS.get(cfg.dataset.name).params.model_validate(cfg.dataset.params)
    data = load_dataset(cfg.dataset.name, ds_params, default_cache_dir() if cfg.dataset.cache else None)
    test = data.indices("test")
    store.record_samples(cache_key(cfg.dataset.name, ds_params), data.name, data.class_names, data.attribute_groups, test,
                         data.subjects[test], data.labels[test], {a: v[test] for a, v in data.attributes.items()})
    versions, commit = package_versions(), git_commit()
    for i, spec in enumerate(todo):
        hooks.run_started(spec, i, len(todo))
        store.start_run(spec.run_id, study=cfg.name, kind=spec.kind, label=spec.label, seed=spec.seed,
                        config=cfg.model_dump(mode="json"), versions=versions, git_commit=commit,
                        recipe=spec.recipe, repeat=spec.repeat, baseline_id=spec.baseline_id)
        try:
            if spec.kind == "baseline":
                result = _execute(cfg, spec, data, out / "runs" / spec.run_id, hooks)
            else:
                from .variants import run_variant

                result = run_variant(cfg, spec, data, out, hooks)
            result.artefact = str(Path(result.artefact).relative_to(out))
            store.finish_run(spec.run_id, result)
        except Exception as e:  # a failed run is recorded; the study carries on
            msg = f"{type(e).__name__}: {e}"
            store.fail_run(spec.run_id, msg + "\n" + traceback.format_exc(limit=8))
            report.failed[spec.run_id] = msg
            hooks.run_failed(spec, msg)
        else:
            report.ran.append(spec.run_id)
            hooks.run_finished(spec, result)
    return report


def _execute(cfg: StudyConfig, spec: RunSpec, data, art: Path, hooks: Hooks) -> RunResult:
    """Train (or reuse the checkpoint of an interrupted run), then evaluate on the test split."""
    import torch  # the training stack is imported only when a study runs

    from .evaluate.metrics import evaluate_predictions
    from .models import build_model
    from .train import FitResult, fit, load_checkpoint, predict, resolve_device, save_checkpoint

    t0 = time.perf_counter()
    torch.manual_seed(spec.seed)  # the seed fixes the initial weights too
    model = build_model(cfg.model.name, in_channels=data.channels, num_classes=data.num_classes,
                        input_size=data.image_size[0], **cfg.model.params)
    ckpt = art / "model.safetensors"
    if ckpt.exists():  # trained before an interruption (killed before its results were stored): reuse
        fitres = FitResult.from_json(load_checkpoint(model, ckpt)["fit"])
    else:
        fitres = fit(model, data, cfg.train, spec.seed, state_path=art / "train_state.safetensors",
                     on_batch=hooks.batch, on_epoch=hooks.epoch)
        save_checkpoint(model, ckpt, {"run_id": spec.run_id, "identity": json.dumps(spec.identity), "fit": fitres.to_json()})
        (art / "train_state.safetensors").unlink(missing_ok=True)
    t1 = time.perf_counter()
    device = resolve_device(cfg.train.device)
    test = data.indices("test")
    y_pred = predict(model.to(device), data.images[test], cfg.train.eval_batch_size, device)
    ev = evaluate_predictions(data.labels[test], y_pred, data.class_names,
                              {a: v[test] for a, v in data.attributes.items()}, data.attribute_groups)
    return RunResult(
        metrics=ev.scalars() | {"best_epoch": fitres.best_epoch, "best_sel_acc": fitres.best_sel_acc},
        class_metrics=ev.per_class, group_metrics=ev.groups, epochs=[vars(h) for h in fitres.history],
        sample_ids=test, y_true=data.labels[test], y_pred=y_pred,
        timings={"train_s": fitres.seconds, "setup_s": t1 - t0 - fitres.seconds, "eval_s": time.perf_counter() - t1},
        device=str(device), precision=fitres.precision, selection=cfg.train.selection, artefact=str(ckpt),
    )
