"""The learning-rate finder: the sweep leaves weights, optimizer and scaler as they were; its
rules pick the rate they promise on known curves; --lr-find writes its plot; optim.lr=find gives
every fold, resume and later fold the same recorded rate, for every task type."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TASKS, TINY
from PIL import Image

import src.train as train
from src.core.runtime import Runtime
from src.core.utils import UserError
from src.runs.layout import fold_paths, read_done
from src.training.engine import step_loss
from src.training.lr_finder import Sweep, lr_find_paths, resolve_lr, sweep
from src.training.trainer import optimization, setup_fold, train_fold

FIND = ("optim.lr=find", "optim.find_steps=12", "optim.find_start_lr=1e-5", "optim.find_end_lr=1.0")


def _state(s) -> tuple[dict, dict, dict]:
    """Deep copies of the model's state (weights and BatchNorm buffers), the optimizer's and the scaler's."""
    model = {k: v.detach().clone() for k, v in s.model.state_dict().items()}
    opt = s.optimizer.state_dict()
    opt = {"state": {k: {n: t.clone() if torch.is_tensor(t) else t for n, t in v.items()} for k, v in opt["state"].items()},
           "param_groups": [dict(g) for g in opt["param_groups"]]}
    return model, opt, dict(s.scaler.state_dict())


def test_the_sweep_leaves_weights_optimizer_and_scaler_untouched(demo_dir, tmp_path, tiny_cfg):
    cfg = tiny_cfg(demo_dir, tmp_path, "optim.lr=3e-3", "model.unfreeze_epoch=1", "model.freeze_stages=1",
                   "optim.layer_decay=0.7", "train.accum_steps=2")
    s = setup_fold(cfg, 0, Runtime.from_cfg(cfg.runtime))
    optimization(s)
    # One real update first, so that the optimizer has moments to disturb and BatchNorm buffers moved.
    x, y = next(iter(s.train_loader))
    loss, _, _ = step_loss(s, s.model, x, y, s.task)
    loss.backward()
    s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)
    model0, opt0, scaler0 = _state(s)

    sw = sweep(s, 1e-5, 1.0, 15)

    model1, opt1, scaler1 = _state(s)
    assert model1.keys() == model0.keys()
    for k in model0:
        assert torch.equal(model0[k], model1[k]), k  # weights and running statistics
    assert opt1["param_groups"] == opt0["param_groups"]  # each group's lr, lr_scale, weight decay
    for k in opt0["state"]:
        for n in opt0["state"][k]:
            a, b = opt0["state"][k][n], opt1["state"][k][n]
            assert torch.equal(a, b) if torch.is_tensor(a) else a == b, (k, n)
    assert scaler1 == scaler0
    assert all(p.grad is None for p in s.model.parameters())
    # An exponential sweep: a constant ratio between steps, from the start.
    ratios = np.diff(np.log(sw.lrs))
    assert sw.lrs[0] == pytest.approx(1e-5) and np.allclose(ratios, np.log(1e5) / 14)
    assert len(sw.losses) == len(sw.lrs) and all(np.isfinite(sw.losses))


def _curve(lrs: np.ndarray) -> np.ndarray:
    """A textbook range test: flat, a descent between 1e-4 and 1e-2 steepest near 1e-3, then an explosion."""
    x = np.log10(lrs)
    return 2.0 - np.tanh(1.8 * (x + 3)) + np.where(x > -1.5, 40 * (x + 1.5) ** 2, 0)


def test_each_rule_picks_the_rate_it_promises_on_a_known_curve():
    lrs = np.logspace(-7, 1, 200)
    losses = _curve(lrs)
    sw = Sweep(list(lrs), list(losses))
    sw.smoothed = list(losses)  # the rules on the exact curve, without the moving average's lag
    got = sw.suggestions()
    assert 10 ** -3.3 < got["steepest"] < 10 ** -2.7  # the inflection of the descent, at 1e-3
    low = lrs[np.argmin(losses)]
    assert got["minimum"] == pytest.approx(float(f"{low / 10:.2g}"))
    # The valley: the longest stretch of falling loss is the descent itself (from the first step here,
    # a plateau that falls a little all along) up to the minimum; its middle in log rate.
    fall_end = int(np.argmin(losses))
    assert got["valley"] == pytest.approx(float(f"{np.sqrt(lrs[0] * lrs[fall_end]):.2g}"))
    # A noisy flat start breaks the descent runs: the valley is then the descent proper.
    rng = np.random.default_rng(0)
    noisy = losses + np.where(np.log10(lrs) < -4.5, rng.normal(0, 0.02, len(lrs)), 0)
    sw2 = Sweep(list(lrs), list(noisy))
    sw2.smoothed = list(noisy)
    assert 10 ** -4.5 < sw2.suggestions()["valley"] < 10 ** -1.5


