"""Tuning stage: Optuna studies over the real training loop on the digits demo.

A study that completes and exports a trainable best.yaml, resuming to a larger total, two worker
processes sharing one storage (journal file and SQLite), median pruning, failing trials,
validation of bad search spaces before any trial runs, conditional parameters and determinism.

No mocks: every trial trains test_resnet at 32 px on fold 0 for a couple of batches.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from conftest import TRIAL

from src.core.config import load_config
from src.core.utils import UserError
from src.training.trainer import train_fold
from src.tuning.search import tune
from src.tuning.search_space import Space, load_space, suggest
from src.tuning.study import COUNTED as FINISHED
from src.tuning.study import FAIL, storage_for

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "demo.yaml"
COMPLETE = optuna.trial.TrialState.COMPLETE
PRUNED = optuna.trial.TrialState.PRUNED

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _space(path: Path, params: dict, **top) -> Path:
    """A search-space file in the format of configs/tune/demo.yaml."""
    body = {
        "study": "tst",
        "n_trials": 3,
        "timeout": None,
        "folds": [0],
        "sampler_seed": 0,
        "pruner": "none",
        "pruner_startup_trials": 0,
        "pruner_warmup_epochs": 0,
        **top,
        "params": params,
    }
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=FINISHED)


# ---------------------------------------------------------------- a study, its export, resuming

MAIN_PARAMS = {
    "optim.lr": {"type": "float", "low": 1.0e-3, "high": 2.0e-2, "log": True},
    "loss.name": {"type": "categorical", "choices": ["ce", "focal"]},
    "loss.gamma": {"type": "float", "low": 0.5, "high": 3.0, "when": {"loss.name": "focal"}},
    "aug.zoom": {"type": "categorical", "choices": [[0.9, 1.1], [1.0, 1.2]]},
}


@pytest.fixture(scope="module")
def first_study(demo_dir: Path, tmp_path_factory, overrides_for):
    """Three trials on the default storage (<output_dir>/optuna/<study>.db); tests only read it."""
    root = tmp_path_factory.mktemp("first")
    out = root / "out"
    space = _space(root / "space.yaml", MAIN_PARAMS, study="s1")
    ov = overrides_for(demo_dir, out, *TRIAL)
    # Both branches of the conditional parameter appear: trial 0 is focal, trial 1 ce, trial 2 sampled.
    db = out / "optuna" / "s1.db"
    db.parent.mkdir(parents=True)
    pre = optuna.create_study(study_name="s1", storage=f"sqlite:///{db}", direction="maximize")
    pre.enqueue_trial({"loss.name": "focal"})
    pre.enqueue_trial({"loss.name": "ce"})
    study = tune(CONFIG, ov, space, 3, None, None, None)
    snapshot = {t.number: dict(t.params) for t in study.trials}
    return {"root": root, "out": out, "space": space, "ov": ov, "study": study, "db": db, "snapshot": snapshot}


def test_three_trial_study_completes_on_default_storage(first_study):
    out, study = first_study["out"], first_study["study"]
    assert study.study_name == "s1"
    assert first_study["db"].is_file()
    reloaded = optuna.load_study(study_name="s1", storage=f"sqlite:///{first_study['db']}")
    trials = reloaded.get_trials(deepcopy=False)
    assert [t.number for t in trials] == [0, 1, 2]
    assert [t.state for t in trials] == [COMPLETE] * 3, [t.user_attrs for t in trials]
    for t in trials:
        fold = out / "s1" / f"trial{t.number}" / "fold0"
        done = json.loads((fold / "done.json").read_text())
        assert t.value == pytest.approx(done["best"])
        assert 0.0 <= t.value <= 1.0
        for f in ("best.pt", "last.pt", "oof.csv", "history.csv"):
            assert (fold / f).is_file(), fold / f
        # The trial's run used the trial's values.
        saved = yaml.safe_load((out / "s1" / f"trial{t.number}" / "config.yaml").read_text())
        assert saved["optim"]["lr"] == pytest.approx(t.params["optim.lr"])
        assert saved["loss"]["name"] == t.params["loss.name"]
        assert saved["aug"]["zoom"] == json.loads(t.params["aug.zoom"])
        assert saved["experiment"]["name"] == f"s1/trial{t.number}"
    assert reloaded.best_value == max(t.value for t in trials)
    png = out / "s1" / "history.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_best_yaml_loads_and_trains(first_study, tmp_path):
    out, study, demo = first_study["out"], first_study["study"], first_study["ov"][0].split("=", 1)[1]
    best_path = out / "s1" / "best.yaml"
    assert best_path.is_file()
    best = study.best_trial
    cfg = load_config(best_path)
    assert cfg.experiment.name == "s1_best"
    assert cfg.optim.lr == pytest.approx(best.params["optim.lr"])
    assert cfg.loss.name == best.params["loss.name"]
    if "loss.gamma" in best.params:
        assert cfg.loss.gamma == pytest.approx(best.params["loss.gamma"])
    assert list(cfg.aug.zoom) == json.loads(best.params["aug.zoom"])  # a list choice comes back as a list
    # The tune-time overrides are part of the exported experiment.
    assert cfg.data.dir == demo and cfg.model.name == "test_resnet" and cfg.train.limit_batches == 2
    assert cfg.experiment.output_dir == str(out)
    # Unsearched values come from the experiment file it names as its base.
    assert cfg.optim.weight_decay == load_config(CONFIG).optim.weight_decay
    assert f"Best trial {best.number} of study s1" in best_path.read_text()

    run_cfg = load_config(best_path, [f"experiment.output_dir={tmp_path}", "train.epochs=1", "train.limit_batches=2"])
    result = train_fold(run_cfg, 0)
    assert result["epochs_run"] == 1
    assert (tmp_path / "s1_best" / "fold0" / "done.json").is_file()
    assert 0.0 <= result["accuracy"] <= 1.0


def test_rerun_with_more_trials_resumes(first_study, tmp_path):
    # Resume a copy, so the fixture stays at three trials for the other tests.
    out = tmp_path / "out"
    shutil.copytree(first_study["out"], out)
    ov = [o if not o.startswith("experiment.output_dir=") else f"experiment.output_dir={out}" for o in first_study["ov"]]
    before = {n: (out / "s1" / f"trial{n}" / "fold0" / "done.json").stat().st_mtime_ns for n in range(3)}

    study = tune(CONFIG, ov, first_study["space"], 5, None, None, None)

    reloaded = optuna.load_study(study_name="s1", storage=f"sqlite:///{out / 'optuna' / 's1.db'}")
    trials = reloaded.get_trials(deepcopy=False)
    assert len(_finished(reloaded)) == 5
    assert len(trials) == 5
    numbers = [t.number for t in trials]
    assert sorted(numbers) == [0, 1, 2, 3, 4] and len(set(numbers)) == 5
    for n, params in first_study["snapshot"].items():
        assert trials[n].params == params
    # Old trials are not retrained; new ones write their own folders.
    for n in range(3):
        assert (out / "s1" / f"trial{n}" / "fold0" / "done.json").stat().st_mtime_ns == before[n]
    for n in (3, 4):
        assert (out / "s1" / f"trial{n}" / "fold0" / "done.json").is_file()
    # best.yaml is re-exported from the whole study.
    cfg = load_config(out / "s1" / "best.yaml")
    assert cfg.optim.lr == pytest.approx(reloaded.best_trial.params["optim.lr"])
    assert study.best_value == reloaded.best_value

    # A third run at the same total adds nothing.
    tune(CONFIG, ov, first_study["space"], 5, None, None, None)
    assert len(optuna.load_study(study_name="s1", storage=f"sqlite:///{out / 'optuna' / 's1.db'}").trials) == 5


def test_conditional_parameter_in_trained_study(first_study):
    trials = first_study["study"].get_trials(deepcopy=False)
    names = {t.params["loss.name"] for t in trials}
    assert names == {"ce", "focal"}
    for t in trials:
        if t.params["loss.name"] == "ce":
            assert "loss.gamma" not in t.params, t.params
        else:
            assert 0.5 <= t.params["loss.gamma"] <= 3.0, t.params


# ---------------------------------------------------------------- workers sharing one storage


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_two_workers_share_one_storage(demo_dir, tmp_path, kind, overrides_for, tune_workers):
    out = tmp_path / "out"
    space = _space(tmp_path / "space.yaml", {"optim.lr": {"type": "float", "low": 1e-3, "high": 2e-2, "log": True}})
    storage = str(tmp_path / "j.log") if kind == "journal" else f"sqlite:///{tmp_path / 'x.db'}"
    ov = overrides_for(demo_dir, out, *TRIAL)
    logs = [tmp_path / "w0.txt", tmp_path / "w1.txt"]
    # Both start together; each then takes trials until the total is reached.
    codes = tune_workers(["--config", "configs/demo.yaml", "--space", str(space), "--n-trials", "4", "--study", "shared",
                          "--storage", storage, *ov], logs)
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], "\n\n".join(t[-3000:] for t in texts)

    study = optuna.load_study(study_name="shared", storage=storage_for(storage, "shared", str(out)))
    trials = study.get_trials(deepcopy=False)
    assert not [t for t in trials if t.state == FAIL], [t.user_attrs for t in trials]
    numbers = [t.number for t in trials]
    assert len(set(numbers)) == len(numbers)
    # Both workers trained trials: each trial records the worker (host:pid) that ran it.
    workers = {t.user_attrs.get("worker") for t in trials}
    assert len(workers) == 2 and None not in workers, workers
    # --n-trials is the total across workers: "several workers on one storage stop together at that total".
    # A worker starts a trial only while finished + running trials are fewer than the total.
    assert len(_finished(study)) == 4, (
        f"{len(_finished(study))} finished trials for --n-trials 4: "
        + str([(t.number, t.state.name, t.datetime_start, t.datetime_complete) for t in trials]))
    # Each worker draws its own parameters: with one sampler_seed for both, the two would draw the same ones.
    drawn = [t.params["optim.lr"] for t in _finished(study)]
    assert len(set(drawn)) == len(drawn), drawn
    for t in trials:
        assert (out / "shared" / f"trial{t.number}" / "fold0" / "done.json").is_file()
    assert load_config(out / "shared" / "best.yaml").optim.lr == pytest.approx(study.best_params["optim.lr"])


# ---------------------------------------------------------------- pruning


def test_median_pruner_prunes_a_hopeless_trial(demo_dir, tmp_path, overrides_for):
    out = tmp_path / "out"
    url = f"sqlite:///{tmp_path / 'p.db'}"
    space = _space(tmp_path / "space.yaml", {"optim.lr": {"type": "categorical", "choices": [1.0e-2, 1.0e-9]}},
                   pruner="median", pruner_startup_trials=2, pruner_warmup_epochs=0)
    ov = overrides_for(demo_dir, out, *TRIAL, "train.epochs=2", "train.limit_batches=10", "sched.warmup_epochs=0")
    pre = optuna.create_study(study_name="p", storage=url, direction="maximize", load_if_exists=True)
    for lr in (1.0e-2, 1.0e-2, 1.0e-9):  # two that learn, then one that cannot move
        pre.enqueue_trial({"optim.lr": lr})

    study = tune(CONFIG, ov, space, 3, None, "p", url)

    trials = optuna.load_study(study_name="p", storage=url).get_trials(deepcopy=False)
    assert [t.state for t in trials] == [COMPLETE, COMPLETE, PRUNED], [
        (t.params, t.intermediate_values) for t in trials]
    good, bad = trials[0], trials[2]
    assert bad.params["optim.lr"] == 1.0e-9
    # Reported per epoch; the bad trial stopped after its first epoch, below the median there.
    assert sorted(good.intermediate_values) == [0, 1]
    assert list(bad.intermediate_values) == [0]
    assert bad.intermediate_values[0] < good.intermediate_values[0]
    assert not (out / "p" / "trial2" / "fold0" / "done.json").exists()
    assert (out / "p" / "trial0" / "fold0" / "done.json").is_file()
    assert study.best_trial.number in (0, 1)


# ---------------------------------------------------------------- failing trials


@pytest.fixture(scope="module")
def failing_study(demo_dir, tmp_path_factory, overrides_for):
    """Trial 0 names a layer the model does not have (valid config, fails in training); 1 and 2 are the same good trial."""
    root = tmp_path_factory.mktemp("fail")
    url = f"sqlite:///{root / 'f.db'}"
    space = _space(root / "space.yaml", {"model.freeze_before": {"type": "categorical", "choices": [None, "no_such_layer"]}},
                   study="f")
    pre = optuna.create_study(study_name="f", storage=url, direction="maximize")
    pre.enqueue_trial({"model.freeze_before": "no_such_layer"})
    pre.enqueue_trial({"model.freeze_before": None})
    pre.enqueue_trial({"model.freeze_before": None})
    study = tune(CONFIG, overrides_for(demo_dir, root / "out", *TRIAL), space, 3, None, None, url)
    return {"study": study, "url": url, "out": root / "out"}


def test_failing_trial_is_marked_failed_and_study_continues(failing_study):
    trials = optuna.load_study(study_name="f", storage=failing_study["url"]).get_trials(deepcopy=False)
    assert trials[0].state == FAIL
    reason = trials[0].user_attrs["fail_reason"]
    assert reason.startswith("UserError:") and "no_such_layer" in reason and "freeze_before" in reason
    assert [t.state for t in trials[1:3]] == [COMPLETE, COMPLETE]
    assert failing_study["study"].best_trial.number in (1, 2)
    assert (failing_study["out"] / "f" / "best.yaml").is_file()


def test_same_params_train_to_the_same_result(failing_study):
    trials = optuna.load_study(study_name="f", storage=failing_study["url"]).get_trials(deepcopy=False)
    a, b = trials[1], trials[2]
    assert a.params == b.params == {"model.freeze_before": None}
    assert a.value == b.value
    assert a.intermediate_values == b.intermediate_values
    timing = ["time_s", "img_per_s", "data_wait"]  # wall-clock measurements, not results
    ha, hb = (pd.read_csv(failing_study["out"] / "f" / f"trial{t}" / "fold0" / "history.csv").drop(columns=timing)
              for t in (1, 2))
    assert len(ha) == 1 and ha.columns.tolist() == hb.columns.tolist()
    pd.testing.assert_frame_equal(ha, hb, check_exact=True)


def test_failed_trials_do_not_count_towards_n_trials(failing_study):
    # tune()'s contract: "Run (or resume) the study until it holds n_trials finished trials".
    # Failed trials do not count towards --n-trials.
    study = optuna.load_study(study_name="f", storage=failing_study["url"])
    assert len(_finished(study)) == 3


def test_diverging_trial_fails_with_its_reason(demo_dir, tmp_path, overrides_for):
    url = f"sqlite:///{tmp_path / 'd.db'}"
    space = _space(tmp_path / "space.yaml", {"optim.lr": {"type": "categorical", "choices": [5.0e-3, 1.0e30]}})
    pre = optuna.create_study(study_name="d", storage=url, direction="maximize")
    pre.enqueue_trial({"optim.lr": 1.0e30})
    pre.enqueue_trial({"optim.lr": 5.0e-3})
    tune(CONFIG, overrides_for(demo_dir, tmp_path / "out", *TRIAL, "sched.name=none"), space, 2, None, "d", url)
    trials = optuna.load_study(study_name="d", storage=url).get_trials(deepcopy=False)
    assert trials[0].state == FAIL
    assert trials[0].user_attrs["fail_reason"].startswith("TrainingDiverged:")
    assert trials[1].state == COMPLETE


# ---------------------------------------------------------------- bad search spaces


GOOD = {"optim.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}
BAD_SPACES = {
    "unknown config key": ({"optim.lrr": {"type": "float", "low": 1e-3, "high": 1e-2}}, {}, "optim.lrr"),
    "low equals high": ({"optim.lr": {"type": "float", "low": 1e-2, "high": 1e-2}}, {}, "low < high"),
    "low above high": ({"train.epochs": {"type": "int", "low": 5, "high": 2}}, {}, "low < high"),
    "missing high": ({"optim.lr": {"type": "float", "low": 1e-3}}, {}, "low < high"),
    "log from zero": ({"optim.weight_decay": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, {}, "log"),
    "no choices": ({"loss.name": {"type": "categorical"}}, {}, "no choices"),
    "empty choices": ({"loss.name": {"type": "categorical", "choices": []}}, {}, "no choices"),
    "invalid choice": ({"loss.name": {"type": "categorical", "choices": ["ce", "bogus"]}}, {}, "bogus"),
    "invalid range end": ({"train.epochs": {"type": "float", "low": 0.5, "high": 2.5}}, {}, "train.epochs"),
    "unknown param field": ({"optim.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "hi": 3}}, {}, "unknown key"),
    "unknown type": ({"optim.lr": {"type": "uniform", "low": 1e-3, "high": 1e-2}}, {}, "optim.lr"),
    "unknown top-level field": (GOOD, {"n_trails": 5}, "n_trails"),
    "unknown pruner": (GOOD, {"pruner": "sometimes"}, "pruner"),
    "when names an unsearched key": (
        {**GOOD, "loss.gamma": {"type": "float", "low": 0.5, "high": 3.0, "when": {"loss.name": "focal"}}}, {}, "loss.name"),
    "fold out of range": (GOOD, {"folds": [5]}, "folds"),
}


@pytest.mark.parametrize("case", list(BAD_SPACES))
def test_bad_space_fails_before_any_trial(demo_dir, tmp_path, case, overrides_for):
    params, top, needle = BAD_SPACES[case]
    space = _space(tmp_path / "space.yaml", params, **top)
    out = tmp_path / "out"
    db = tmp_path / "x.db"
    for storage in (f"sqlite:///{db}", None):
        with pytest.raises(UserError) as e:
            tune(CONFIG, overrides_for(demo_dir, out, *TRIAL), space, 2, None, None, storage)
        assert needle in str(e.value), str(e.value)
        assert not db.exists()
        assert not out.exists(), sorted(p.relative_to(out) for p in out.rglob("*"))


def test_missing_space_file_is_a_user_error(demo_dir, tmp_path, overrides_for):
    with pytest.raises(UserError, match="does not exist"):
        tune(CONFIG, overrides_for(demo_dir, tmp_path / "out", *TRIAL), tmp_path / "nope.yaml", 2)
    assert not (tmp_path / "out").exists()


def test_shipped_demo_space_is_valid():
    space = load_space(REPO / "configs" / "tune" / "demo.yaml", CONFIG, [])
    assert space.folds and space.params and space.n_trials > 0


# ---------------------------------------------------------------- suggest: fixed values, conditions


SUGGEST_SPACE = {
    "optim.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "train.epochs": {"type": "int", "low": 2, "high": 10, "step": 2},
    "loss.name": {"type": "categorical", "choices": ["ce", "focal"]},
    "loss.gamma": {"type": "float", "low": 0.5, "high": 3.0, "when": {"loss.name": "focal"}},
    "aug.zoom": {"type": "categorical", "choices": [[0.9, 1.1], [1.0, 1.2]]},
    "model.freeze_before": {"type": "categorical", "choices": [None, "layer4.0.conv1"]},
}


@pytest.fixture(scope="module")
def suggest_space(tmp_path_factory) -> Space:
    path = _space(tmp_path_factory.mktemp("suggest") / "space.yaml", SUGGEST_SPACE)
    return load_space(path, CONFIG, [])


def test_suggest_with_fixed_trial_returns_the_fixed_values(suggest_space, demo_cfg, tmp_path):
    focal = {"optim.lr": 3e-3, "train.epochs": 4, "loss.name": "focal", "loss.gamma": 1.5,
             "aug.zoom": "[1.0, 1.2]", "model.freeze_before": "layer4.0.conv1"}
    assert suggest(optuna.trial.FixedTrial(focal), suggest_space) == {**focal, "aug.zoom": [1.0, 1.2]}
    # ce: loss.gamma is never asked for (a FixedTrial would raise on a missing parameter).
    ce = {"optim.lr": 1e-2, "train.epochs": 10, "loss.name": "ce", "aug.zoom": "[0.9, 1.1]", "model.freeze_before": None}
    assert suggest(optuna.trial.FixedTrial(ce), suggest_space) == {**ce, "aug.zoom": [0.9, 1.1]}
    # The values are config overrides that load.
    values = suggest(optuna.trial.FixedTrial(focal), suggest_space)
    cfg = demo_cfg(tmp_path, tmp_path / "out", *(f"{k}={json.dumps(v)}" for k, v in values.items()))
    assert (cfg.optim.lr, cfg.train.epochs, cfg.loss.gamma, list(cfg.aug.zoom)) == (3e-3, 4, 1.5, [1.0, 1.2])


def test_conditional_parameter_only_when_its_condition_holds(suggest_space):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(40):
        trial = study.ask()
        values = suggest(trial, suggest_space)
        assert ("loss.gamma" in values) == (values["loss.name"] == "focal"), values
        assert values["train.epochs"] in (2, 4, 6, 8, 10)
        assert values["aug.zoom"] in ([0.9, 1.1], [1.0, 1.2])
        study.tell(trial, 0.0)
    seen = {t.params["loss.name"] for t in study.trials}
    assert seen == {"ce", "focal"}
    for t in study.trials:
        assert ("loss.gamma" in t.params) == (t.params["loss.name"] == "focal"), t.params


def test_reopening_a_study_with_another_objective_stops(demo_dir, tmp_path, overrides_for):
    out = tmp_path / "out"
    space = _space(tmp_path / "space.yaml", {"optim.lr": {"type": "float", "low": 1e-3, "high": 2e-2, "log": True}})
    url = f"sqlite:///{tmp_path / 'o.db'}"
    tune(CONFIG, overrides_for(demo_dir, out, *TRIAL), space, 1, None, "obj", url)
    with pytest.raises(UserError, match="optimizes accuracy, not log_loss"):
        tune(CONFIG, overrides_for(demo_dir, out, *TRIAL, "metric.name=log_loss"), space, 2, None, "obj", url)
    assert len(optuna.load_study(study_name="obj", storage=url).trials) == 1
