"""Configs: configs/base.yaml < experiment file < `section.key=value` overrides, validated.

`configs/base.yaml` holds every default, documented; this module holds only the types and the
allowed choices, so a default is written in exactly one place.
"""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from src.core.tasks import FORMATS, KINDS, TASKS
from src.core.utils import UserError, atomic_write_text


def _configs_dir() -> Path:
    """The repository's configs/: beside the src package (a checkout, an editable install, a Kaggle
    bundle's code folder), else in the working directory (the package installed from a wheel and
    run from the repository)."""
    beside = Path(__file__).resolve().parents[2] / "configs"
    return beside if (beside / "base.yaml").is_file() else Path.cwd() / "configs"


CONFIG_DIR = _configs_dir()
DEFAULT_CONFIG = CONFIG_DIR / "resnext101.yaml"
CLI = "the command line"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Numeric ranges: a value outside one stops the run naming the key, before anything is written.
Count = Annotated[int, Field(ge=1)]  # at least one
NonNeg = Annotated[int, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]
NonNegF = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]  # a probability or a share


class ExperimentCfg(_Section):
    name: str | None
    seed: int
    output_dir: str

    @field_validator("name", mode="before")
    @classmethod
    def _number_name(cls, v):
        # `experiment.name=123` reads as a YAML number; a name is its text.
        return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


STACKERS = ("logreg", "ridge")  # second-level models src.ensemble --stack fits (src/evaluation/stacking.py)
PROBE_CLASSIFIERS = ("logreg", "rf", "svm", "ridge")  # src.probe's classifiers (src/analysis/probe.py)


