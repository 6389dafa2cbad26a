"""Study configuration: YAML validated by strict pydantic models.

Unknown keys, wrong types and impossible values are errors that name the field (and the YAML line).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, ValidationError, ValidationInfo,
                      field_validator, model_serializer, model_validator)

from .data.augment import AugmentSpec
from .data.dataset import InputShape
from .data.registry import DATASETS, declared_shape
from .data.tables import decode_utf8

if TYPE_CHECKING:
    import torch

    from .own_model import ResolvedModel


class ConfigError(Exception):
    """A config that cannot be used; the message names the file, line and field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatasetConfig(Strict):
    name: str = "synthetic"
    params: dict[str, Any] = Field(default_factory=dict, validate_default=True, description="the loader's parameters")
    cache: bool = Field(True, description="cache the prepared dataset as .npz")
    max_unreadable: float = Field(0.01, ge=0, le=1, description="a study stops when a larger share of a split's images "
                                  "cannot be read")
    augment: AugmentSpec | None = Field(None, description="offline augmentation: augmented copies of every training image "
                                        "(flip, shift-scale-rotate, blur, brightness-contrast), as the SFEW paper tripled its "
                                        "training set; val and test untouched")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        return DATASETS.check(v)

    @field_validator("params")
    @classmethod
    def _validate_params(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        name = info.data.get("name")
        if name is None:  # the name itself was invalid and is reported on its own
            return v
        try:
            # normalise to the loader's full parameter set so identity hashes are stable
            return DATASETS.get(name).params.model_validate(v).model_dump(mode="json")
        except ValidationError as e:
            raise ValueError(format_errors(e)) from None

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        if out.get("augment") is None:  # a study without augmentation dumps (and so plans its run ids) as before
            out.pop("augment", None)
        return out


class ModelConfig(Strict):
    """A registered model (`name`), your own named as `name: 'package.module:function'`, or your own
    defined in a Python file (`file`, `function`). Your own model is imported when the config loads."""

    name: str | None = Field(None, description="a registered model or 'package.module:function' (default paper_cnn)")
    file: Path | None = Field(None, description="a Python file defining your model's function")
    function: str | None = Field(None, description="the function in `file` that builds the model (default build)")
    params: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments of the model")
    sha256: str | None = Field(None, description="SHA-256 of the file defining your own model: set when the config loads; "
                                                 "a value given must match the file")
    params_sha256: dict[str, str] | None = Field(None, description="SHA-256 of each file a parameter names (a model's "
                                                 "`file_params`, e.g. pretrained weights): set when the config loads; "
                                                 "a value given must match the file")

    @model_validator(mode="after")
    def _resolve(self) -> "ModelConfig":
        from .own_model import DEFAULT_FUNCTION, OwnModelError, check_signature

        if self.file is not None and self.name is not None:
            raise ValueError("give name or file, not both")
        if self.function is not None and self.file is None:
            raise ValueError("function names the function in file; a module's function is given as name: 'package.module:function'")
        # normalised in place: assigning would validate again (validate_assignment)
        self.__dict__["name"] = self.name if self.name or self.file else "paper_cnn"
        self.__dict__["function"] = self.function or (DEFAULT_FUNCTION if self.file else None)
        try:
            resolved = self.resolved()
            check_signature(resolved, self.params)
        except OwnModelError as e:
            raise ValueError(str(e)) from None
        check = getattr(resolved.factory, "check_params", None)  # e.g. a weights file: refused before any run
        if check is not None:
            check(self.params)
        self.__dict__["params_sha256"] = self._file_param_hashes(resolved)
        if self.sha256 is not None and not resolved.own:
            raise ValueError(f"sha256 goes with your own model's file; {resolved.what} is a registered model")
        if self.sha256 is not None and self.sha256 != resolved.sha256:
            raise ValueError(f"sha256 is given as {self.sha256}, but {resolved.what} now comes from a file with SHA-256 "
                             f"{resolved.sha256}: the model's code changed")
        self.__dict__["sha256"] = resolved.sha256
        return self

    def _file_param_hashes(self, resolved: "ResolvedModel") -> dict[str, str] | None:
        """The content hash of every file a parameter names, so a study binds to the weights, not to
        where they lie; a given value that no longer matches means the file changed."""
        from .own_model import file_sha256

        found = {k: file_sha256(Path(self.params[k])) for k in getattr(resolved.factory, "file_params", ()) if self.params.get(k)}
        for key, sha in (self.params_sha256 or {}).items():
            if found.get(key) != sha:
                raise ValueError(f"params_sha256.{key} is given as {sha}, but params.{key} ({self.params.get(key)}) now has "
                                 f"SHA-256 {found.get(key)}: the file changed")
        return found or None

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}  # a registered model dumps as before

    @property
    def is_own(self) -> bool:
        return self.sha256 is not None

    def resolved(self) -> "ResolvedModel":
        from .own_model import resolve_model

        return resolve_model(self.name, self.file, self.function)

    def build(self, shape: InputShape) -> "torch.nn.Module":
        """The model for ``shape``; refuses an own model whose file changed since the config was loaded."""
        from .own_model import OwnModelError, build

        resolved = self.resolved()
        if resolved.sha256 != self.sha256:
            raise OwnModelError(f"model: {resolved.what} changed since the study's config was loaded (SHA-256 {self.sha256} -> "
                                f"{resolved.sha256}); its runs would mix two versions of the model")
        return build(resolved, self.params, shape)


