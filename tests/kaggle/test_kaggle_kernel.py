"""The offline Kaggle bundle: built from real trained folds, rehearsed headless on a fake /kaggle,
and its submission byte-identical to what src.ensemble writes locally."""

from __future__ import annotations

import ast
import importlib
import json
import os
import shutil
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import torch

from src import kaggle_kernel
from src.core.cli import run_cli
from src.core.config import load_config
from src.ensembling import pipeline
from src.kaggle.wheels import IMAGE_FILE, canonical, installed_fits, needed_wheels, read_image
from src.runs.layout import fold_paths
from src.training.trainer import train_fold

REPO = Path(__file__).resolve().parents[2]
VIEWS = ["identity", "hflip"]


@pytest.fixture(scope="module")
def trained(demo_dir, tiny_cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("kernel")
    cfg = tiny_cfg(demo_dir, out / "outputs", "data.n_folds=2", "experiment.name=tiny")
    for k in (0, 1):
        train_fold(cfg, k)
    return out


def _args(verb: str, demo_dir, root: Path, *extra: str, data_dir: Path | None = None) -> list[str]:
    """`verb` on the tiny experiment (build: its member) with the build in root/build."""
    return [verb, "--config", str(REPO / "configs" / "demo.yaml"), *(["--experiments", "tiny"] if verb == "build" else []),
            "--out", str(root / "build"), f"data.dir={data_dir or demo_dir}", f"experiment.output_dir={root / 'outputs'}",
            "data.n_folds=2", "loader.num_workers=0", "wandb.mode=disabled", *extra]


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        run_cli(kaggle_kernel.main, argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def built(demo_dir, trained, tmp_path_factory):
    """A bundle (no wheels) of the tiny experiment, with hflip TTA and fitted weights."""
    root = tmp_path_factory.mktemp("built")
    shutil.copytree(trained / "outputs", root / "outputs")
    run_cli(kaggle_kernel.main, _args("build", demo_dir, root, "--tta", *VIEWS, "--weights", "auto", "--no-wheels",
                                      "--dataset", "someone/tiny-bundle", "--kernel", "someone/tiny-inference"))
    return root


def test_the_rehearsed_submission_is_byte_identical_to_the_local_ensemble(demo_dir, demo_cfg, built, capsys):
    code, out, err = _cli(_args("rehearse", demo_dir, built, "--time-limit", "9"), capsys)
    assert code == 0, err
    assert "submission checked" in out and "of the 9 h limit" in out
    manifest = json.loads((built / "build" / "dataset" / "MANIFEST.json").read_text())
    assert manifest["views"] == VIEWS and len(manifest["weights"]) == 1
    cfg = demo_cfg(demo_dir, built / "outputs", "data.n_folds=2", "loader.num_workers=0")
    local = pipeline.run(cfg, ["tiny"], manifest["views"], manifest["weights"], manifest["voting"],
                         built / "local.csv", manifest["format"])
    assert (built / "build" / "rehearsal" / "submission.csv").read_bytes() == local.read_bytes()


def test_a_scaled_rehearsal_checks_every_row_and_extrapolates(demo_dir, built, capsys):
    code, out, err = _cli(_args("rehearse", demo_dir, built, "--scale", "2", "--hidden-size", "100000000",
                                "--time-limit", "1"), capsys)
    assert code == 0, err
    sub = pd.read_csv(built / "build" / "rehearsal" / "submission.csv", dtype=str)
    sample = pd.read_csv(demo_dir / "sample_submission.csv", dtype=str)
    assert len(sub) == 2 * len(sample) and sub["id"].is_unique
    assert "720 test images" in out and "estimate for 100000000 hidden test images" in out
    assert "WARNING: the estimate exceeds the 1 h limit" in out


def test_metadata_notebook_and_slim_weights(built):
    ds, nbdir = built / "build" / "dataset", built / "build" / "notebook"
    meta = json.loads((ds / "dataset-metadata.json").read_text())
    assert meta["id"] == "someone/tiny-bundle" and meta["title"] == "tiny-bundle" and meta["licenses"]
    kmeta = json.loads((nbdir / "kernel-metadata.json").read_text())
    assert kmeta == {**kmeta, "id": "someone/tiny-inference", "language": "python", "kernel_type": "notebook",
                     "is_private": True, "enable_gpu": True, "enable_internet": False,
                     "dataset_sources": ["someone/tiny-bundle"], "competition_sources": ["digits"]}
    nb = nbformat.read(nbdir / kmeta["code_file"], as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4 and "from src.kaggle.on_kaggle import infer" in "".join(c.source for c in nb.cells)
    for k in (0, 1):
        ckpt = torch.load(fold_paths(ds / "outputs" / "tiny", k).best, weights_only=True)
        assert set(ckpt) == {"model", "config", "classes", "fold", "run_id"}  # no optimizer, scheduler or RNG state
        assert all(t.dtype == torch.float32 for t in ckpt["model"].values() if t.is_floating_point())
    # the whole package, every subpackage included, and nothing but source
    shipped = {p.relative_to(ds / "code" / "src").as_posix() for p in (ds / "code" / "src").rglob("*") if p.is_file()}
    source = {p.relative_to(REPO / "src").as_posix() for p in (REPO / "src").rglob("*.py")} | {"kaggle/kaggle_image.txt"}
    assert shipped == source and {"ensemble.py", "runs/members.py", "kaggle/wheels.py"} <= shipped
    assert not (ds / "wheels").exists()  # --no-wheels


def test_half_halves_the_weights(demo_dir, built, tmp_path, capsys):
    shutil.copytree(built / "outputs", tmp_path / "outputs")
    code, out, err = _cli(_args("build", demo_dir, tmp_path, "--no-tta", "--half", "--no-wheels"), capsys)
    assert code == 0, err
    assert "MiB" in out  # the size is printed
    half = torch.load(fold_paths(tmp_path / "build" / "dataset" / "outputs" / "tiny", 0).best, weights_only=True)
    full = torch.load(fold_paths(built / "build" / "dataset" / "outputs" / "tiny", 0).best, weights_only=True)
    assert all(t.dtype == torch.float16 for t in half["model"].values() if t.is_floating_point())
    size = {k: sum(t.numel() * t.element_size() for t in c["model"].values()) for k, c in (("h", half), ("f", full))}
    assert size["h"] < 0.6 * size["f"]


def _fails_building_nothing(argv, root: Path, capsys, *needles: str) -> None:
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    code, _, err = _cli(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert all(n in err for n in needles), err
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_a_member_with_a_missing_fold_builds_nothing(demo_dir, trained, tmp_path, capsys):
    shutil.copytree(trained / "outputs", tmp_path / "outputs")
    fold_paths(tmp_path / "outputs" / "tiny", 1).done.unlink()
    _fails_building_nothing(_args("build", demo_dir, tmp_path, "--no-wheels"), tmp_path, capsys, "folds [1]", "tiny")


def test_an_experiment_of_another_competition_builds_nothing(demo_dir, trained, tmp_path, capsys, overrides_for):
    shutil.copytree(trained / "outputs", tmp_path / "outputs")
    other = tmp_path / "letters"
    shutil.copytree(demo_dir, other, copy_function=os.link)
    table = pd.read_csv(demo_dir / "train.csv", dtype=str)
    table["label"] = table["label"].map(lambda d: "abcdefghij"[int(d)])
    (other / "train.csv").unlink()
    table.to_csv(other / "train.csv", index=False)
    from src.data.folds import load_or_create_folds

    load_or_create_folds(load_config(REPO / "configs" / "demo.yaml",
                                     overrides_for(other, tmp_path / "outputs", "data.n_folds=2")))
    _fails_building_nothing(_args("build", demo_dir, tmp_path, "--no-wheels", data_dir=other), tmp_path, capsys,
                            "trained for another competition", "tiny")


def test_rehearsing_an_unreadable_test_image_names_it(demo_dir, built, tmp_path, capsys):
    comp = tmp_path / "digits"
    shutil.copytree(demo_dir, comp, copy_function=os.link)
    victim = sorted((comp / "test").glob("*.png"))[3]
    victim.unlink()
    victim.write_bytes(b"not a png")
    code, _, err = _cli(_args("rehearse", demo_dir, built, data_dir=comp), capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert victim.name in err and "cannot be decoded" in err


def test_rehearsing_without_a_build_says_to_build(demo_dir, tmp_path, capsys):
    code, _, err = _cli(_args("rehearse", demo_dir, tmp_path), capsys)
    assert code == 2 and "holds no built bundle" in err


def _image_without(tmp_path: Path, *names: str) -> Path:
    """Today's Kaggle image list without `names`, for this machine's Python (so the rehearsal can
    install its compiled wheels)."""
    keep = [line for line in IMAGE_FILE.read_text().splitlines()
            if not line.startswith("# python") and canonical(line.split("==")[0]) not in names]
    path = tmp_path / "image.txt"
    path.write_text("\n".join(keep + [f"# python: {sys.version_info.major}.{sys.version_info.minor}"]) + "\n")
    return path


def test_what_the_image_lacks_is_bundled_with_its_exact_dependencies(demo_dir, trained, tmp_path, capsys):
    """An image without pydantic: pydantic, its pinned pydantic-core (compiled, manylinux, for the
    image's Python) and the newer typing packages it needs are bundled, nothing the image has."""
    image, _ = read_image(_image_without(tmp_path, "pydantic", "pydantic-core"))
    needed = needed_wheels(image, "3.12")
    assert {"pydantic", "pydantic-core"} <= set(needed) and "timm" not in needed and "torch" not in needed
    assert needed["pydantic-core"]["requires"].startswith("==")  # pydantic pins its core exactly
    assert set(needed_wheels(read_image()[0], "3.12")) == {"iterative-stratification"}  # today's image (pydicom is in it)
    shutil.copytree(trained / "outputs", tmp_path / "outputs")
    code, _, err = _cli(_args("build", demo_dir, tmp_path, "--no-tta", "--image", str(tmp_path / "image.txt")), capsys)
    if code == 2 and "cannot fetch the wheels" in err:
        pytest.skip(f"the package index cannot be reached here: {err.strip()}")
    assert code == 0, err
    index = json.loads((tmp_path / "build" / "dataset" / "wheels" / "wheels.json").read_text())["wheels"]
    assert set(index) == set(needed_wheels(image, f"{sys.version_info.major}.{sys.version_info.minor}"))
    core = index["pydantic-core"]["file"]
    assert "manylinux" in core and f"cp{sys.version_info.major}{sys.version_info.minor}" in core
    for name, w in index.items():
        assert (tmp_path / "build" / "dataset" / "wheels" / w["file"]).is_file(), name
    # the rehearsal hides what the image lacks: it passes with the wheels, and fails naming the package without one
    code, out, err = _cli(_args("rehearse", demo_dir, tmp_path), capsys)
    assert code == 0 and "submission checked" in out, err
    wheels = tmp_path / "build" / "dataset" / "wheels"
    (wheels / core).unlink()
    listed = json.loads((wheels / "wheels.json").read_text())
    del listed["wheels"]["pydantic-core"]
    (wheels / "wheels.json").write_text(json.dumps(listed))
    code, _, err = _cli(_args("rehearse", demo_dir, tmp_path), capsys)
    assert code == 2 and "pydantic_core" in err and "the Kaggle image lacks pydantic-core" in err, err


def test_a_bundled_wheel_is_installed_only_where_the_image_does_not_fit():
    assert installed_fits("timm", ">=1.0")
    assert not installed_fits("timm", ">=999")
    assert not installed_fits("a-package-that-is-not-installed", ">=0")


def test_a_write_into_the_read_only_input_is_caught(tmp_path):
    """The rehearsal's input check can fail: a new file, a changed file and a removed file under
    the (fake) /kaggle/input are each reported."""
    from src.core.utils import UserError
    from src.kaggle.rehearsal import check_inputs_untouched, snapshot

    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "b.txt").write_text("b")
    before = snapshot(tmp_path)
    check_inputs_untouched(before, snapshot(tmp_path))  # nothing written: no error
    for change in (lambda: (tmp_path / "cache" / "x.npy").parent.mkdir() or (tmp_path / "cache" / "x.npy").write_bytes(b"1"),
                   lambda: (tmp_path / "a.txt").write_text("aa"),
                   lambda: (tmp_path / "b.txt").unlink()):
        change()
        with pytest.raises(UserError, match="read-only on Kaggle"):
            check_inputs_untouched(before, snapshot(tmp_path))
        before = snapshot(tmp_path)


def notebook_imports(notebook: Path) -> list[tuple[str, str]]:
    """Every `from src... import name` in the notebook's code cells, each checked to name a module
    and an attribute that exist (the cells are strings, which no import checker reads); and every
    cell but those that put the code on sys.path one short call into the package (3 lines at most)."""
    found = []
    cells = [c.source for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "code"]
    for cell in cells:
        for node in ast.walk(ast.parse(cell)):
            if isinstance(node, ast.ImportFrom) and node.module.startswith("src"):
                module = importlib.import_module(node.module)
                assert all(hasattr(module, a.name) for a in node.names), node.module
                found += [(node.module, a.name) for a in node.names]
    work = [c for c in cells if "sys.path.insert" not in c]
    assert all(len([line for line in c.splitlines() if line.strip() and not line.startswith("#")]) <= 3
               for c in work), work
    return found


def test_every_notebook_cell_is_a_call_into_the_package_that_resolves(built, tmp_path):
    from src.kaggle.rehearsal import guarded_notebook

    notebook = next((built / "build" / "notebook").glob("*.ipynb"))
    assert notebook_imports(notebook) == [("src.kaggle.wheels", "install_wheels"), ("src.kaggle.on_kaggle", "infer")]
    guarded = guarded_notebook(notebook, ["iterative-stratification"], built / "build" / "dataset" / "code",
                               tmp_path / "guarded.ipynb")
    assert notebook_imports(guarded)[0] == ("src.kaggle.wheels", "hide_lacking")


OLD_SPELLINGS = [  # (the words after `python -m src.kaggle_kernel`, the command the one sentence names)
    ([], "build --config configs/<name>.yaml --experiments <exp>"),
    (["--config", "configs/demo.yaml", "--experiments", "demo", "--tta"],
     "build --config configs/demo.yaml --experiments demo --tta"),
    (["--config", "configs/demo.yaml", "--rehearse", "--scale", "4"], "rehearse --config configs/demo.yaml --scale 4"),
    (["--config", "configs/demo.yaml", "--train", "--folds", "0", "1"], "train --config configs/demo.yaml --folds 0 1"),
    (["--config", "configs/demo.yaml", "--train", "--folds", "0", "--rehearse"],
     "rehearse-train --config configs/demo.yaml --folds 0"),
    (["--config", "configs/demo.yaml", "--pull", "you/a-train-fold0", "you/a-train-fold1", "--pulled", "d"],
     "pull you/a-train-fold0 you/a-train-fold1 --config configs/demo.yaml --pulled d"),
    (["--config", "configs/demo.yaml", "rehearse"], "rehearse --config configs/demo.yaml"),
    (["--config", "configs/demo.yaml", "--experiments", "demo", "--rehearse", "data.n_folds=2"],
     "rehearse --config configs/demo.yaml data.n_folds=2` (without --experiments, which rehearse does not take"),
]


@pytest.mark.parametrize("argv,meant", OLD_SPELLINGS, ids=["no-verb", "build", "rehearse", "train", "train-rehearse",
                                                           "pull", "verb-last", "not-its-option"])
def test_an_old_spelling_names_the_new_command_and_writes_nothing(argv, meant, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = _cli(argv, capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert "python -m src.kaggle_kernel now takes a verb first" in err and f"`python -m src.kaggle_kernel {meant}" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [["rehearse", "--experiments", "tiny"], ["pull", "you/k", "--half"],
                                  ["train", "--scale", "2"], ["rehearse-train", "--from-kernels", "you/k"]])
def test_each_verb_takes_only_its_own_options(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = _cli([*argv, "--config", str(REPO / "configs" / "demo.yaml")], capsys)
    assert code == 2 and "unrecognized arguments" in err and list(tmp_path.iterdir()) == []


class _ReachedTheNetwork(Exception):
    """The kaggle CLI got past its own metadata checks to its first request."""


def _kaggle_api(tmp_path: Path, monkeypatch):
    """The kaggle package's API with dummy credentials; its first network request raises instead."""
    config = tmp_path / "kaggle_config"
    config.mkdir()
    (config / "kaggle.json").write_text('{"username": "someone", "key": "0123456789abcdef0123456789abcdef"}')
    (config / "kaggle.json").chmod(0o600)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(config))
    for key in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    extended = pytest.importorskip("kaggle.api.kaggle_api_extended", reason="the kaggle CLI package is not installed "
                                   "(pip install kaggle six; it is in the dev extra)")
    api = extended.KaggleApi()
    api.authenticate()

    def offline(*args, **kwargs):
        raise _ReachedTheNetwork

    monkeypatch.setattr(api, "build_kaggle_client", offline)
    return api


@pytest.mark.parametrize("experiment", ["a", "an-experiment-name-far-longer-than-kaggle-allows-for-a-slug"])
def test_built_metadata_passes_the_kaggle_clis_own_checks(demo_dir, trained, tmp_path, capsys, monkeypatch, experiment):
    """Derived slugs and titles fit the CLI's rules (dataset 6-50 characters, kernel 5+) for a
    one-letter and a 60-letter experiment name; the CLI itself checks the built files."""
    api = _kaggle_api(tmp_path, monkeypatch)
    shutil.copytree(trained / "outputs" / "tiny", tmp_path / "outputs" / experiment)
    shutil.copytree(trained / "outputs" / "folds", tmp_path / "outputs" / "folds")
    argv = _args("build", demo_dir, tmp_path, "--no-tta", "--no-wheels")
    argv[argv.index("tiny")] = experiment
    code, _, err = _cli(argv, capsys)
    assert code == 0, err
    meta = json.loads((tmp_path / "build" / "dataset" / "dataset-metadata.json").read_text())
    assert 6 <= len(meta["id"].split("/")[1]) <= 50 and 6 <= len(meta["title"]) <= 50
    for push in (lambda: api.dataset_create_new(str(tmp_path / "build" / "dataset"), dir_mode="zip"),
                 lambda: api.kernels_push(str(tmp_path / "build" / "notebook"))):
        with pytest.raises(_ReachedTheNetwork):  # a ValueError here is the CLI refusing the metadata
            push()


def test_a_slug_the_kaggle_cli_would_refuse_is_refused_before_building(demo_dir, trained, tmp_path, capsys):
    shutil.copytree(trained / "outputs", tmp_path / "outputs")
    for flag, value in (("--dataset", "me/abc"), ("--dataset", "me/" + "x" * 51), ("--kernel", "me/abcd"),
                        ("--dataset", "me/Not_A_Slug")):
        code, _, err = _cli(_args("build", demo_dir, tmp_path, "--no-tta", "--no-wheels", flag, value), capsys)
        assert code == 2 and flag in err and "characters" in err, err
    assert not (tmp_path / "build").exists()


def test_a_huge_scale_is_refused_first_and_a_terminated_rehearsal_leaves_no_temporary_folder(demo_dir, built,
                                                                                              tmp_path, capsys):
    code, _, err = _cli(_args("rehearse", demo_dir, built, "--scale", "100000"), capsys)
    assert code == 2 and "--scale 100000 would rehearse" in err and "--hidden-size" in err, err
    import signal
    import subprocess
    import time

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "src.kaggle_kernel", *_args("rehearse", demo_dir, built)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(tmp.glob("kaggle-*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert list(tmp.glob("kaggle-*")), "the rehearsal never made its temporary folder"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "run the same command again" in err and "--resume" not in err, err
    assert list(tmp.glob("kaggle-*")) == []
