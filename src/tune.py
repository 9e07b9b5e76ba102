"""Optuna search over the training recipe, resumable, prunable, shareable across processes.

    python -m src.tune --config configs/demo.yaml                     # space: configs/tune/demo.yaml
    python -m src.tune --config configs/X.yaml --space configs/tune/X.yaml --n-trials 40
    python -m src.tune --config configs/X.yaml --storage postgresql://user@host/db   # many workers

--n-trials is the total wanted: a rerun resumes the study and adds trials up to it, and several
workers on one storage stop together at that total. Trial runs go to outputs/<study>/trial<N>/.
The config is checked with one dry run before the first trial. Running trials send heartbeats
(SQLite and RDB storages), so the trial of a worker killed with kill -9 is failed and replaced.
Writes outputs/<study>/best.yaml (a config src.train takes), history.png and importance.png.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import os
import socket
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import optuna
import sqlalchemy
import torch
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from src.config import CLI, DEFAULT_CONFIG, Config, add_config_args, load_config
from src.tracking import Tracker
from src.trainer import derive_seed, higher_is_better, monitor_name, train_fold
from src.utils import UserError, atomic_save, atomic_write_text, run_cli

DEFAULT_SPACE_DIR = Path(__file__).resolve().parent.parent / "configs" / "tune"


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


def _encode(choice: Any) -> Any:
    """Optuna stores scalars only; lists are kept as their JSON text."""
    return choice if choice is None or isinstance(choice, (bool, int, float, str)) else json.dumps(choice)


def _decode(value: Any, choices: list[Any]) -> Any:
    return next((c for c in choices if _encode(c) == value), value)


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
            values[key] = _decode(trial.suggest_categorical(key, [_encode(c) for c in p.choices]), p.choices)
    return values


def storage_for(url: str | None, study: str, output_dir: str):
    """SQLite under outputs/optuna/ by default; a *.log path means a journal file; else any Optuna URL."""
    if url is None:
        folder = Path(output_dir) / "optuna"
        folder.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{folder / study}.db"
    if url.endswith(".log") and "://" not in url:
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url))
    return url


def _pruner(space: Space) -> optuna.pruners.BasePruner:
    if space.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=space.pruner_startup_trials,
                                           n_warmup_steps=space.pruner_warmup_epochs)
    if space.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, space.pruner_warmup_epochs))
    return optuna.pruners.NopPruner()


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """TPE seeded anew before each trial from (sampler_seed, trial number): trial numbers are unique
    across the workers of a study, so workers started together draw different values, and a single
    worker repeats its draws run after run. TPE keeps no state between trials besides its RNG."""

    def __init__(self, seed: int, n_startup_trials: int) -> None:
        self._seed, self._n_startup_trials = seed, n_startup_trials
        self._tpe = self._make(seed)

    def _make(self, seed: int) -> optuna.samplers.TPESampler:
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self._n_startup_trials)

    def before_trial(self, study, trial) -> None:
        self._tpe = self._make(derive_seed(self._seed, trial.number))
        self._tpe.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._tpe.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._tpe.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._tpe.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._tpe.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._tpe.reseed_rng()


class Heartbeat:
    """Optuna's trial heartbeats for the ask/tell loop (study.optimize would run them itself).

    While a trial runs, a thread records its heartbeat every `interval` seconds; before counting,
    trials whose worker sent none for `grace` seconds (killed with kill -9, machine lost) are
    failed, so they no longer count toward --n-trials. Only RDB storages (SQLite included) keep
    heartbeats; `storage` stays None for a journal file or when heartbeats are off.
    """

    def __init__(self, interval: int | None, grace: int) -> None:
        self.interval, self.grace = interval, grace
        self.storage: optuna.storages.RDBStorage | None = None

    def rdb(self, url: str) -> optuna.storages.RDBStorage:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.storage = optuna.storages.RDBStorage(url, heartbeat_interval=self.interval, grace_period=self.grace)
        return self.storage

    def _trial_id(self, study: optuna.Study, number: int) -> int:
        study_id = self.storage.get_study_id_from_name(study.study_name)
        return self.storage.get_trial_id_from_study_id_trial_number(study_id, number)

    def fail_stale(self, study: optuna.Study) -> None:
        """Fail the trials whose heartbeat stopped, each with its fail_reason."""
        if self.storage is None:
            return
        study_id = self.storage.get_study_id_from_name(study.study_name)
        # The ids fail_stale_trials fails next; it has no hook that runs while they can still take an attribute.
        for trial_id in self.storage._get_stale_trial_ids(study_id):
            t = self.storage.get_trial(trial_id)
            try:
                self.storage.set_trial_user_attr(trial_id, "fail_reason", (
                    f"stale: no heartbeat for {self.grace} s; its worker {t.user_attrs.get('worker', '?')} "
                    "was killed or lost"))
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another worker failed it first
            print(f"trial {t.number}: no heartbeat for {self.grace} s (its worker was killed or lost); marked failed")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)

    @contextmanager
    def running(self, study: optuna.Study, trial: optuna.Trial):
        """Record the trial's heartbeat now and every `interval` seconds until the block ends."""
        if self.storage is None:
            yield
            return
        trial_id, stop = self._trial_id(study, trial.number), threading.Event()

        def record() -> None:
            try:
                self.storage.record_heartbeat(trial_id)
            except Exception as e:  # a busy database must not fail, or end the heartbeats of, a live trial
                print(f"note: heartbeat of trial {trial.number} not recorded ({type(e).__name__}); retrying")

        def beat() -> None:
            while not stop.wait(self.interval):
                record()

        record()  # before training starts, so a kill from now on is noticed
        thread = threading.Thread(target=beat, name=f"heartbeat-trial{trial.number}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def export_best(study: optuna.Study, space: Space, cfg_path: Path, overrides: list[str], out_dir: Path) -> Path:
    """Write outputs/<study>/best.yaml: the experiment config as base plus the best trial's values."""
    best = study.best_trial
    params = {k: _decode(v, space.params[k].choices or []) for k, v in best.params.items()}
    delta: dict[str, Any] = {}
    for text in overrides:
        key, raw = text.split("=", 1)
        delta[key] = yaml.safe_load(raw)
    delta.update(params)
    delta["experiment.name"] = f"{space.study}_best"
    body = {"base": os.path.relpath(cfg_path.resolve(), out_dir.resolve()), **_nested(delta)}
    path = out_dir / "best.yaml"
    text = (f"# Best trial {best.number} of study {space.study}: {best.value:.6g}\n"
            f"# python -m src.train --config {path} --fold all\n" + yaml.safe_dump(body, sort_keys=False))
    atomic_write_text(path, text)
    load_config(path)  # the exported file must load as it is
    return path


def save_plots(study: optuna.Study, out_dir: Path) -> list[Path]:
    """Optimization history and parameter importances (when there are enough trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import warnings

    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    written = []
    for name, fn in (("history.png", ovm.plot_optimization_history), ("importance.png", ovm.plot_param_importances)):
        try:
            ax = fn(study)
            fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
            atomic_save(out_dir / name, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
            plt.close(fig)
            written.append(out_dir / name)
        except (ValueError, RuntimeError, ZeroDivisionError) as e:
            print(f"note: {name} skipped ({e})")
    return written


def open_study(attempts: int = 6, storage=None, **kwargs) -> optuna.Study:
    """optuna.create_study, retried when workers starting together race to create a new
    database's tables (SQLite: 'table already exists', 'database is locked', a duplicate alembic row).
    `storage` may be a function that makes it (an RDBStorage creates the tables as it is made)."""
    for attempt in range(attempts):
        try:
            return optuna.create_study(storage=storage() if callable(storage) else storage, **kwargs)
        except sqlalchemy.exc.DBAPIError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


COUNTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
RUNNING = optuna.trial.TrialState.RUNNING
FAIL = optuna.trial.TrialState.FAIL
MAX_FAILS_IN_A_ROW = 5


def _remaining(study: optuna.Study, n_trials: int, beat: Heartbeat | None) -> int:
    """Trials still to start: n_trials less the finished and running ones (stale ones failed first)."""
    if beat is not None:
        beat.fail_stale(study)
    return n_trials - len(study.get_trials(deepcopy=False, states=(*COUNTED, RUNNING)))


def run_trials(study: optuna.Study, objective, n_trials: int, timeout: float | None, on_trial=None,
               beat: Heartbeat | None = None) -> None:
    """Ask and tell trials until the study holds n_trials finished (complete or pruned) ones.

    Several workers may share the storage: a worker starts a trial only while finished plus
    running trials are fewer than n_trials, and a trial numbered past the total (two workers
    asking at the same moment) is given up as failed before it trains. Failed trials do not
    count; after MAX_FAILS_IN_A_ROW failures in a row this worker stops. With `beat`, running
    trials send heartbeats and those of killed workers are failed before counting.
    """
    t0 = time.time()
    fails = 0
    beat = beat or Heartbeat(None, 1)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    while timeout is None or time.time() - t0 < timeout:
        if _remaining(study, n_trials, beat) <= 0:
            return
        with warnings.catch_warnings():  # Optuna warns that heartbeats are meant for study.optimize
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = study.ask()
        trial.set_user_attr("worker", worker)
        live = sorted(t.number for t in study.get_trials(deepcopy=False, states=(*COUNTED, RUNNING)))
        if live.index(trial.number) >= n_trials:
            trial.set_user_attr("fail_reason", "surplus: other workers already run the remaining trials")
            study.tell(trial, state=FAIL)
            return
        # skip_if_finished: another worker may have failed this trial as stale (this one was paused).
        try:
            with beat.running(study, trial):
                value = objective(trial)
            frozen = study.tell(trial, value, skip_if_finished=True)
            fails = 0
        except optuna.TrialPruned:
            frozen = study.tell(trial, state=optuna.trial.TrialState.PRUNED, skip_if_finished=True)
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted")
            study.tell(trial, state=FAIL, skip_if_finished=True)
            raise
        except Exception as e:
            frozen = study.tell(trial, state=FAIL, skip_if_finished=True)
            fails += 1
            print(f"trial {trial.number} failed ({type(e).__name__}: {str(e)[:200]}); the study goes on")
            if fails >= MAX_FAILS_IN_A_ROW:
                print(f"stopping: {fails} trials failed in a row")
                return
        finally:
            gc.collect()
        if on_trial is not None:
            on_trial(frozen)


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
        pruner=_pruner(space),
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
            cfg: Config = load_config(cfg_path, trial_overrides)
            scores = []
            for i, k in enumerate(space.folds):
                def report(epoch: int, value: float, i=i, k=k) -> None:
                    if value is None or not math.isfinite(value):
                        return
                    trial.report(value, step=i * cfg.train.epochs + epoch)
                    if trial.should_prune():
                        raise optuna.TrialPruned(f"pruned at fold {k}, epoch {epoch} ({value:.4g})")

                with Tracker.start(cfg, name=f"{space.study}-trial{trial.number}-fold{k}", out_dir=out_dir,
                                   job_type="trial", group=space.study) as fold_tracker:
                    scores.append(train_fold(cfg, k, force=True, on_epoch=report, tracker=fold_tracker)["best"])
            return float(sum(scores) / len(scores))
        except optuna.TrialPruned:
            raise
        except Exception as e:
            trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}")
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
    if _remaining(study, n_trials, beat) > 0:
        check_config(base_cfg, space.folds[0])

    # The study's own run stays open while the trials' fold runs come and go.
    with Tracker.start(base_cfg, name=f"{space.study}-study", out_dir=out_dir, job_type="tune", group=space.study) as tracker:
        def log_trial(trial: optuna.trial.FrozenTrial) -> None:
            tracker.log({"trial": trial.number, "state": trial.state.name,
                         "value": trial.value if trial.value is not None else float("nan"), **trial.params})
            done = len(study.get_trials(deepcopy=False, states=COUNTED))
            value = f" {monitor_name(base_cfg)} {trial.value:.4g}" if trial.value is not None else ""
            print(f"trial {trial.number} {trial.state.name.lower()}{value}; {done}/{n_trials} finished trials")

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default=None, help="search space YAML (default: configs/tune/<config stem>.yaml)")
    parser.add_argument("--n-trials", type=int, default=None, help="total finished trials wanted")
    parser.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    parser.add_argument("--study", default=None, help="study name (default: the space file's)")
    parser.add_argument("--storage", default=None, help="Optuna storage URL, or a *.log journal file")
    add_config_args(parser)
    args = parser.parse_intermixed_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tune(args.config, args.overrides, args.space, args.n_trials, args.timeout, args.study, args.storage)


if __name__ == "__main__":
    run_cli(main)