class DataCfg(_Section):
    dir: str | None  # None: no competition named yet; the commands that need one stop (src.core.cli)
    task: str  # one of core/tasks/'s TASKS
    label_sep: str
    label_cols: list[str] | Literal["all"] | None
    layout: Literal["csv", "imagefolder", "filename", "coco", "pixels"]
    label_pattern: str | None
    annotations: str | None
    test_annotations: str | None
    train_csv: str
    image_dir: str
    test_dir: str
    sample_submission: str
    solution: str
    id_col: str
    label_col: str
    group_col: str | None
    image_exts: Annotated[list[str], Field(min_length=1)]
    dicom_window: tuple[float, float] | None  # (center, width); None: each file's own
    na_labels: Literal["error", "keep"]
    bad_images: Literal["error", "skip"]
    check_images: bool
    cache: bool
    cache_dir: str | None
    n_folds: int
    fold_seed: int
    pseudo: str | None
    relabel: str | None
    target_range: list[float] | None  # regression: [lo, hi]
    # Several images per answer (RSNA mammography's views of a breast, cdiscount's product photos): images train as
    # images, and folds, scores and the submission work on answers (src/data/answers.py).
    answer_id: str | None  # a column of train.csv and data.test_csv, or a template of columns: '{patient_id}_{laterality}'
    aggregate: Literal["mean", "max"]  # how an answer's image predictions combine (the task's aggregate)
    answer_col: str | None  # the sample submission's id column when it names answers; None: data.id_col
    # image + metadata (src/data/meta_table.py): tabular columns beside each image, and the test table holding them
    meta_cols: list[str] | Literal["auto"] | None
    test_csv: str  # the test table relative to data.dir: metadata, the answer's columns, or pixels (.csv, .json)
    # issue 29: pixel tables (data.layout=pixels), arrays and image containers (src/data/pixels.py, image_store.py)
    pixel_prefix: str  # the pixel columns' common prefix (pixel0, pixel1, ...)
    pixel_shape: list[int] | None  # [H, W] or [H, W, C] each row's pixels are reshaped to
    pixel_cols: list[str] | None  # JSON records: list columns, each H*W values, stacked as channels
    image_store: str | None  # an HDF5 file relative to data.dir: training images keyed by id
    test_image_store: str | None  # the same for the test images

    @field_validator("target_range")
    @classmethod
    def _range(cls, v):
        if v is not None and (len(v) != 2 or not v[0] < v[1]):
            raise ValueError(f"data.target_range={v} is no range; give [lo, hi] with lo < hi, e.g. [1, 100]")
        return v

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        if v not in TASKS:
            raise ValueError(f"data.task={v} is not a task; use one of {', '.join(KINDS)}")
        return v

    @model_validator(mode="after")
    def _check(self):
        if self.n_folds < 2:
            raise ValueError("data.n_folds must be at least 2")
        if self.dicom_window is not None and self.dicom_window[1] < 1:
            raise ValueError(f"data.dicom_window={list(self.dicom_window)} has a width below 1; give [center, width] "
                             "with a width of 1 or more (e.g. [40, 400] for a CT soft-tissue window), or null")
        if self.cache_dir is not None and not self.cache_dir.strip():
            raise ValueError("data.cache_dir is empty; name a folder for the image cache, or null for "
                             "<experiment.output_dir>/cache (data.cache=false turns it off)")
        refusal = TASKS[self.task].check_data(self) or TASKS[self.task].check_aggregate(self.aggregate)
        if refusal:
            raise ValueError(refusal)
        if self.answer_id is not None and self.layout != "csv":
            raise ValueError(f"data.answer_id groups the rows of train.csv and {self.test_csv}, which needs "
                             f"data.layout=csv (this is {self.layout}); set data.answer_id to null")
        if self.pixel_shape is not None and not (2 <= len(self.pixel_shape) <= 3 and min(self.pixel_shape) >= 1):
            raise ValueError(f"data.pixel_shape={self.pixel_shape} is no image shape; give [H, W] or [H, W, C], "
                             "e.g. [28, 28]")
        if (self.layout == "pixels") != (self.pixel_shape is not None):
            raise ValueError("data.layout=pixels reshapes each table row's pixels to data.pixel_shape ([H, W] or "
                             "[H, W, C], e.g. [28, 28]); set both, or neither")
        if self.layout == "filename" and self.label_pattern is None:
            raise ValueError("data.layout=filename needs data.label_pattern, a regular expression whose group is "
                             r"the label in a file name, e.g. '^(cat|dog)\.' for train/cat.0.jpg")
        if (self.layout == "coco") != (self.annotations is not None):
            raise ValueError("data.layout=coco reads its training table from data.annotations, a COCO-style JSON "
                             "relative to data.dir (e.g. train2019.json); set both, or neither")
        if self.meta_cols is not None and self.layout != "csv":
            raise ValueError(f"data.meta_cols reads metadata columns from data.train_csv, which data.layout={self.layout} "
                             "has none of; use data.layout=csv or set data.meta_cols=null")
        if self.label_pattern is not None:
            try:
                groups = re.compile(self.label_pattern).groups
            except re.error as e:
                raise ValueError(f"data.label_pattern '{self.label_pattern}' is not a regular expression ({e})") from None
            if groups != 1:
                raise ValueError(f"data.label_pattern '{self.label_pattern}' has {groups} groups; give it exactly one, "
                                 r"the label, e.g. '^(cat|dog)\.'")
        return self


class LoaderCfg(_Section):
    batch_size: Count
    num_workers: int | Literal["auto"]
    pin_memory: bool
    persistent_workers: bool

    @field_validator("num_workers")
    @classmethod
    def _workers(cls, v):
        if v != "auto" and v < 0:
            raise ValueError(f"loader.num_workers={v} is out of range: give 0 or more, or auto")
        return v


