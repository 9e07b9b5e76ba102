"""Tuning with several workers: a killed worker's trial is failed and replaced (heartbeats), workers
draw different parameters (test_tune.py) while a single worker stays reproducible, and a broken config stops
before any trial is recorded.

No mocks: real Optuna storages, real worker processes, test_resnet at 32 px for a couple of batches.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import yaml
from conftest import TRIAL, start_tune_worker

from src.core.cli import run_cli
from src.core.utils import UserError
from src.tune import main
from src.tuning.search import tune
from src.tuning.search_space import load_space
from src.tuning.study import COUNTED as FINISHED
from src.tuning.study import FAIL, RUNNING, storage_for

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "demo.yaml"
PARAMS = {
    "optim.lr": {"type": "float", "low": 1.0e-3, "high": 2.0e-2, "log": True},
    "loss.smoothing": {"type": "float", "low": 0.0, "high": 0.15},
}

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _space(path: Path, **top) -> Path:
    body = {"study": "w", "n_trials": 2, "folds": [0], "sampler_seed": 0, "pruner": "none",
            "pruner_startup_trials": 0, "pruner_warmup_epochs": 0, **top, "params": PARAMS}
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def _args(space: Path, storage: str, ov: list[str], n_trials: int) -> list[str]:
    return ["--config", str(CONFIG), "--space", str(space), "--n-trials", str(n_trials), "--storage", storage, *ov]


def _trials(url: str, study: str = "w") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)


def _params(trials) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in sorted(trials, key=lambda t: t.number)]


def _running_for(url: str, proc: subprocess.Popen, log: Path, seconds: float, limit: float = 180) -> int:
    """Poll the storage until one trial has been RUNNING for `seconds`; its number."""
    t0 = time.time()
    while time.time() - t0 < limit:
        assert proc.poll() is None, f"worker ended early:\n{log.read_text()[-3000:]}"
        try:
            running = [t for t in _trials(url) if t.state == RUNNING]
        except (KeyError, sqlalchemy.exc.SQLAlchemyError):  # the worker has not created the study yet
            running = []
        for t in running:
            if (t.datetime_start.timestamp() + seconds) < time.time():
                return t.number
        time.sleep(0.1)
    raise AssertionError(f"no trial ran for {seconds} s within {limit} s:\n{log.read_text()[-3000:]}")


# ---------------------------------------------------------------- item 9: a worker killed with kill -9


@pytest.mark.slow
def test_trial_of_a_killed_worker_fails_and_is_replaced(demo_dir, tmp_path, overrides_for):
    url = f"sqlite:///{tmp_path / 'hb.db'}"
    space = _space(tmp_path / "space.yaml", heartbeat_interval=1, heartbeat_grace=3)
    ov = overrides_for(demo_dir, tmp_path / "out", *TRIAL)
    log = tmp_path / "w0.txt"
    proc = start_tune_worker(_args(space, url, ov, 2), log)
    try:
        victim = _running_for(url, proc, log, 0.5)  # long enough for its first heartbeat
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert _trials(url)[victim].state == RUNNING  # left behind by the dead worker
    time.sleep(3)  # the grace period passes without a heartbeat

    # A second worker with the same --n-trials fails the stale trial and runs its replacement.
    tune(CONFIG, ov, space, 2, None, None, url)

    trials = _trials(url)
    assert trials[victim].state == FAIL
    assert "heartbeat" in trials[victim].user_attrs.get("fail_reason", ""), trials[victim].user_attrs
    assert not [t for t in trials if t.state == RUNNING]
    assert len([t for t in trials if t.state in FINISHED]) == 2, [(t.number, t.state.name) for t in trials]


# ---------------------------------------------------------------- item 10: each worker its own draws
# (two workers started together draw different parameters: test_tune.py::test_two_workers_share_one_storage)


def test_single_worker_draws_are_reproducible(demo_dir, tmp_path, overrides_for):
    space = _space(tmp_path / "space.yaml")
    runs = []
    for name in ("a", "b"):
        url = f"sqlite:///{tmp_path / name}.db"
        tune(CONFIG, overrides_for(demo_dir, tmp_path / name, *TRIAL), space, 3, None, None, url)
        runs.append(_params(_trials(url)))
    assert len(runs[0]) == 3 and len(set(runs[0])) == 3
    assert runs[0] == runs[1]


# ---------------------------------------------------------------- item 18: one dry run before the first trial


def test_broken_config_stops_before_any_trial(demo_dir, tmp_path, overrides_for, capsys):
    url = f"sqlite:///{tmp_path / 'dry.db'}"
    space = _space(tmp_path / "space.yaml")
    ov = overrides_for(demo_dir, tmp_path / "out", *TRIAL, "model.pretrained=true",
                       "model.pretrained_path=/nonexistent.safetensors")
    with pytest.raises(UserError, match="/nonexistent.safetensors"):
        tune(CONFIG, ov, space, 2, None, None, url)
    studies = optuna.get_all_study_summaries(url)
    assert [s.n_trials for s in studies] in ([], [0])

    # The command: one sentence on stderr, exit code 2, still no trial.
    with pytest.raises(SystemExit) as e:
        run_cli(main, ["--config", str(CONFIG), "--space", str(space), "--storage", url, *ov])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "pretrained_path" in err[0], err
    assert [s.n_trials for s in optuna.get_all_study_summaries(url)] in ([], [0])


def test_journal_storage_notes_it_has_no_heartbeats(demo_dir, tmp_path, overrides_for, capsys):
    journal = str(tmp_path / "j.log")
    ov = overrides_for(demo_dir, tmp_path / "out", *TRIAL, "model.pretrained=true",
                       "model.pretrained_path=/nonexistent.safetensors")
    with pytest.raises(UserError, match="dry run"):
        tune(CONFIG, ov, _space(tmp_path / "space.yaml"), 2, None, None, journal)
    assert "journal storage keeps no heartbeats" in capsys.readouterr().out
    assert optuna.load_study(study_name="w", storage=storage_for(journal, "w", "")).trials == []


@pytest.mark.parametrize("top", [{"heartbeat_interval": 5, "heartbeat_grace": 5},
                                 {"heartbeat_interval": 0}, {"heartbeat_interval": 200}])
def test_heartbeat_settings_are_checked(tmp_path, top):
    with pytest.raises(UserError, match="heartbeat_interval must be above 0 and below heartbeat_grace"):
        load_space(_space(tmp_path / "space.yaml", **top), CONFIG, [])
    assert load_space(_space(tmp_path / "ok.yaml", heartbeat_interval=None), CONFIG, []).heartbeat_interval is None
