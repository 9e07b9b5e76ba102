"""What training says about itself (issue 31, the smaller training-side items): the Kaggle session
estimate in sensible units against the time a session really trains, the lock of a fold another
process trains, the learning rate line under the lr finder, the layer-decay groups of a real run,
and every path a command's --help names.

No mocks: the digits demo, test_resnet at 32 px, a real second process holding the lock."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from src.core.utils import UserError
from src.data.folds import load_or_create_folds
from src.kaggle.training import estimate_fold, training_budget
from src.runs.layout import fold_paths
from src.training.trainer import train_fold

REPO = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------- the Kaggle session estimate


def _estimate(demo_dir: Path, tmp_path: Path, demo_cfg, timeout: int, seconds: float) -> str:
    """estimate_fold for fold 0 at a --pace that makes the fold take `seconds`."""
    cfg = demo_cfg(demo_dir, tmp_path / "out", "train.epochs=1", "train.min_steps=0")
    table, _, _ = load_or_create_folds(cfg)
    n_train, n_valid = int((table["fold"] != 0).sum()), int((table["fold"] == 0).sum())
    fold_out = tmp_path / "fold0"
    fold_out.mkdir(exist_ok=True)
    pd.DataFrame({"img_per_s": [100.0]}).to_csv(fold_out / "history.csv", index=False)
    return estimate_fold(cfg, 0, fold_out, timeout, pace=(n_train + n_valid / 2) / seconds)


def test_the_estimate_compares_with_the_time_a_session_trains_at_the_boundary(demo_dir, tmp_path, demo_cfg):
    budget = training_budget(360)  # a 6 min session trains for 42 s
    assert budget == 42
    fits = _estimate(demo_dir, tmp_path, demo_cfg, 360, budget)
    assert fits.endswith("take about 42 s; fits one session (which trains for up to 42 s of its 6.0 min)"), fits
    over = _estimate(demo_dir, tmp_path, demo_cfg, 360, budget + 1)
    assert over.endswith("take about 43 s; exceeds the 42 s a 6.0 min session trains for: about 2 sessions "
                         "(it stops and resumes)"), over
    long = _estimate(demo_dir, tmp_path, demo_cfg, 12 * 3600, 3 * 3600)
    assert long.endswith("take about 3.00 h; fits one session (which trains for up to 11.32 h of its 12.00 h)"), long


def test_a_session_too_short_to_train_says_so(demo_dir, tmp_path, demo_cfg):
    line = _estimate(demo_dir, tmp_path, demo_cfg, 2, 144)
    assert line.endswith("take about 2.4 min; a 2 s session leaves no time to train (5% and 5 min are kept for "
                         "saving); raise --timeout"), line
    assert " h" not in line  # no hours for seconds


# ---------------------------------------------------------------- a fold another process trains

HOLD = """
import sys, time
from pathlib import Path
from src.runs.layout import fold_lock, fold_paths
with fold_lock(fold_paths(Path(sys.argv[1]), 0), "fold 0"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_plain_run_of_a_fold_in_training_names_the_lock_and_its_process(demo_dir, tmp_path, tiny_cfg):
    cfg = tiny_cfg(demo_dir, tmp_path / "out")
    train_fold(cfg, 0)
    fp = fold_paths(cfg.out_dir, 0)
    fp.done.unlink()  # as while the first run trains: last.pt on disk, no done.json yet
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(cfg.out_dir)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError) as info:
            train_fold(cfg, 0)
    finally:
        holder.kill()
        holder.wait()
    message = str(info.value)
    assert f"being trained right now by process {holder.pid}" in message and str(fp.lock) in message
    assert "--resume" not in message
    with pytest.raises(UserError, match="pass --resume"):  # the holder gone, the run is an interrupted one
        train_fold(cfg, 0)


# ---------------------------------------------------------------- the learning rate under the lr finder


def test_the_lr_finder_prints_no_configured_rate_before_its_sweep(demo_dir, tmp_path, overrides_for, capsys):
    import src.train as train

    common = ["--config", "configs/demo.yaml", *overrides_for(demo_dir, tmp_path / "out", "optim.find_steps=20",
              "data.check_images=false", "loader.num_workers=0", "loader.batch_size=32", "model.name=test_resnet")]
    train.main([*common[:2], "--lr-find", *common[2:]])
    text = capsys.readouterr().out
    assert "effective batch size 32" in text and "learning rate" not in text and "as configured" not in text
    train.main([*common[:2], "--fold", "0", *common[2:], "optim.lr=find", "train.epochs=1", "train.limit_batches=2"])
    lines = capsys.readouterr().out.splitlines()
    found = max(i for i, line in enumerate(lines) if line.startswith("optim.lr=find: ") and "(found now)" in line)
    lr = json.loads((tmp_path / "out" / "demo" / "lr_find.json").read_text())["lr"]
    configured = [line for line in lines if "as configured" in line]
    assert len(configured) == 1 and f"learning rate {lr:g} as configured" in configured[0], configured
    assert lines.index(configured[0]) > found  # the fold's own line, after the rate was found


# ---------------------------------------------------------------- layer decay in a real run


def test_a_real_run_with_layer_decay_says_its_parameter_groups_as_the_dry_run_does(demo_dir, tmp_path, tiny_cfg,
                                                                                  capsys):
    cfg = tiny_cfg(demo_dir, tmp_path / "out", "optim.layer_decay=0.7")
    train_fold(cfg, 0, dry_run_only=True)
    dry = [line for line in capsys.readouterr().out.splitlines() if line.startswith("optimizer: ")]
    train_fold(cfg, 0)
    real = [line for line in capsys.readouterr().out.splitlines() if line.startswith("optimizer: ")]
    assert len(dry) == 1 and real == dry, (dry, real)
    assert "lr x 1 to x 1;" not in dry[0]  # the layers scale their rates


# ---------------------------------------------------------------- paths named by --help

COMMANDS = ("average", "bench", "demo", "ensemble", "folds", "init", "kaggle_kernel", "ledger", "pseudo", "probe", "report",
            "score", "train", "tune")
KAGGLE_VERBS = ("build", "rehearse", "train", "rehearse-train", "pull")
# A path of the checkout (not one a command writes: outputs/, inputs/, submissions/, kaggle_kernel/build/)
CHECKOUT_PATH = re.compile(r"(?<![\w/.<-])((?:src|configs|docs|tests|kaggle_kernel)/[\w./<>-]*[\w>])")


def _help(command: str, *verb: str) -> str:
    main = importlib.import_module(f"src.{command}").main
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([*verb, "--help"])
    return out.getvalue()


def named_paths(text: str) -> set[str]:
    """The checkout's files and folders a help text names; templates (<name>, X.yaml) and what the
    commands build left out."""
    return {p.rstrip(".") for p in CHECKOUT_PATH.findall(text)
            if "<" not in p and "/X." not in p and not p.startswith("kaggle_kernel/build")}


def test_every_path_a_commands_help_names_exists():
    texts = {c: _help(c) for c in COMMANDS} | {f"kaggle_kernel {v}": _help("kaggle_kernel", v) for v in KAGGLE_VERBS}
    named = {(c, p) for c, text in texts.items() for p in named_paths(text)}
    assert any(p.startswith("src/") for _, p in named) and len(named) > 10  # the pattern finds them
    missing = sorted((c, p) for c, p in named if not (REPO / p).exists())
    assert not missing, missing


def test_a_moved_module_in_a_help_text_is_caught():
    assert named_paths("every process (src/distributed.py); see configs/tune/<config>.yaml") == {"src/distributed.py"}
    assert not (REPO / "src/distributed.py").exists()