class AugCfg(_Section):
    img_size: Annotated[int, Field(ge=8)]
    crop_pct: Annotated[float, Field(gt=0, le=1)]
    rotate: Annotated[float, Field(ge=0, le=180)]
    shift: Fraction
    shear: Annotated[float, Field(ge=0, lt=90)]
    zoom: tuple[Positive, Positive]
    affine_p: Fraction
    border_mode: Literal["wrap", "reflect", "constant", "nearest"]
    hflip: bool
    vflip: bool
    mean: tuple[float, ...] | None  # one per image channel
    std: tuple[Positive, ...] | None
    size_schedule: list[tuple[NonNeg, Annotated[int, Field(ge=8)]]] | None

    @model_validator(mode="after")
    def _check(self):
        if self.zoom[0] > self.zoom[1]:
            raise ValueError(f"aug.zoom is [low, high]; got low {self.zoom[0]} above high {self.zoom[1]}")
        sched = self.size_schedule
        if sched is not None:
            starts = [e for e, _ in sched]
            if not sched or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
                raise ValueError(f"aug.size_schedule {sched} must start at epoch 0 with increasing epochs, "
                                 "e.g. [[0, 160], [4, 224], [8, 288]]")
            if sched[-1][1] != self.img_size:
                raise ValueError(f"aug.size_schedule ends at {sched[-1][1]} px but aug.img_size is {self.img_size}; "
                                 "evaluation runs at aug.img_size, so end the schedule there")
        return self


class ModelCfg(_Section):
    name: str
    pretrained: bool
    pretrained_path: str | None
    drop_rate: Annotated[float, Field(ge=0, lt=1)]
    drop_path_rate: Annotated[float, Field(ge=0, lt=1)]
    grad_checkpointing: bool
    freeze_before: str | None
    freeze_stages: Count | None
    unfreeze_epoch: NonNeg | None
    backbone_lr_mult: Positive
    # the metadata branch (data.meta_cols; src/models/meta_model.py): MLP widths and embedding width cap
    meta_hidden: Annotated[list[Count], Field(min_length=1)]
    meta_dropout: Annotated[float, Field(ge=0, lt=1)]
    meta_emb_dim: Count
    # issue 29: images of any channel count (timm's in_chans); null = the training images' count
    in_chans: Count | None

    @model_validator(mode="after")
    def _check(self):
        if self.freeze_before is not None and self.freeze_stages is not None:
            raise ValueError("set model.freeze_before or model.freeze_stages, not both (null the other)")
        return self


class LossCfg(_Section):
    name: Literal["ce", "focal", "asl", "mse", "smooth_l1", "bce"]
    smoothing: Annotated[float, Field(ge=0, lt=1)]
    gamma: NonNegF
    alpha: list[NonNegF] | None
    class_weights: Literal["balanced"] | list[NonNegF] | None
    distill_from: str | None
    distill_weight: Fraction
    distill_temperature: Positive


class OptimCfg(_Section):
    name: Literal["adam", "adamw", "sgd", "rmsprop"]
    lr: Positive | Literal["find"]
    weight_decay: NonNegF
    momentum: Annotated[float, Field(ge=0, lt=1)]
    nesterov: bool
    layer_decay: Annotated[float, Field(gt=0, le=1)] | None
    find_start_lr: Positive
    find_end_lr: Positive
    find_steps: Annotated[int, Field(ge=10)]
    find_rule: Literal["valley", "steepest", "minimum"]
    meta_lr_mult: Positive  # data.meta_cols: lr multiplier of the metadata branch (its MLP and embeddings)

    @model_validator(mode="after")
    def _check(self):
        if self.find_start_lr >= self.find_end_lr:
            raise ValueError(f"optim.find_start_lr ({self.find_start_lr}) must be below optim.find_end_lr "
                             f"({self.find_end_lr})")
        return self

    @property
    def peak_lr(self) -> float:
        """The learning rate, once `find` has been resolved (src.training.lr_finder.resolve_lr)."""
        if self.lr == "find":
            raise RuntimeError("optim.lr=find must be resolved (src.training.lr_finder.resolve_lr) before training")
        return float(self.lr)


class SchedCfg(_Section):
    name: Literal["cosine", "step", "plateau", "onecycle", "none"]
    warmup_epochs: NonNeg
    warmup_steps: NonNeg
    warmup_lr: NonNegF
    min_lr: NonNegF
    step_epochs: Count
    decay_rate: Annotated[float, Field(gt=0, le=1)]
    patience: NonNeg

    @model_validator(mode="after")
    def _check(self):
        if self.warmup_epochs and self.warmup_steps:
            raise ValueError("set sched.warmup_epochs or sched.warmup_steps, not both (0 the other)")
        if self.warmup_steps and self.name in ("onecycle", "none"):
            raise ValueError(f"sched.warmup_steps warms up cosine, step and plateau schedules; sched.name={self.name} "
                             "has none (onecycle warms up by itself): set it to 0")
        return self

    def warmup_updates(self, updates_per_epoch: int) -> int:
        """Optimizer updates of linear warmup: warmup_steps, or warmup_epochs whole epochs."""
        return self.warmup_steps or self.warmup_epochs * updates_per_epoch


