"""Issue 31, the smaller ones: ordinal grades with gaps said, ensemble.min_labels refused where it
means nothing, a map@k sample of another placeholder count said, --format tags accepted, the
blend's last line in proper plurals, and f2_samples scored alike by src.score, the OOF and the
thresholds (its metric tests are in tests/evaluation/test_metrics.py; the overrides after a
many-valued flag in tests/core/test_cli.py)."""

from __future__ import annotations

import shutil
import typing
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

from src.core.cli import run_cli
from src.core.config import CONFIG_DIR, EnsembleCfg, load_config
from src.core.tasks import FORMATS, make_task
from src.core.utils import UserError
from src.ensembling import pipeline
from src.ensembling.pipeline import blend_shape
from src.ensembling.submission import checked_submission

DEMO = str(CONFIG_DIR / "demo.yaml")
FIXTURES = REPO / "tests" / "fixtures" / "blend"  # stored members (tests/ensembling/blend_cases.py)


# ---------------------------------------------------------------- ordinal grades with gaps


def test_ordinal_grades_with_gaps_are_said_once_naming_the_missing_grades():
    with pytest.warns(UserWarning, match=r"grades \[0, 1, 3, 4\] skip \[2\].*positions 0\.\.3") as caught:
        make_task("ordinal", ["0", "1", "3", "4"])
    assert len(caught) == 1 and "writes the grades themselves" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_task("ordinal", ["1", "2", "3"])  # consecutive from 1: positions are a shift, nothing to say
        make_task("ordinal")  # the kind-only form has no grades yet


# ---------------------------------------------------------------- ensemble.min_labels


@pytest.mark.parametrize("task", ["multiclass", "binary", "ordinal"])
def test_min_labels_is_refused_where_only_multilabel_reads_it(task):
    with pytest.raises(UserError, match=rf"ensemble.min_labels=1 .*this competition is {task}, so set "
                                        r"ensemble.min_labels=0"):
        load_config(DEMO, [f"data.task={task}", "ensemble.min_labels=1"])
    load_config(DEMO, [f"data.task={task}", "ensemble.min_labels=0"])


def test_min_labels_stays_a_multilabel_setting():
    assert load_config(CONFIG_DIR / "demo_multilabel.yaml", ["ensemble.min_labels=1"]).ensemble.min_labels == 1


# ---------------------------------------------------------------- map@k and the placeholders' count


def _topk(words: int, top_k: int | None, capsys) -> tuple[pd.DataFrame, str, str]:
    classes = [f"c{i}" for i in range(10)]
    sample = pd.DataFrame({"id": [f"t{i}" for i in range(6)], "label": " ".join(classes[:words])})
    probs = np.random.default_rng(0).dirichlet(np.ones(10), 6)
    capsys.readouterr()
    sub, fmt = checked_submission(probs, sample, "id", "auto", "map@5", top_k, None, make_task("multiclass", classes))
    return sub, fmt, capsys.readouterr().out


def test_a_map_at_5_sample_with_three_placeholders_writes_five_labels_and_says_so(capsys):
    sub, fmt, out = _topk(3, None, capsys)
    assert fmt == "top5" and (sub["label"].str.split().str.len() == 5).all()
    lines = out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: ")
    assert "hold 3 labels" in lines[0] and "metric.name=map@5" in lines[0] and "writing 5 labels" in lines[0]
    assert "ensemble.top_k=3" in lines[0]


@pytest.mark.parametrize("words, top_k, written", [(5, None, 5), (1, None, 5), (3, 3, 3)])
def test_no_warning_where_the_placeholders_agree_or_top_k_is_set(words, top_k, written, capsys):
    sub, _, out = _topk(words, top_k, capsys)
    assert out == "" and (sub["label"].str.split().str.len() == written).all()


# ---------------------------------------------------------------- --format tags


def test_the_format_choices_are_the_one_list_of_formats():
    assert typing.get_args(EnsembleCfg.model_fields["format"].annotation) == ("auto", *FORMATS)
    assert "tags" in FORMATS


@pytest.mark.parametrize("argv", [["ensemble"], ["kaggle_kernel", "build"]])
def test_format_tags_is_taken_on_the_command_line(argv, tmp_path, monkeypatch, capsys):
    """It parses (the command goes on, to the config, which names no competition here)."""
    import importlib

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        run_cli(importlib.import_module(f"src.{argv[0]}").main, [*argv[1:], "--format", "tags"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "invalid choice" not in err and "no competition folder is configured" in err


# ---------------------------------------------------------------- the blend's last line


def test_blend_shape_counts_in_proper_plurals():
    assert blend_shape([2], 2) == "1 member x 2 folds x 2 views"
    assert blend_shape([1, 1], 1) == "2 members x 1 fold x 1 view"
    assert blend_shape([2, 5], 3) == "2 members x 2 to 5 folds x 3 views"


def test_the_ensembles_last_line_names_the_real_fold_count(task_competition, tmp_path, capsys):
    comp, config, overrides = task_competition("ordinal")
    shutil.copytree(FIXTURES / "ordinal" / "outputs", tmp_path / "outputs")
    cfg = load_config(config, [f"data.dir={comp}", f"experiment.output_dir={tmp_path / 'outputs'}", "data.n_folds=2",
                               "data.check_images=false", "loader.num_workers=0", "wandb.mode=disabled",
                               "runtime.device=cpu", *overrides, "ensemble.tta=[identity]"])
    pipeline.run(cfg, ["a"], None, "equal", None, tmp_path / "ens" / "submission.csv")
    wrote = [line for line in capsys.readouterr().out.splitlines() if line.startswith("wrote ")]
    assert len(wrote) == 1 and "1 member x 2 folds x 1 view)" in wrote[0], wrote