class GridModel(ModelConfig):
    """One model of a study's `models` grid: a model as `model` gives it, the label that names its
    study (and its folder under output_dir), and training or dataset settings for this model only."""

    label: str | None = Field(None, description="names the model's study and folder (default: the model's name, with the "
                                                "parameters that tell two entries of one model apart)")
    train: dict[str, Any] = Field(default_factory=dict, description="train settings for this model only, over the study's")
    dataset: dict[str, Any] = Field(default_factory=dict, description="dataset settings for this model only, over the study's "
                                                                       "(e.g. params: {image_size: 224, channels: 3})")

    @field_validator("label")
    @classmethod
    def _folder_name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._=+-]{0,79}", v):
            raise ValueError(f"label {v!r} names a folder: use letters, digits and . _ = + - (up to 80), starting with a letter or digit")
        return v

    def as_model(self) -> dict[str, Any]:
        """The entry as a plain `model` (what its study's config holds)."""
        return self.model_dump(mode="json", exclude={"label", "train", "dataset"})

    def base_label(self) -> str:
        if self.file is not None:
            return self.file.stem
        return str(self.name).rsplit(":", 1)[-1].rsplit(".", 1)[-1]


def _param_text(value: Any) -> str:
    text = Path(value).stem if isinstance(value, str) and ("/" in value or "\\" in value) else str(value)
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text)[:24]


def grid_labels(entries: list[GridModel]) -> list[str]:
    """Each entry's label: its own, else the model's name, followed, where two entries share that
    name, by the parameters in which they differ (e.g. pca_mlp-hidden=30, pca_mlp-hidden=50)."""
    labels = []
    for entry in entries:
        if entry.label is not None:
            labels.append(entry.label)
            continue
        label = entry.base_label()
        twins = [e for e in entries if e.label is None and e.base_label() == label and e is not entry]
        keys = sorted({k for t in twins for k in set(t.params) | set(entry.params) if t.params.get(k) != entry.params.get(k)})
        labels.append("-".join([label, *(f"{k}={_param_text(entry.params.get(k))}" for k in keys)]))
    for i, label in enumerate(labels):
        if labels.index(label) != i:
            raise ValueError(f"models {labels.index(label)} and {i} would both be labelled {label!r}: give them labels")
    return labels


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over``'s values, mappings merged key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class TrainConfig(Strict):
    """The paper's recipe by default (DESIGN.md §2)."""

    epochs: int = Field(20, ge=1, le=10000)  # Dixit et al. train their MLP for 1,200
    batch_size: int = Field(32, ge=1, le=4096)
    lr: float = Field(5e-4, gt=0, le=1)
    plateau_factor: float = Field(0.1, gt=0, lt=1)
    plateau_patience: int = Field(2, ge=0)
    min_lr: float = Field(1e-5, ge=0)
    selection: Literal["val", "test"] = Field(
        "val", description="split that picks the best epoch; 'test' is the authors' protocol and leaks test data"
    )
    augment_flip: bool = True
    augment_rotation_deg: float = Field(10.0, ge=0, le=180)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    eval_batch_size: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _check_lr(self) -> "TrainConfig":
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) is above lr ({self.lr})")
        return self


