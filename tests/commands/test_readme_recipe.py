"""The README's "Use your own competition" recipe, run as written on a small competition in the
layout it describes (Cassava's: train.csv with image_id,label, train_images/, test_images/,
sample_submission.csv): `python -m src.init` writes the config the README shows (keys and values;
the comments' counts are the data's), and the three commands read from the README itself run with
only the tiny model and one short epoch added on the command line. The ensemble runs with its
defaults (ensemble.tta: [auto, hflip]): it must score the plain and the flipped image on OOF, choose
between them, and write submissions/<name>_tta.csv."""

from __future__ import annotations

import re
import shutil

import pandas as pd
import pytest
import yaml
from conftest import REPO

import src.ensemble as ensemble
import src.init as init
import src.train as train
from src.core.cli import run_cli

TINY = ["model.name=test_resnet", "model.pretrained=false", "model.freeze_before=null", "aug.img_size=32",
        "train.epochs=1", "train.limit_batches=2", "loader.batch_size=16", "loader.num_workers=0",
        "data.n_folds=2", "wandb.mode=disabled", "runtime.device=cpu", "aug.hflip=false"]
NAME = "cassava-leaf-disease-classification"  # the folder the README's config shows


def _recipe() -> tuple[str, list[list[str]]]:
    """(the config src.init writes in step 2, the commands of step 2) from README.md."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Use your own competition"):]
    blocks = re.findall(r"```(yaml|bash)\n(.*?)```", section, re.S)
    yaml_text = next(b for kind, b in blocks if kind == "yaml")
    bash = next(b for kind, b in blocks if kind == "bash")
    commands = [line.split("#")[0].split() for line in bash.splitlines() if line.strip().startswith("python")]
    return "\n".join(line.strip() if not line.startswith("     ") else line[3:] for line in yaml_text.splitlines()), \
        commands


@pytest.mark.slow
def test_the_readme_recipe_chooses_its_views_on_oof_and_writes_the_submission(demo_dir, tmp_path, monkeypatch, capsys):
    comp = tmp_path / "inputs" / NAME
    for split in ("train", "test"):
        shutil.copytree(demo_dir / split, comp / f"{split}_images")
    for csv in ("train.csv", "sample_submission.csv"):
        pd.read_csv(demo_dir / csv, dtype=str).rename(columns={"id": "image_id"}).to_csv(comp / csv, index=False)
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    shown, commands = _recipe()
    monkeypatch.chdir(tmp_path)
    assert [c[:3] for c in commands] == [["python", "-m", "src.init"]] + [["python", "-m", "src.train"]] * 2 + \
        [["python", "-m", "src.ensemble"]]
    for command in commands:
        argv = [a.replace("<name>", NAME) for a in command[3:]]
        module = {"src.init": init, "src.train": train, "src.ensemble": ensemble}[command[2]]
        run_cli(module.main, argv if module is init else [*argv, *TINY])
    written = yaml.safe_load((tmp_path / "configs" / f"{NAME}.yaml").read_text())
    assert written == yaml.safe_load(shown), "the README shows another config than src.init writes"
    out = capsys.readouterr().out
    assert re.search(rf"{NAME}\s+identity", out) and re.search(rf"{NAME}\s+hflip", out), out[-2000:]
    assert "TTA auto chose" in out and "leave out identity" not in out
    sub = tmp_path / "submissions" / f"{NAME}_tta.csv"
    assert sub.is_file() and list(pd.read_csv(sub).columns) == ["image_id", "label"]


def test_a_view_list_without_identity_says_so(demo_dir, tmp_path, demo_cfg, capsys):
    from src.ensembling import pipeline
    from src.training.trainer import train_fold

    cfg = demo_cfg(demo_dir, tmp_path, *TINY)
    for k in (0, 1):
        train_fold(cfg, k)
    pipeline.run(cfg, None, ["hflip"], "equal", "soft", tmp_path / "flip.csv", None)
    assert "leave out identity" in capsys.readouterr().out