class RuntimeCfg(_Section):
    device: Literal["auto", "cuda", "mps", "cpu"]
    amp: Literal["auto", "bf16", "fp16", "off"]
    channels_last: bool
    deterministic: bool

    @field_validator("amp", mode="before")
    @classmethod
    def _yaml_off(cls, v):
        # YAML 1.1 reads a bare `off` as False.
        return "off" if v is False else v


class TrainCfg(_Section):
    epochs: Count
    min_steps: NonNeg
    accum_steps: Count
    clip_grad: Positive | None
    ema: bool
    ema_decay: Annotated[float, Field(gt=0, lt=1)]
    swa: bool
    swa_epochs: Count
    keep_top: Count
    mixup: NonNegF
    cutmix: NonNegF
    mix_prob: Fraction
    monitor: Literal["metric", "loss"]
    early_stopping: Count | None
    limit_batches: Count | None
    compile: bool


# The spelling of metric names; what each one computes, its direction and the tasks it scores are
# in src.evaluation.metrics (a test checks that the two agree).
METRIC_NAMES = ("accuracy, balanced_accuracy, f1_macro (f<beta>_macro|micro|weighted|samples[@0]), roc_auc, pauc[@0.8], "
                "average_precision, log_loss, qwk, map@<k>, gap, top1_error, weighted_auc, pfbeta[@1], rmse, mae, r2")
METRIC_NAME_PATTERN = re.compile(r"^(accuracy|balanced_accuracy|roc_auc|average_precision|log_loss|qwk|gap"
                          r"|top1_error|weighted_auc|rmse|mae|r2|pfbeta(@\d+(\.\d+)?)?"
                          r"|f\d+(\.\d+)?_(macro|micro|weighted|samples(@0)?)|map@[1-9]\d*|pauc(@0?\.\d+)?)$")


class MetricCfg(_Section):
    name: str

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if not METRIC_NAME_PATTERN.match(v):
            raise ValueError(f"metric.name '{v}' is not a metric; use one of {METRIC_NAMES}")
        return v


class WandbCfg(_Section):
    mode: Literal["auto", "online", "offline", "disabled"]
    project: str
    entity: str | None


class EnsembleCfg(_Section):
    tta: list[str]
    voting: Literal["soft", "geometric", "logits", "hard", "rank"]
    weights: Literal["equal", "auto"] | list[float]
    format: Literal[("auto", *FORMATS)]  # one list of formats (src.core.tasks.base), which --format offers too
    top_k: Annotated[int, Field(ge=1)] | None
    threshold: Literal["per_label", "global"] | Annotated[float, Field(gt=0, lt=1)]
    min_labels: Literal[0, 1]
    missing_folds: Literal["error", "warn"]
    # issue 29: an open-set class of top-k rows (Humpback's new_whale), placed by a threshold fitted on OOF
    new_label: str | None

    @field_validator("new_label", mode="before")
    @classmethod
    def _label_text(cls, v):
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v  # classes are text ("3")


