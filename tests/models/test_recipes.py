"""The backbone recipes in configs/recipes/: each builds (pretrained=false), sets up its layer
decay, drop path and checkpointing, and runs one forward pass; each says where its numbers come from."""

from __future__ import annotations

import re

import pytest

import src.train as train
from src.core.config import CONFIG_DIR, load_config

RECIPES = sorted((CONFIG_DIR / "recipes").glob("*.yaml"))
FAMILIES = {"convnextv2": "convnextv2_", "efficientnetv2": "efficientnetv2_", "eva02": "eva02_", "dinov2": "dinov2"}


def test_there_is_a_recipe_for_each_family_winners_use():
    assert {p.stem for p in RECIPES} == set(FAMILIES)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_a_recipe_dry_runs_and_cites_its_numbers(path, demo_dir, tmp_path, overrides_for, capsys):
    cfg = load_config(path, ["data.dir=inputs/x"])
    assert FAMILIES[path.stem] in cfg.model.name and cfg.model.pretrained
    text = path.read_text()
    comments = "\n".join(line.split("#", 1)[1] for line in text.splitlines() if "#" in line)
    assert re.search(r"\b(facebookresearch|google|baaivision)/[\w-]+", comments), "a recipe names its source repository"
    assert re.search(r"[\w-]+\.(md|py)\b", comments), "... and the file the numbers are read from"
    # The real sizes are the recipes' own; the dry run here uses 112 px to stay quick on a CPU.
    train.main(["--config", str(path), "--fold", "0", "--dry-run",
                *overrides_for(demo_dir, tmp_path, "model.pretrained=false", "aug.img_size=112",
                               "data.check_images=false", "loader.num_workers=0")])
    out = capsys.readouterr().out
    groups = re.search(r"optimizer: (\d+) parameter groups, lr x ([\d.e-]+) to x ([\d.e-]+)", out)
    assert groups and "logits (4, 10)" in out
    if cfg.optim.layer_decay:
        assert float(groups.group(2)) < cfg.optim.layer_decay ** 5  # the stem many blocks below the head
    else:
        assert float(groups.group(2)) == 1.0
