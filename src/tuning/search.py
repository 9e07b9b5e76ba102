"""A study run: opened (or resumed) on its storage, the config checked by one dry run, trials trained with the drawn values and reported to the pruner, the best config exported with its plots."""

from __future__ import annotations

import functools
import gc
import json
import math
import os
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml

from src.core.config import DEFAULT_CONFIG, Config, load_config, nested
from src.core.tracking import Tracker
from src.core.utils import UserError, atomic_write_text
from src.evaluation.metrics import higher_is_better, monitor_name
from src.training.engine import TrainingDiverged
from src.training.lr_finder import resolve_lr
from src.training.trainer import train_fold
from src.tuning.search_space import DEFAULT_SPACE_DIR, Space, decode, load_space, suggest
from src.tuning.study import (
    COUNTED,
    FAIL,
    Heartbeat,
    TrialSeededSampler,
    open_study,
    pruner_for,
    remaining,
    run_trials,
    storage_for,
)


def export_best(study: optuna.Study, space: Space, cfg_path: Path, overrides: list[str], out_dir: Path) -> Path:
    """Write outputs/<study>/best.yaml: the experiment config as base plus the best trial's values."""
    best = study.best_trial
    params = {k: decode(v, space.params[k].choices or []) for k, v in best.params.items()}
    delta: dict[str, Any] = {}
    for text in overrides:
        key, raw = text.split("=", 1)
        delta[key] = yaml.safe_load(raw)
    delta.update(params)
    delta["experiment.name"] = f"{space.study}_best"
    body = {"base": os.path.relpath(cfg_path.resolve(), out_dir.resolve()), **nested(delta)}
    path = out_dir / "best.yaml"
    text = (f"# Best trial {best.number} of study {space.study}: {best.value:.6g}\n"
            f"# python -m src.train --config {path} --fold all\n" + yaml.safe_dump(body, sort_keys=False))
    atomic_write_text(path, text)
    load_config(path)  # the exported file must load as it is
    return path


def save_plots(study: optuna.Study, out_dir: Path) -> list[Path]:
    """Optimization history and parameter importances (when there are enough trials)."""
    import warnings

    from optuna.visualization import matplotlib as ovm

    from src.core.plotting import save_figure

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    written = []
    for name, fn in (("history.png", ovm.plot_optimization_history), ("importance.png", ovm.plot_param_importances)):
        try:
            ax = fn(study)
            fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
            written.append(save_figure(fig, out_dir / name))
        except (ValueError, RuntimeError, ZeroDivisionError) as e:
            print(f"note: {name} skipped ({e})")
    return written