class Config(_Section):
    experiment: ExperimentCfg
    data: DataCfg
    loader: LoaderCfg
    aug: AugCfg
    model: ModelCfg
    loss: LossCfg
    optim: OptimCfg
    sched: SchedCfg
    train: TrainCfg
    metric: MetricCfg
    wandb: WandbCfg
    ensemble: EnsembleCfg
    runtime: RuntimeCfg

    @model_validator(mode="after")
    def _check(self):
        if (self.train.mixup > 0 or self.train.cutmix > 0) and self.loader.batch_size % 2:
            raise ValueError("train.mixup/cutmix pair images within a batch, so loader.batch_size must be even")
        refusal = TASKS[self.data.task].check_loss(self.loss) or TASKS[self.data.task].check_ensemble(self.ensemble)
        if refusal:
            raise ValueError(refusal)
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def with_lr(self, lr: float) -> Config:
        """This config with optim.lr set to `lr` (optim.lr=find resolved, src.training.lr_finder)."""
        return self.model_copy(update={"optim": self.optim.model_copy(update={"lr": float(lr)})})

    @property
    def out_dir(self) -> Path:
        return Path(self.experiment.output_dir) / str(self.experiment.name)


# ---------------------------------------------------------------- loading and merging


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; pass an existing file to --config")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML ({str(e).splitlines()[0]}); fix the file") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of sections, not {type(data).__name__}")
    return data


def _file_chain(path: Path) -> list[Path]:
    """The file and its `base` ancestors, the root base first."""
    chain: list[Path] = []
    while True:
        path = path.resolve()
        if path in chain:
            raise UserError(f"{path} names itself as a base, directly or not; break the loop")
        chain.append(path)
        base = _read_yaml(path).get("base")
        if base is None:
            return chain[::-1]
        path = path.parent / str(base)


def _merge(dst: dict, src: dict, source: str, origin: dict[str, str], prefix: str = "") -> None:
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value, source, origin, dotted + ".")
        else:
            dst[key] = value
            origin[dotted] = source
            if isinstance(value, dict):
                for sub in _leaves(value, dotted + "."):
                    origin[sub] = source