class EvaluationConfig(Strict):
    """How exported variants are measured in ONNX Runtime."""

    latency: bool = Field(True, description="measure CPU latency (batch 1) and throughput")
    latency_runs: int = Field(50, ge=1, description="batch-1 runs; the median is reported")
    throughput_batch: int = Field(64, ge=1)
    threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads; 0 = all cores")
    memory: bool = Field(True, description="peak resident memory of loading and running each file (batch 1, then the "
                                           "throughput batch), over an empty process with ONNX Runtime imported; in a child process")


class TaskResources(Strict):
    """What one run asks of a Ray cluster (Ray schedules it where these are free)."""

    cpus: float = Field(1, gt=0, description="CPU cores per run; its PyTorch threads when execution.threads is 0")
    gpus: float = Field(0, ge=0, description="GPUs per run (train.device picks cuda where one is given)")


class ExecutionConfig(Strict):
    """How the study's runs are executed; never what they compute (not part of a run's identity).
    PyTorch's results depend on its thread count (the order of sums), so runs made with the same
    `threads` give the same predictions whichever executor ran them, one by one or side by side."""

    executor: str = Field("local", description="a registered executor (`faircompress plugins`): local, this machine; ray, "
                          "tasks on a Ray cluster (pip install 'faircompress[ray]')")
    workers: int = Field(1, ge=1, le=256, description="local: runs at once, each in its own process (1: one by one, in this process)")
    threads: int = Field(0, ge=0, le=1024, description="PyTorch threads of a variant's run; 0: PyTorch's default with one "
                         "worker, else the cores shared out (local) or resources.cpus (ray)")
    baseline_threads: int = Field(0, ge=0, le=1024, description="PyTorch threads of a baseline's training; 0: PyTorch's default "
                                  "(all cores; local: it runs alone, its variants wait for it), ray: as threads")
    address: str | None = Field(None, description="ray: the cluster's address (host:port, ray://host:port or auto); "
                                "none starts Ray on this machine")
    resources: TaskResources = Field(default_factory=TaskResources, description="ray: per run")
    retries: int = Field(2, ge=0, le=100, description="ray: a run whose worker dies is started again up to this many times")

    @field_validator("executor")
    @classmethod
    def _known(cls, v: str) -> str:
        from .execute import EXECUTORS

        return EXECUTORS.check(v)


WeightsFiles = Path | list[Path] | dict[int, Path]


class BaselineConfig(Strict):
    """Where each seed's baseline comes from: trained (the default), your trained weights, or your
    exported ONNX file. The files' SHA-256 are set when the config loads and are part of the study's identity."""

    weights: WeightsFiles | None = Field(None, description="a safetensors state dict of the model, evaluated and compressed "
                                         "instead of training: one file for every seed, a list (one per seed) or seed: file")
    onnx: Path | None = Field(None, description="your exported model taking (N, C, H, W) float pixels: quantised and measured; "
                              "export steps only, one seed")
    weights_sha256: dict[int, str] | None = Field(None, description="per seed, its weights file's SHA-256 (values given must match)")
    onnx_sha256: str | None = Field(None, description="the onnx file's SHA-256 (a value given must match)")

    @model_validator(mode="after")
    def _one_source(self) -> "BaselineConfig":
        if self.weights is not None and self.onnx is not None:
            raise ValueError("give weights or onnx, not both")
        if self.weights_sha256 is not None and self.weights is None or self.onnx_sha256 is not None and self.onnx is None:
            raise ValueError("a sha256 goes with its file (weights_sha256 with weights, onnx_sha256 with onnx)")
        return self

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}

    @property
    def source(self) -> Literal["train", "weights", "onnx"]:
        return "onnx" if self.onnx is not None else "weights" if self.weights is not None else "train"

    def weights_for(self, seed: int, seeds: list[int]) -> Path:
        """The weights file of ``seed``'s baseline (``seeds``: the study's, which a list of files follows)."""
        from .own_baseline import weights_per_seed

        assert self.weights is not None, "only for baseline.weights"
        return weights_per_seed(self.weights, seeds)[seed]


