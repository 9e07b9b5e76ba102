"""Optuna search spaces in YAML: the format, its checks against the config, and drawing values.

The format is documented in configs/tune/demo.yaml: float/int (linear or log), categorical (lists
allowed), and conditional parameters (`when:`), over any config key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import optuna
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from src.core.config import CLI, CONFIG_DIR, load_config
from src.core.utils import UserError

DEFAULT_SPACE_DIR = CONFIG_DIR / "tune"


class Param(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: int | None = None
    choices: list[Any] | None = None
    when: dict[str, Any] | None = None


class Space(BaseModel):
    model_config = ConfigDict(extra="forbid")
    study: str
    n_trials: int
    timeout: float | None = None
    folds: list[int]
    sampler_seed: int
    pruner: Literal["median", "hyperband", "none"]
    pruner_startup_trials: int
    pruner_warmup_epochs: int
    heartbeat_interval: int | None = 60
    heartbeat_grace: int = 180
    params: dict[str, Param]


def encode(choice: Any) -> Any:
    """Optuna stores scalars only; lists are kept as their JSON text."""
    return choice if choice is None or isinstance(choice, (bool, int, float, str)) else json.dumps(choice)


def decode(value: Any, choices: list[Any]) -> Any:
    return next((c for c in choices if encode(c) == value), value)


def load_space(path: str | Path, cfg_path: str | Path | None, overrides: list[str]) -> Space:
    """Read a search-space file and check every key and range before any trial runs."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"search space {path} does not exist; pass --space configs/tune/<name>.yaml")
    try:
        space = Space.model_validate(yaml.safe_load(path.read_text()) or {})
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        what = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].lower()
        raise UserError(f"{path}: '{key}': {what}; see configs/tune/demo.yaml for the format") from None
    beat, grace = space.heartbeat_interval, space.heartbeat_grace
    if beat is not None and not 0 < beat < grace:
        raise UserError(f"{path}: heartbeat_interval must be above 0 and below heartbeat_grace "
                        f"(got {beat} and {grace}), or null for no heartbeats")
    for key, p in space.params.items():
        if p.type == "categorical":
            if not p.choices:
                raise UserError(f"{path}: {key} is categorical but has no choices")
            probes = p.choices
        else:
            if p.low is None or p.high is None or not p.low < p.high:
                raise UserError(f"{path}: {key} needs low < high, got low={p.low} high={p.high}")
            if p.log and p.low <= 0:
                raise UserError(f"{path}: {key} has log=true, so low must be above 0 (got {p.low})")
            probes = [p.low, p.high] if p.type == "float" else [int(p.low), int(p.high)]
        for value in probes:
            try:
                load_config(cfg_path, [*overrides, f"{key}={json.dumps(value)}"])
            except UserError as e:
                raise UserError(f"{path}: {key} cannot take {value!r}: {str(e).replace(CLI, 'the search space')}") from None
        for cond in (p.when or {}):
            if cond not in space.params:
                raise UserError(f"{path}: {key} depends on {cond}, which is not a searched parameter")
    return space


def suggest(trial: optuna.Trial, space: Space) -> dict[str, Any]:
    """Draw the trial's values; conditional parameters only when their condition holds."""
    values: dict[str, Any] = {}
    for key, p in space.params.items():
        if p.when and any(values.get(k) != v for k, v in p.when.items()):
            continue
        if p.type == "float":
            values[key] = trial.suggest_float(key, p.low, p.high, log=p.log)
        elif p.type == "int":
            values[key] = trial.suggest_int(key, int(p.low), int(p.high), step=p.step or 1, log=p.log)
        else:
            values[key] = decode(trial.suggest_categorical(key, [encode(c) for c in p.choices]), p.choices)
    return values
