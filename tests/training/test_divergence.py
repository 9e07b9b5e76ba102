"""A fold whose training loss stays finite (huge) while its validation predictions are NaN
(optim.lr=1e6) stops at that epoch, naming it, and leaves no best.pt, oof.csv or done.json; a
study records such a trial as diverged and goes on (issue 31, item 4).

No mocks: test_resnet at 32 px, one epoch of three batches, on each task kind's demo."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from conftest import TRIAL

from src.core.utils import UserError
from src.runs.layout import fold_paths
from src.training.engine import TrainingDiverged
from src.training.trainer import train_fold
from src.tuning.search import tune
from src.tuning.study import FAIL

COMPLETE = optuna.trial.TrialState.COMPLETE
# conftest's TINY with a learning rate at which the training loss stays finite (about 1e11) and the
# validation logits do not
TINY_DIVERGING = ("model.name=test_resnet", "aug.img_size=32", "train.epochs=1", "train.limit_batches=3",
                  "loader.batch_size=16", "loader.num_workers=0", "data.check_images=false", "optim.lr=1e6")


@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel", "ordinal"])
def test_nan_validation_stops_the_fold_and_writes_nothing_of_a_trained_one(task, task_competition, tmp_path: Path,
                                                                            demo_cfg):
    comp, config, extra = task_competition(task)
    cfg = demo_cfg(comp, tmp_path / "out", *TINY_DIVERGING, *extra, config=config)
    with pytest.raises(TrainingDiverged, match=r"^fold 0 at epoch 0 diverged: its validation loss is") as info:
        train_fold(cfg, 0)
    message = str(info.value)
    assert isinstance(info.value, UserError) and "\n" not in message  # one line, exit 2 on the command line
    assert "optim.lr" in message and "--lr-find" in message
    fp = fold_paths(cfg.out_dir, 0)
    for path in (fp.best, fp.oof, fp.done, fp.last, fp.history):
        assert not path.exists(), path


def test_a_study_records_a_validation_divergence_as_a_diverged_trial(demo_dir, tmp_path, overrides_for):
    url = f"sqlite:///{tmp_path / 'v.db'}"
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "study": "v", "n_trials": 2, "timeout": None, "folds": [0], "sampler_seed": 0, "pruner": "none",
        "pruner_startup_trials": 0, "pruner_warmup_epochs": 0,
        "params": {"optim.lr": {"type": "categorical", "choices": [5.0e-3, 1.0e6]}}}, sort_keys=False))
    pre = optuna.create_study(study_name="v", storage=url, direction="maximize")
    pre.enqueue_trial({"optim.lr": 1.0e6})
    pre.enqueue_trial({"optim.lr": 5.0e-3})
    config = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
    tune(config, overrides_for(demo_dir, tmp_path / "out", *TRIAL), space, 2, None, "v", url)
    first, *rest = optuna.load_study(study_name="v", storage=url).get_trials(deepcopy=False)
    assert first.state == FAIL
    assert first.user_attrs["diverged"].startswith("fold 0 at epoch 0 diverged: its validation loss is")
    assert first.user_attrs["fail_reason"] == f"TrainingDiverged: {first.user_attrs['diverged']}"
    assert [t.state for t in rest] == [COMPLETE, COMPLETE]  # the study went on (a failed trial does not count)
    fp = fold_paths(tmp_path / "out" / "v" / "trial0", 0)
    assert not fp.best.exists() and not fp.oof.exists() and not fp.done.exists()
    assert first.value is None