def _open(base_cfg: Config, space: Space, n_trials: int, storage: str | None) -> tuple[optuna.Study, Heartbeat]:
    """Create or reopen the study (with heartbeats where the storage keeps them); a study reopened
    with another objective stops."""
    where = storage_for(storage, space.study, base_cfg.experiment.output_dir)
    beat = Heartbeat(space.heartbeat_interval, space.heartbeat_grace)
    if isinstance(where, str) and beat.interval is not None:
        where = functools.partial(beat.rdb, where)  # made inside open_study's retries
    elif beat.interval is not None:
        print("note: a journal storage keeps no heartbeats (Optuna 5), so a trial of a worker killed with "
              "kill -9 stays RUNNING and counts toward --n-trials; use SQLite or an RDB URL to have it replaced")
    study = open_study(
        study_name=space.study,
        storage=where,
        load_if_exists=True,
        direction="maximize" if higher_is_better(base_cfg) else "minimize",
        sampler=TrialSeededSampler(space.sampler_seed, n_startup_trials=min(10, max(2, n_trials // 3))),
        pruner=pruner_for(space),
    )
    objective_name = monitor_name(base_cfg)
    before = study.user_attrs.get("objective")
    if before is None:
        study.set_user_attr("objective", objective_name)
    elif before != objective_name:
        raise UserError(f"study {space.study} optimizes {before}, not {objective_name}; "
                        "use another --study name, or the metric and train.monitor it was started with")
    return study, beat


def check_config(cfg: Config, fold: int) -> None:
    """One dry run (data, model, weights, a forward pass; nothing written) of the config the trials
    start from, so a mistake every trial would repeat stops the command before a trial is recorded."""
    print(f"checking the config with a dry run of fold {fold}")
    try:
        train_fold(cfg, fold, dry_run_only=True)
    except UserError as e:
        raise UserError(f"the config fails its dry run, so no trial was started: {e}") from None
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the first trial gets the whole GPU


def make_objective(cfg_path: Path, overrides: list[str], space: Space, out_dir: Path):
    """The trial function: train the space's folds with the drawn values (one W&B run per trial
    fold, grouped under the study), report every epoch to the pruner, return the mean best."""

    def objective(trial: optuna.Trial) -> float:
        values = suggest(trial, space)
        trial_overrides = [*overrides, *(f"{k}={json.dumps(v)}" for k, v in values.items()),
                           f"experiment.name={space.study}/trial{trial.number}"]
        try:
            cfg: Config = resolve_lr(load_config(cfg_path, trial_overrides))  # optim.lr=find: one sweep a trial
            scores, offset = [], [0]  # the pruner's steps: the epochs of the trial's earlier folds, then this one's
            for k in space.folds:
                def report(epoch: int, value: float, k=k) -> None:
                    if value is None or not math.isfinite(value):
                        return
                    trial.report(value, step=offset[0] + epoch)
                    if trial.should_prune():
                        raise optuna.TrialPruned(f"pruned at fold {k}, epoch {epoch} ({value:.4g})")

                with Tracker.start(cfg, name=f"{space.study}-trial{trial.number}-fold{k}", out_dir=out_dir,
                                   job_type="trial", group=space.study) as fold_tracker:
                    result = train_fold(cfg, k, force=True, on_epoch=report, tracker=fold_tracker)
                scores.append(result["best"])
                offset[0] += result["epochs"]  # train.epochs, or more under train.min_steps
            return float(sum(scores) / len(scores))
        except optuna.TrialPruned:
            raise
        except Exception as e:
            trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}")
            if isinstance(e, TrainingDiverged):  # the drawn values, not the code: said apart from crashes
                trial.set_user_attr("diverged", str(e))
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # an out-of-memory trial must not starve the next one
            raise

    return objective


def log_study(tracker: Tracker, study: optuna.Study) -> None:
    """The study run's summary: best value and trial, and a table of every trial."""
    trials = study.get_trials(deepcopy=False)
    keys = sorted({k for t in trials for k in t.params})
    rows = [[t.number, t.state.name, t.value, *(str(t.params.get(k)) for k in keys)] for t in trials]
    tracker.table("trials", ["trial", "state", "value", *keys], rows)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    summary = {"n_trials": len(trials), "n_complete": len(complete)}
    if complete:
        summary.update({"best_value": study.best_value, "best_trial": study.best_trial.number,
                        **{f"best/{k}": v for k, v in study.best_params.items()}})
    tracker.summary(summary)


def tune(cfg_path: str | Path | None, overrides: list[str], space_path: str | Path | None = None,
         n_trials: int | None = None, timeout: float | None = None, study_name: str | None = None,
         storage: str | None = None) -> optuna.Study:
    """Run (or resume) the study until it holds n_trials finished trials; export the best config.

    Args:
        cfg_path: the experiment config the trials start from.
        overrides: `section.key=value` applied to every trial.
        space_path: search-space YAML (default: configs/tune/<config stem>.yaml).
        n_trials, timeout, study_name, storage: override the space file's values.
    """
    cfg_path = Path(cfg_path) if cfg_path else DEFAULT_CONFIG
    base_cfg = load_config(cfg_path, overrides)
    space_path = Path(space_path) if space_path else DEFAULT_SPACE_DIR / f"{cfg_path.stem}.yaml"
    space = load_space(space_path, cfg_path, overrides)
    space.study = study_name or space.study
    n_trials = n_trials if n_trials is not None else space.n_trials
    timeout = timeout if timeout is not None else space.timeout
    for k in space.folds:
        if not 0 <= k < base_cfg.data.n_folds:
            raise UserError(f"{space_path}: folds lists {k}, but the config has {base_cfg.data.n_folds} folds")
    out_dir = Path(base_cfg.experiment.output_dir) / space.study
    study, beat = _open(base_cfg, space, n_trials, storage)
    print(f"study {space.study}: {len(study.get_trials(deepcopy=False, states=COUNTED))} finished trials, target {n_trials}")
    if remaining(study, n_trials, beat) > 0:
        check_config(base_cfg, space.folds[0])

    # The study's own run stays open while the trials' fold runs come and go.
    with Tracker.start(base_cfg, name=f"{space.study}-study", out_dir=out_dir, job_type="tune", group=space.study) as tracker:
        def log_trial(trial: optuna.trial.FrozenTrial) -> None:
            tracker.log({"trial": trial.number, "state": trial.state.name,
                         "value": trial.value if trial.value is not None else float("nan"), **trial.params})
            done = len(study.get_trials(deepcopy=False, states=COUNTED))
            value = f" {monitor_name(base_cfg)} {trial.value:.4g}" if trial.value is not None else ""
            state = "diverged" if "diverged" in trial.user_attrs else trial.state.name.lower()
            print(f"trial {trial.number} {state}{value}; {done}/{n_trials} finished trials")

        run_trials(study, make_objective(cfg_path, overrides, space, out_dir), n_trials, timeout, log_trial, beat)
        log_study(tracker, study)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    for t in study.get_trials(deepcopy=False, states=(FAIL,))[-5:]:
        print(f"trial {t.number} failed: {t.user_attrs.get('fail_reason', 'unknown reason')}")
    if not complete:
        raise UserError(f"study {space.study} has no completed trial yet; check the failures above")
    best = study.best_trial
    print(f"best trial {best.number}: {monitor_name(base_cfg)} {best.value:.6g} with {best.params}")
    path = export_best(study, space, cfg_path, overrides, out_dir)
    plots = save_plots(study, out_dir)
    print(f"exported {path}; plots: {', '.join(map(str, plots)) or 'none'}")
    return study