def test_lr_find_cli_prints_a_suggestion_and_writes_its_plot(demo_dir, tmp_path, overrides_for, capsys):
    out = tmp_path / "out"
    train.main(["--config", "configs/demo.yaml", "--lr-find", *overrides_for(demo_dir, out, "optim.find_steps=40",
                "data.check_images=false", "loader.num_workers=0", "loader.batch_size=32")])
    text = capsys.readouterr().out
    found = json.loads((out / "demo" / "lr_find.json").read_text())
    assert f"suggested optim.lr={found['lr']:.2g} (valley" in text
    assert set(found["suggestions"]) == {"valley", "steepest", "minimum"} and found["lr"] == found["suggestions"]["valley"]
    assert 1e-7 <= found["lr"] <= 10
    with Image.open(out / "demo" / "lr_find.png") as im:
        assert im.size[0] > 300 and im.size[1] > 200
    table = (out / "demo" / "lr_find.csv").read_text().splitlines()
    assert table[0] == "lr,loss,smoothed" and len(table) - 1 == found["steps_run"]
    assert not (out / "demo" / "fold0").exists()  # nothing trained
    with pytest.raises(SystemExit):
        train.main(["--config", "configs/demo.yaml", "--lr-find", "--fold", "0", *overrides_for(demo_dir, out)])
    with pytest.raises(SystemExit):
        train.main(["--config", "configs/demo.yaml", *overrides_for(demo_dir, out)])  # neither


@pytest.mark.parametrize("task", TASKS)
def test_optim_lr_find_gives_every_fold_the_same_rate(task, tmp_path, demo_cfg, task_competition, capsys):
    data, config, extra = task_competition(task)
    cfg = demo_cfg(data, tmp_path, *TINY, *FIND, *extra, "experiment.name=found", config=config)
    train.run(cfg, 0)
    text = capsys.readouterr().out
    found = json.loads((cfg.out_dir / "lr_find.json").read_text())
    assert "lr finder: 12 steps" in text and f"optim.lr=find: {found['lr']:.2g} (found now)" in text
    assert read_done(fold_paths(cfg.out_dir, 0))["config"]["optim"]["lr"] == found["lr"]
    assert json.loads((cfg.out_dir / "fold0" / "../lr_find.json").read_text()) == found

    train.run(cfg, 1)  # the recorded sweep: no second one
    text = capsys.readouterr().out
    assert "lr finder:" not in text and "(the rate fold 0 trained with)" in text
    assert read_done(fold_paths(cfg.out_dir, 1))["config"]["optim"]["lr"] == found["lr"]

    (cfg.out_dir / "lr_find.json").unlink()  # the finished folds still fix the rate
    assert resolve_lr(cfg).optim.lr == found["lr"]
    assert "lr finder:" not in capsys.readouterr().out


def test_a_recorded_sweep_is_reused_only_with_the_same_settings(demo_dir, tmp_path, tiny_cfg, capsys):
    cfg = tiny_cfg(demo_dir, tmp_path, *FIND)
    first = resolve_lr(cfg).optim.lr
    capsys.readouterr()
    # Settings the sweep does not depend on (epochs, schedule, workers): the same rate, no sweep.
    same = tiny_cfg(demo_dir, tmp_path, *FIND, "train.epochs=7", "sched.name=step", "train.keep_top=2")
    assert resolve_lr(same).optim.lr == first
    assert "lr finder:" not in capsys.readouterr().out
    # One that changes it (the loss): swept again.
    other = tiny_cfg(demo_dir, tmp_path, *FIND, "loss.smoothing=0.2")
    resolve_lr(other)
    text = capsys.readouterr().out
    assert "was found with other settings (['loss.smoothing'])" in text and "lr finder:" in text


def test_a_fold_resumed_after_an_interruption_keeps_the_rate(demo_dir, tmp_path, tiny_cfg):
    cfg = tiny_cfg(demo_dir, tmp_path, *FIND, "train.epochs=2")
    resolved = resolve_lr(cfg)
    train_fold(resolved, 0)
    fp = fold_paths(cfg.out_dir, 0)
    fp.done.unlink()  # as if stopped before the end: last.pt stays
    result = train.run(cfg, 0, resume=True)  # the command's config, optim.lr=find: the same number again
    assert result["config"]["optim"]["lr"] == resolved.optim.lr and result["epochs_run"] == 2


def test_a_dry_run_with_lr_find_says_so_and_sweeps_nothing(demo_dir, tmp_path, tiny_cfg, capsys):
    cfg = tiny_cfg(demo_dir, tmp_path, *FIND)
    train_fold(cfg, 0, dry_run_only=True)
    assert "optim.lr=find: a real run first sweeps 12 steps" in capsys.readouterr().out
    assert not lr_find_paths(cfg)["json"].exists()


def test_a_sweep_that_diverges_at_once_is_a_user_error(demo_dir, tmp_path, tiny_cfg):
    cfg = tiny_cfg(demo_dir, tmp_path, "optim.lr=find", "optim.find_start_lr=1e8", "optim.find_end_lr=1e12",
                   "optim.name=sgd")
    with pytest.raises(UserError, match="diverged within .* lower optim.find_start_lr"):
        resolve_lr(cfg)
    assert not lr_find_paths(cfg)["json"].exists()