def _leaves(d: dict, prefix: str) -> list[str]:
    out = []
    for k, v in d.items():
        out.extend(_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"])
    return out


def parse_override(text: str) -> dict[str, Any]:
    """`a.b=1` -> {'a': {'b': 1}}; the value is parsed as YAML (numbers, lists, null, bools)."""
    if "=" not in text or text.startswith("="):
        raise UserError(f"override '{text}' is not of the form section.key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise UserError(f"override '{text}' must name a section and a key, like train.epochs=5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return nested({".".join(parts): value})


def with_overrides(d: dict[str, Any], texts: list[str], source: str) -> dict[str, Any]:
    """A config dict with `section.key=value` strings merged in (a Kaggle notebook's own changes)."""
    for text in texts:
        _merge(d, parse_override(text), source, {})
    return d


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    """{'a.b': 1, 'a.c': 2} -> {'a': {'b': 1, 'c': 2}}."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


# Keys that moved: a user who still writes the old one is told the new one; configs stored in
# older checkpoints are carried over silently.
MOVED = {
    "train.device": "runtime.device",
    "train.amp": "runtime.amp",
    "train.channels_last": "runtime.channels_last",
    "train.deterministic": "runtime.deterministic",
}


def _pop(d: dict, dotted: str) -> tuple[bool, Any]:
    *parents, leaf = dotted.split(".")
    for p in parents:
        d = d.get(p)
        if not isinstance(d, dict):
            return False, None
    return (True, d.pop(leaf)) if leaf in d else (False, None)


def _migrate(d: dict) -> dict:
    """A stored config with old key names, carried over to today's names."""
    for old, new in MOVED.items():
        found, value = _pop(d, old)
        if found:
            section, key = new.split(".")
            d.setdefault(section, {}).setdefault(key, value)
    return d


def _field_names(loc: tuple) -> list[str]:
    model: Any = Config
    for part in loc[:-1]:
        model = model.model_fields[part].annotation
    return list(model.model_fields) if hasattr(model, "model_fields") else []


def _explain(err: dict, origin: dict[str, str], default_src: str) -> str:
    # A union's member is named in the location too (optim.lr.constrained-float): keys only.
    raw_loc = tuple(p for p in err["loc"] if isinstance(p, int) or str(p).isidentifier())
    loc = tuple(str(p) for p in raw_loc if not isinstance(p, int))
    key = ".".join(loc)
    # The source of the key, or for a section-level check the highest-precedence file among its keys.
    srcs = [origin[k] for k in origin if not key or k == key or k.startswith(key + ".")]
    src = CLI if CLI in srcs else (srcs[-1] if srcs else default_src)
    if err["type"] == "extra_forbidden":
        allowed = _field_names(loc)
        close = difflib.get_close_matches(loc[-1], allowed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        section = ".".join(loc[:-1]) or "the top level"
        return f"unknown key '{key}' in {src}{hint}; {section} takes: {', '.join(allowed)}"
    if err["type"] == "missing" and raw_loc and isinstance(raw_loc[-1], int):
        return f"{key} from {src} has too few values; give a list of the documented length (see configs/base.yaml)"
    if err["type"] == "missing":
        return f"key '{key}' is missing; add it to {default_src}"
    if err["type"] == "value_error":
        return f"{err['msg'].removeprefix('Value error, ')} (from {src})"
    return f"{key}={err.get('input')!r} from {src} is invalid: {err['msg']}"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load an experiment file (default: the ResNeXt101 recipe), its bases and overrides.

    Args:
        path: experiment YAML; its `base` key names the file it builds on.
        overrides: `section.key=value` strings; they win over every file.
    """
    path = Path(path) if path is not None else DEFAULT_CONFIG
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    chain = _file_chain(path)
    for f in chain:
        data = {k: v for k, v in _read_yaml(f).items() if k != "base"}
        _merge(merged, data, str(_display(f)), origin)
    for text in overrides or []:
        _merge(merged, parse_override(text), CLI, origin)
    for old, new in MOVED.items():
        if old in origin:
            raise UserError(f"'{old}' (in {origin[old]}) is now '{new}'; rename the key")
    merged.setdefault("experiment", {})
    if isinstance(merged["experiment"], dict) and merged["experiment"].get("name") is None:
        merged["experiment"]["name"] = path.stem
    try:
        cfg = Config.model_validate(merged)
    except ValidationError as e:
        raise UserError(_explain(e.errors()[0], origin, str(_display(chain[0])))) from None
    return cfg


def config_from_dict(d: dict[str, Any], where: str) -> Config:
    """Rebuild a config stored inside a checkpoint; keys added to base.yaml since then get their defaults."""
    merged: dict[str, Any] = {}
    _merge(merged, _read_yaml(CONFIG_DIR / "base.yaml"), "base.yaml", {})
    _merge(merged, _migrate(copy.deepcopy(d)), where, {})
    try:
        return Config.model_validate(merged)
    except ValidationError as e:
        raise UserError(f"the config stored in {where} does not fit this code: {_explain(e.errors()[0], {}, where)}") from None


def save_config(cfg: Config, path: str | Path | None = None) -> Path:
    """Write the resolved config (default: outputs/<experiment>/config.yaml), atomically."""
    path = Path(path) if path is not None else cfg.out_dir / "config.yaml"
    return atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _display(p: Path) -> Path:
    try:
        return p.relative_to(Path.cwd())
    except ValueError:
        return p


def add_config_args(parser) -> None:
    """The --config flag and trailing `section.key=value` overrides every entry point takes."""
    parser.add_argument("--config", default=None, help=f"experiment YAML (default: {_display(DEFAULT_CONFIG)})")
    add_overrides(parser, "config overrides")


def add_overrides(parser, help_text: str) -> None:
    """The trailing `section.key=value` words (taken wherever they stand: src.core.cli.split_overrides)."""
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help=help_text)


def require_competition(data: DataCfg, config_path: str | Path | None = None) -> str:
    """data.dir, which every command that reads a competition needs; none ends in one sentence
    that says how to name one (and how to run the demo instead)."""
    if data.dir is None:
        raise UserError(f"no competition folder is configured (data.dir is empty in {_display(Path(config_path or DEFAULT_CONFIG))}); "
                        "pass --config configs/<name>.yaml whose data: {dir: inputs/<name>} names your competition's "
                        "folder (or add data.dir=inputs/<name>), or run the demo: python -m src.demo, then the same "
                        "command with --config configs/demo.yaml")
    return data.dir