def _declared(dataset: DatasetConfig | None) -> InputShape | None:
    """The input shape the dataset's parameters fix (None when only loading it tells, or it is invalid)."""
    return declared_shape(dataset.name, dataset.params) if dataset is not None else None


def paper_grid(prune_levels: list[float], clusters: tuple[int, ...] = (4, 8, 16, 32, 64, 128)) -> list[list[dict[str, Any]]]:
    """The paper's experiment grid: int8 (weights) on the baseline; pruning and clustering at every
    level, each alone and followed by int8 (weights). The fp32 baseline export is always measured."""
    quant = {"quantize": {"mode": "int8-weights"}}
    prune = [[{"prune": {"sparsity": s}}] for s in prune_levels]
    cluster = [[{"cluster": {"clusters": n}}] for n in clusters]
    return [[quant], *prune, *cluster, *[r + [quant] for r in prune], *[r + [quant] for r in cluster]]


def _not_the_baseline(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not steps:  # the plan adds the empty recipe itself; listed, it would plan the same runs twice
        raise ValueError("an empty recipe is the fp32 baseline, which every study measures already; remove it")
    return steps


RecipeSteps = Annotated[list[dict[str, Any]], AfterValidator(_not_the_baseline)]  # per recipe, so errors name its line

CKPLUS_PRUNE_LEVELS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
RAFDB_PRUNE_LEVELS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


class StudyConfig(Strict):
    name: str = "synthetic"
    output_dir: Path = Field(Path("runs/synthetic"), description="study directory: results.sqlite and artefacts")
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    seeds: list[int] = Field(default_factory=lambda: [0], description="one baseline is trained per seed")
    baseline: BaselineConfig = Field(default_factory=BaselineConfig, description="trained (default), or your weights or ONNX file")
    recipes: list[RecipeSteps] = Field(
        default_factory=lambda: paper_grid(CKPLUS_PRUNE_LEVELS), validate_default=True,
        description="compression recipes, each a list of steps, applied to every baseline (default: the paper's CK+ grid)",
    )
    repeats: int = Field(3, ge=1, le=100, description="fine-tuning repeats per recipe (recipes with no fine-tuning run once)")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig, description="how runs are executed (never what they compute)")
    models: list[GridModel] | None = Field(None, min_length=2, description="several models (or one model with several "
                                           "parameter values), each run as its own study in output_dir/<label>/ with the "
                                           "same data, seeds and recipes, then compared side by side; instead of `model`")

    @model_serializer(mode="wrap")
    def _without_grid(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        if out.get("models") is None:
            out.pop("models", None)  # a one-model study dumps (and is stored) as before
        else:
            out.pop("model", None)  # a grid has no one model
        return out

    @field_validator("models")
    @classmethod
    def _label_and_check(cls, v: list[GridModel] | None, info: ValidationInfo) -> list[GridModel] | None:
        """Each model labelled, and its study's config checked now, so an error names the entry."""
        if v is None:
            return v
        labelled = [m.model_copy(update={"label": label}) for m, label in zip(v, grid_labels(v))]
        base = {k: x.model_dump(mode="json") if isinstance(x, BaseModel) else x for k, x in info.data.items()}
        for i, entry in enumerate(labelled):
            try:
                _grid_study(base, entry)
            except ValidationError as e:
                raise ValueError(f"models.{i} ({entry.label}): " + format_errors(e)) from None
        return labelled

    @model_validator(mode="after")
    def _one_kind_of_model(self) -> "StudyConfig":
        if self.models is None:
            return self
        if "model" in self.model_fields_set:
            raise ValueError("give model (one) or models (a grid), not both")
        if self.baseline.source != "train":
            raise ValueError("baseline.weights and baseline.onnx belong to one model; a models grid trains each model")
        return self

    @model_validator(mode="after")
    def _check_layer_names(self) -> "StudyConfig":
        """Per-layer pruning sparsities name layers the model has: checked now when the dataset's
        parameters fix the input shape (else when the study starts); a grid checks each model's study."""
        from .compress.layerwise import LayerwiseError, check_layer_names, has_layerwise

        shape = _declared(self.dataset)
        if self.models is not None or shape is None or self.baseline.source == "onnx" or not has_layerwise(self):
            return self
        try:
            check_layer_names(self, shape)
        except LayerwiseError as e:
            raise ValueError(str(e)) from None
        return self

    def study_of(self, i: int) -> "StudyConfig":
        """The study of the grid's ``i``-th model: this config with that model and its own settings, in output_dir/<label>."""
        assert self.models is not None, "only for a models grid"
        return _grid_study(self.model_dump(mode="json", exclude={"models"}), self.models[i])

    def studies(self) -> list["StudyConfig"]:
        """The studies this config runs: itself, or one per model of its grid."""
        return [self] if self.models is None else [self.study_of(i) for i in range(len(self.models))]

    @field_validator("model")
    @classmethod
    def _check_model_runs(cls, v: ModelConfig, info: ValidationInfo) -> ModelConfig:
        """Your own model is built, run and exported once now when the dataset's parameters fix its
        shape; otherwise when the study starts, right after the dataset is loaded."""
        from .own_model import OwnModelError, check_model

        shape = _declared(info.data.get("dataset"))
        if shape is not None and v.is_own:
            try:
                check_model(v.resolved(), v.params, shape)
            except OwnModelError as e:
                raise ValueError(str(e)) from None
        return v

    @field_validator("baseline")
    @classmethod
    def _check_baseline(cls, v: BaselineConfig, info: ValidationInfo) -> BaselineConfig:
        from .own_baseline import bind_onnx, bind_weights
        from .own_model import OwnModelError

        seeds, model = info.data.get("seeds"), info.data.get("model")
        if v.source == "train" or seeds is None:  # invalid seeds are reported on their own
            return v
        try:
            if v.source == "onnx":
                return bind_onnx(v, seeds, model, _declared(info.data.get("dataset")))
            return bind_weights(v, seeds, model, _declared(info.data.get("dataset")))
        except OwnModelError as e:
            raise ValueError(str(e)) from None

    @field_validator("recipes")
    @classmethod
    def _check_recipes(cls, v: list[list[dict[str, Any]]], info: ValidationInfo) -> list[list[dict[str, Any]]]:
        from .compress.recipes import RecipeError, parse_recipe

        source = getattr(info.data.get("baseline"), "source", None)
        out, seen = [], set()
        for i, raw in enumerate(v):
            try:
                recipe = parse_recipe(raw, f"recipe {i + 1}")
                if source == "onnx":
                    _export_steps_only(recipe, f"recipe {i + 1}")
                resets = [s.name for s in recipe.steps if s.needs_initial]
                if source == "weights" and resets:
                    raise RecipeError(f"recipe {i + 1}: step {resets[0]!r} resets weights to the ones the baseline's training "
                                      "started from, which baseline.weights does not give (only a baseline the study trains has them)")
            except RecipeError as e:
                raise ValueError(str(e)) from None
            if recipe.key() in seen:
                raise ValueError(f"recipe {i + 1} ({recipe.label}) is listed twice")
            seen.add(recipe.key())
            out.append(recipe.to_config())  # normalised: every parameter spelled out
        return out

    @field_validator("seeds")
    @classmethod
    def _check_seeds(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("at least one seed is needed")
        if len(set(v)) != len(v):
            raise ValueError(f"seeds repeat: {v}")
        return v


def _grid_study(base: dict[str, Any], entry: GridModel) -> StudyConfig:
    """The study config of one entry of a models grid, from the grid's config fields ``base`` (as JSON)."""
    raw = merged({k: v for k, v in base.items() if k not in ("model", "models")}, {"dataset": entry.dataset, "train": entry.train})
    raw |= {"model": entry.as_model(), "name": f"{base.get('name')}-{entry.label}",
            "output_dir": str(Path(base.get("output_dir", ".")) / str(entry.label))}
    return StudyConfig.model_validate(raw)


def _export_steps_only(recipe: Any, where: str) -> None:
    """With baseline.onnx there is no PyTorch model: only steps that transform the exported file apply."""
    from .compress.recipes import RecipeError

    if recipe.train_steps:
        raise RecipeError(f"{where}: step {recipe.train_steps[0].name!r} trains the PyTorch model, but baseline.onnx gives only an "
                          "exported file: with it a recipe can hold export steps only (quantize)")
    if recipe.export_precision != "fp32":
        raise RecipeError(f"{where}: {recipe.label} exports the PyTorch model in {recipe.export_precision}, which baseline.onnx "
                          "does not give")


# ----------------------------------------------------------------------------- loading
def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Load a study config from YAML (or the built-in default when ``path`` is None)."""
    raw: dict[str, Any] = {}
    root = None
    if path is not None:
        path = Path(path)
        raw, root = _read_yaml(path)
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    try:
        return StudyConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_describe(e, path, root)) from None


def _read_yaml(path: Path) -> tuple[dict[str, Any], yaml.Node]:
    """A config file's mapping and its node tree (for line numbers). The file must be UTF-8 (a BOM
    is fine), not empty, and give no key twice in one mapping."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
    text = decode_utf8(data, path, ConfigError)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if raw is None:  # no text, only comments, or a lone null: most likely a truncated or wrong file
        raise ConfigError(f"{path}: the config is empty (to run the built-in default study, give no config)")
    _refuse_duplicate_keys(path, root, "", set())
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of fields")
    return raw, root


def _refuse_duplicate_keys(path: Path, node: yaml.Node, where: str, seen: set[int]) -> None:
    """PyYAML silently keeps the last of a key given twice in one mapping; a config refuses it, at any depth."""
    if id(node) in seen:  # an alias of a node already checked
        return
    seen.add(id(node))
    children: list[tuple[str, yaml.Node]] = []
    if isinstance(node, yaml.SequenceNode):
        children = [(str(i), item) for i, item in enumerate(node.value)]
    elif isinstance(node, yaml.MappingNode):
        lines: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":  # '<<' merges may override
                line, first = key.start_mark.line + 1, lines.get((key.tag, key.value))
                if first is not None:
                    at = f"line {line}" if first == line else f"lines {first} and {line}"
                    raise ConfigError(f"{path}: key {key.value!r} is given twice ({at})" + (f" under {where}" if where else ""))
                lines[key.tag, key.value] = line
            children.append((str(key.value), value))
    for name, child in children:
        _refuse_duplicate_keys(path, child, f"{where}.{name}" if where else name, seen)


def _describe(err: ValidationError, path: Path | None, root: yaml.Node | None) -> str:
    where = str(path) if path else "config"
    lines = [f"{where}: invalid config"]
    for item in err.errors():
        loc = [str(x) for x in item["loc"]]
        field = ".".join(loc) or "(top level)"
        line = _line_of(root, item["loc"])
        at = f" (line {line})" if line else ""
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"  {field}{at}: {msg}")
    return "\n".join(lines)


def format_errors(err: ValidationError) -> str:
    """One line per error of a nested model, as 'sub.field: message'."""
    parts = []
    for item in err.errors():
        field = ".".join(str(x) for x in item["loc"]) or "(top level)"
        msg = "unknown field" if item["type"] == "extra_forbidden" else item["msg"].removeprefix("Value error, ")
        parts.append(f"{field}: {msg}")
    return "; ".join(parts)


def _line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    """1-based YAML line of the deepest node along ``loc`` that exists."""
    line = None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == str(key)), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
    return line


def dump_config(cfg: StudyConfig) -> str:
    """YAML with innermost mappings and lists in flow style, so each recipe step is one line."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, default_flow_style=None, width=120)
