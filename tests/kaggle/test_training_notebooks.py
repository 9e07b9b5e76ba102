"""Kaggle notebooks as the training machine (`kaggle_kernel train`, `rehearse-train`, `pull`): the built code dataset and per-fold
notebooks pass the kaggle CLI's own checks; rehearsed on a fake /kaggle, two folds train and leave
their outputs where Kaggle mounts them; a notebook out of time stops between epochs and its next
version resumes from its own previous output; the blend of those outputs is src.ensemble's."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

import src.kaggle_kernel as kk
from src.core.config import load_config
from src.core.utils import UserError
from src.ensembling import pipeline
from src.runs.checkpoint import load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from test_kaggle_kernel import _kaggle_api, _ReachedTheNetwork, notebook_imports  # noqa: E402  (the CLI harness, shared)

SHORT = "train.epochs=2 train.limit_batches=2"
BASE = ("data.n_folds=5", "loader.num_workers=0", "loader.batch_size=16", "data.check_images=false",
        "train.epochs=2", "train.limit_batches=2")


def _argv(verb, demo_dir, out, *extra):
    """`verb` (train or rehearse-train) with the notebooks in out/build."""
    return [verb, "--config", "configs/demo.yaml", f"data.dir={demo_dir}", f"experiment.output_dir={out / 'outputs'}",
            "wandb.mode=disabled", *BASE, *(["--no-wheels"] if verb == "train" else []), "--out", str(out / "build"),
            *extra]


@pytest.fixture(scope="module")
def split(tmp_path_factory, demo_dir):
    out = tmp_path_factory.mktemp("train_nb")
    import src.folds as folds_cli

    folds_cli.main(["--config", "configs/demo.yaml", f"data.dir={demo_dir}", f"experiment.output_dir={out / 'outputs'}"])
    return out


def test_built_training_notebooks_pass_the_kaggle_clis_checks(demo_dir, split, tmp_path, monkeypatch, capsys):
    out = tmp_path
    shutil.copytree(split / "outputs", out / "outputs")
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    kk.main(_argv("train", demo_dir, out, "--folds", "0", "1"))
    build = out / "build"
    assert sorted(p.name for p in build.iterdir()) == ["code", "fold0", "fold1"]
    meta = json.loads((build / "fold1" / "kernel-metadata.json").read_text())
    assert meta["id"] == "someone/demo-train-fold1" and meta["kernel_sources"] == [meta["id"]]  # its own output
    assert meta["enable_internet"] is False and meta["enable_gpu"] is True
    assert meta["dataset_sources"] == ["someone/demo-code"] and meta["competition_sources"] == ["digits"]
    code = build / "code"
    assert (code / "src" / "train.py").is_file() and (code / "configs" / "base.yaml").is_file()
    assert sorted(p.name for p in (code / "folds").iterdir()) == ["digits_k5_s42.csv", "digits_k5_s42.json"]
    notebook = next((build / "fold0").glob("*.ipynb"))
    assert notebook_imports(notebook) == [("src.kaggle.wheels", "install_wheels"), ("src.kaggle.on_kaggle", "train")]
    with pytest.raises(UserError, match=r"--folds \[3\] have no notebook"):
        kk.main(_argv("rehearse-train", demo_dir, out, "--folds", "3"))
    api = _kaggle_api(tmp_path, monkeypatch)
    for push in (lambda: api.dataset_create_new(str(code), dir_mode="zip"),
                 lambda: api.kernels_push(str(build / "fold0"))):
        with pytest.raises(_ReachedTheNetwork):  # a ValueError here is the CLI refusing the metadata
            push()


@pytest.fixture(scope="module")
def rehearsed(demo_dir, split, tmp_path_factory):
    """Fold 0 rehearsed with a 1 s session (its notebook stops after its first epoch), then folds 0
    and 1 with a normal one (fold 0 resumes from its own previous output, fold 1 starts, both finish)."""
    out = tmp_path_factory.mktemp("rehearsed")
    root = out / "kaggle"
    shutil.copytree(split / "outputs", out / "outputs")
    kk.main(_argv("train", demo_dir, out, "--folds", "0", "1", "--timeout", "1"))
    kk.main(_argv("rehearse-train", demo_dir, out, "--folds", "0", "--kaggle-root", str(root),
                  "--rehearse-overrides", SHORT))
    assert not (root / "input" / "demo-train-fold1").exists()  # --folds 0: fold 1's notebook did not run
    stopped = {k: root / "input" / f"demo-train-fold{k}" / "outputs" / "demo" / f"fold{k}" for k in (0,)}
    first = {k: (sorted(p.name for p in d.iterdir()), load_checkpoint(d / "last.pt")) for k, d in stopped.items()}
    first = {k: (names, last["epoch"], last["history"]) for k, (names, last) in first.items()}
    kk.main(_argv("train", demo_dir, out, "--folds", "0", "1"))
    kk.main(_argv("rehearse-train", demo_dir, out, "--folds", "0", "1", "--kaggle-root", str(root),
                  "--rehearse-overrides", SHORT))
    return SimpleNamespace(out=out, root=root, first=first)


def _kernel_output(rehearsed, k: int) -> Path:
    return rehearsed.root / "input" / f"demo-train-fold{k}"


def test_a_notebook_out_of_time_stops_between_epochs_and_its_next_version_resumes(rehearsed):
    names, epoch, stopped_history = rehearsed.first[0]
    assert "last.pt" in names and "done.json" not in names and epoch == 0  # one epoch of two, kept
    for k in (0, 1):  # fold 0 resumed, fold 1 from its start: each ran both epochs once
        fold = _kernel_output(rehearsed, k) / "outputs" / "demo" / f"fold{k}"
        done = json.loads((fold / "done.json").read_text())
        history = pd.read_csv(fold / "history.csv")
        assert done["epochs_run"] == 2 and list(history["epoch"]) == [0, 1]
        assert not (fold / "last.pt").exists()
        assert "train_state" not in load_checkpoint(fold / "best.pt")  # slimmed as the bundle's
    # Fold 0 went on from the stopped version: its epoch 0 is that version's, timings and all (a
    # restart would have trained epoch 0 again, at another time_s and img_per_s).
    resumed = pd.read_csv(_kernel_output(rehearsed, 0) / "outputs" / "demo" / "fold0" / "history.csv")
    assert len(stopped_history) == 1
    assert [resumed.iloc[0][c] for c in ("time_s", "img_per_s")] == [stopped_history[0][c] for c in ("time_s", "img_per_s")]


def test_pulled_folds_blend_as_local_ones(rehearsed, demo_dir, capsys):
    out = rehearsed.out
    local = out / "outputs"
    for k in (0, 1):
        kk.main(["pull", f"you/demo-train-fold{k}", "--config", "configs/demo.yaml", f"data.dir={demo_dir}",
                 f"experiment.output_dir={local}", *BASE, "--pulled", str(_kernel_output(rehearsed, k))])
    assert "pulled folds [1] of demo from you/demo-train-fold1" in capsys.readouterr().out
    assert sorted(p.name for p in (local / "demo").glob("fold*")) == ["fold0", "fold1"]
    cfg = load_config("configs/demo.yaml", [f"data.dir={demo_dir}", f"experiment.output_dir={local}",
                                            "wandb.mode=disabled", "ensemble.missing_folds=warn", "loader.num_workers=0"])
    sub = pipeline.run(cfg, ["demo"], ["identity"], out=out / "sub" / "s.csv")
    assert len(pd.read_csv(sub)) == 360
    # An inference bundle built from them into a folder that holds training notebooks keeps those.
    (out / "ib" / "train").mkdir(parents=True)
    (out / "ib" / "train" / "kept").write_text("x")
    kk.main(["build", "--config", "configs/demo.yaml", f"data.dir={demo_dir}", f"experiment.output_dir={local}",
             "wandb.mode=disabled", "ensemble.missing_folds=warn", "loader.num_workers=0", "--experiments", "demo",
             "--no-tta", "--no-wheels", "--out", str(out / "ib")])
    assert (out / "ib" / "train" / "kept").is_file() and (out / "ib" / "dataset" / "MANIFEST.json").is_file()


@pytest.mark.parametrize("case,extra,message", [
    ("another config", ("loss.smoothing=0.1",), r"other settings than experiment demo in \['loss.smoothing'\]"),
    ("another folds file", ("data.fold_seed=7",), "another split than"),
    ("another competition", ("data.n_folds=4",), "another split than"),
    ("another experiment", ("experiment.name=other",), "holds no fold of experiment other"),
])
def test_a_pulled_output_of_another_run_is_refused_and_nothing_written(rehearsed, demo_dir, tmp_path, case, extra,
                                                                       message):
    local = tmp_path / "outputs"
    shutil.copytree(rehearsed.out / "outputs" / "folds", local / "folds")
    import src.folds as folds_cli

    folds_cli.main(["--config", "configs/demo.yaml", f"data.dir={demo_dir}", f"experiment.output_dir={local}", *extra])
    before = sorted(str(p) for p in local.rglob("*"))
    with pytest.raises(UserError, match=message):
        kk.main(["pull", "--config", "configs/demo.yaml", f"data.dir={demo_dir}", f"experiment.output_dir={local}",
                 *BASE, *extra, "you/demo-train-fold0", "--pulled", str(_kernel_output(rehearsed, 0))])
    assert sorted(str(p) for p in local.rglob("*")) == before


def test_pull_offline_names_the_way_round(demo_dir, rehearsed, tmp_path):
    """In a process of its own: the kaggle package exits on import without a token, which must
    become the one sentence (and must not leave this test process with a half-imported package)."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN")}
    env["KAGGLE_CONFIG_DIR"] = str(tmp_path / "none")
    proc = subprocess.run([sys.executable, "-m", "src.kaggle_kernel", "pull", "you/demo-train-fold0", "--config",
                           "configs/demo.yaml", f"data.dir={demo_dir}", f"experiment.output_dir={tmp_path}"],
                          cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "kaggle kernels output you/demo-train-fold0 -p DIR" in proc.stderr and "--pulled DIR" in proc.stderr
    assert not (tmp_path / "demo").exists()


def test_the_hub_or_a_missing_split_is_refused_before_building(demo_dir, tmp_path, split, capsys):
    shutil.copytree(split / "outputs", tmp_path / "outputs")
    with pytest.raises(UserError, match="model.pretrained=true cannot reach the hub there.*--weights-dataset"):
        kk.main(_argv("train", demo_dir, tmp_path, "model.pretrained=true"))
    with pytest.raises(UserError, match="model.pretrained_path .* --weights-dataset USER/SLUG"):
        kk.main(_argv("train", demo_dir, tmp_path, "model.pretrained_path=/w/resnet.safetensors"))
    with pytest.raises(UserError, match="holds no built training notebooks; build them first"):
        kk.main(_argv("rehearse-train", demo_dir, tmp_path))
    shutil.rmtree(tmp_path / "outputs" / "folds")
    with pytest.raises(UserError, match="run python -m src.folds"):  # no split to give every notebook
        kk.main(_argv("train", demo_dir, tmp_path))
    assert not (tmp_path / "build").exists()


def test_the_inference_notebook_fed_from_the_training_notebooks_writes_src_ensembles_submission(
        rehearsed, demo_dir, tmp_path, capsys, monkeypatch):
    """The whole path: two folds trained by their notebooks (rehearsed), pulled, an inference bundle
    that carries no weights but attaches those notebooks, rehearsed: byte-identical to src.ensemble."""
    local = tmp_path / "outputs"
    shutil.copytree(rehearsed.out / "outputs" / "folds", local / "folds")
    common = ["--config", "configs/demo.yaml", f"data.dir={demo_dir}", f"experiment.output_dir={local}", *BASE,
              "ensemble.missing_folds=warn"]
    kernels = ["you/demo-train-fold0", "you/demo-train-fold1"]
    for k, kernel in enumerate(kernels):
        kk.main(["pull", kernel, *common, "--pulled", str(_kernel_output(rehearsed, k))])
    build = tmp_path / "build"
    kk.main(["build", *common, "--experiments", "demo", "--tta", "identity", "zoom1.05", "--no-wheels", "--out", str(build),
             "--from-kernels", *kernels])
    manifest = json.loads((build / "dataset" / "MANIFEST.json").read_text())
    meta = json.loads((build / "notebook" / "kernel-metadata.json").read_text())
    assert meta["kernel_sources"] == kernels and manifest["kernel_sources"] == kernels
    assert not (build / "dataset" / "outputs").exists()  # no weights uploaded
    api = _kaggle_api(tmp_path, monkeypatch)
    with pytest.raises(_ReachedTheNetwork):  # the CLI accepts the metadata with its kernel_sources
        api.kernels_push(str(build / "notebook"))
    with pytest.raises(UserError, match="rehearse the training notebooks first"):
        kk.main(["rehearse", *common, "--out", str(build)])
    kk.main(["rehearse", *common, "--out", str(build), "--kaggle-root", str(rehearsed.root)])
    cfg = load_config("configs/demo.yaml", [f"data.dir={demo_dir}", f"experiment.output_dir={local}",
                                            "wandb.mode=disabled", "ensemble.missing_folds=warn", "loader.num_workers=0"])
    local_sub = pipeline.run(cfg, ["demo"], manifest["views"], manifest["weights"], manifest["voting"],
                             tmp_path / "sub" / "local.csv")
    assert (build / "rehearsal" / "submission.csv").read_bytes() == local_sub.read_bytes()


def test_a_fold_that_would_not_fit_a_session_is_reported_before_pushing(rehearsed, demo_dir):
    from src.kaggle.training import estimate_fold

    cfg = load_config("configs/demo.yaml", [f"data.dir={demo_dir}", f"experiment.output_dir={rehearsed.out / 'outputs'}"])
    fold = _kernel_output(rehearsed, 0) / "outputs" / "demo" / "fold0"
    n_train, n_valid = 1149, 288  # the demo's fold 0; 17 steps an epoch, 12 epochs (204 >= train.min_steps)
    slow = estimate_fold(cfg, 0, fold, timeout=3600, pace=1.0)
    hours = 12 * (n_train + n_valid / 2) / 3600
    assert f"12 epochs of {n_train} images at --pace (1 img/s) take about {hours:.2f} h" in slow
    assert f"exceeds the 52.0 min a 60.0 min session trains for: about {int(-(-hours * 3600 // 3120))} sessions" in slow
    assert estimate_fold(cfg, 0, fold, timeout=3600, pace=1e4).endswith("fits one session (which trains for up to 52.0 min of its 60.0 min)")
    assert "at this machine's rehearsal pace" in estimate_fold(cfg, 0, fold, timeout=3600, pace=None)
