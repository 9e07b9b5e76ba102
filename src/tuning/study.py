"""The study machinery under src.tune: storages, the per-trial seeded sampler, pruners, Optuna
heartbeats for an ask/tell loop, and the loop that makes --n-trials a total across workers."""

from __future__ import annotations

import gc
import importlib.util
import os
import socket
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import optuna
import sqlalchemy

from src.core.utils import UserError, derive_seed
from src.tuning.search_space import Space


def storage_for(url: str | None, study: str, output_dir: str):
    """SQLite under outputs/optuna/ by default; a *.log path means a journal file; else any Optuna
    (SQLAlchemy) URL, e.g. postgresql://user@host/db, shared by workers on several machines."""
    if url is None:
        folder = Path(output_dir) / "optuna"
        folder.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{folder / study}.db"
    if url.endswith(".log") and "://" not in url:
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url))
    return with_driver(url)


def with_driver(url: str) -> str:
    """A database URL whose driver is installed: postgresql:// takes psycopg (3) where SQLAlchemy's
    default driver for it (psycopg2 before SQLAlchemy 2.1) is absent; a URL that cannot be used
    stops with the package to install."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise UserError(f"--storage {url} is neither a database URL nor a *.log journal file; use e.g. "
                        "postgresql://user@host/db, sqlite:///path/study.db or path/study.log") from None
    shown = parsed.render_as_string(hide_password=True)
    try:
        dialect = parsed.get_dialect()
    except sqlalchemy.exc.NoSuchModuleError:
        raise UserError(f"--storage {shown}: SQLAlchemy knows no database '{parsed.drivername}'; use "
                        "postgresql://, mysql+pymysql://, sqlite:/// or a *.log journal file") from None
    try:
        dialect.import_dbapi()
        return url
    except ImportError as e:
        missing = e.name
    if parsed.drivername == "postgresql" and importlib.util.find_spec("psycopg") is not None:
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    extra = " (pip install -e '.[postgres]')" if parsed.get_backend_name() == "postgresql" else ""
    raise UserError(f"--storage {shown} needs the database driver '{missing}', which is not installed; install "
                    f"it{extra} or use another storage")


def pruner_for(space: Space) -> optuna.pruners.BasePruner:
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


def remaining(study: optuna.Study, n_trials: int, beat: Heartbeat | None) -> int:
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
        if remaining(study, n_trials, beat) <= 0:
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
