"""Ensemble stage: soft voting against an independent computation, TTA views, every submission
format, the clear errors (that write nothing), OOF-fitted weights and the CLI.

Everything runs the real code: two tiny members (a and b, different seeds) are trained for real
on 2 folds of the session's digits demo; nothing is written under the repo's outputs/, inputs/ or
submissions/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from conftest import train_two_members
from PIL import Image

import src.ensemble as ens
from src.core.cli import run_cli
from src.core.runtime import Runtime, predict
from src.core.tasks import make_task
from src.core.utils import UserError
from src.core.views import apply_view, parse_views
from src.data.loaders import ImageDataset, make_loader
from src.data.tables import load_test_table, prob_columns
from src.data.transforms import build_transform, resolve_norm
from src.ensembling import pipeline
from src.ensembling.submission import build_submission, check_submission, resolve_top_k
from src.evaluation.blending import combine, fit_weights
from src.evaluation.metrics import compute_metric
from src.evaluation.scoring import score_submission
from src.runs.layout import file_sha1
from src.training.trainer import train_fold

REPO = Path(__file__).resolve().parents[2]
CLASSES = [str(i) for i in range(10)]
# A few real optimizer steps (no warmup) so the members are better than chance: the OOF-weight
# test needs informative members, and label predictions then are not all one class.
TRAIN = (
    "data.n_folds=2",
    "model.name=test_resnet",
    "train.epochs=1",
    "train.limit_batches=20",
    "sched.warmup_epochs=0",
    "optim.lr=0.01",
    "loader.batch_size=32",
    "loader.num_workers=0",
    "data.check_images=false",
    "runtime.device=cpu",
)
# The config the ensemble runs under (its data section names the competition).
ENSEMBLE = ("experiment.name=a", "data.n_folds=2", "runtime.device=cpu")
# pipeline.run's tta=None means ensemble.tta; this is the identity view only.
NO_TTA = ["identity"]


# ---------------------------------------------------------------- fixtures and helpers


def _link_copy(src: Path, dst: Path) -> Path:
    """A copy of a competition folder whose images are hard links (cheap)."""
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


@pytest.fixture(scope="module")
def world(tmp_path_factory, demo_dir, demo_cfg) -> SimpleNamespace:
    """The demo competition and two trained members a and b (2 folds each), outputs under one tmp root."""
    root = tmp_path_factory.mktemp("ens")
    out = root / "out"
    train_two_members(out, demo_dir, demo_cfg, TRAIN)
    return SimpleNamespace(root=root, demo=demo_dir, out=out)


def _probs_path(out: Path) -> Path:
    return out.with_name(out.stem + "_probs.csv")


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"id": str})


def _independent_probs(ckpt_path: Path, data_dir: Path, aug) -> np.ndarray:
    """Softmax of one fold's best.pt over the test images in sample_submission order, computed
    without src.ensemble / src.models.model / src.runs.checkpoint: torch.load + timm + PIL + the eval transform."""
    ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert ck["classes"] == CLASSES
    model = timm.create_model("test_resnet", pretrained=False, num_classes=len(CLASSES))
    model.load_state_dict(ck["model"])
    model.eval()
    mean, std = resolve_norm(aug, model.pretrained_cfg)
    tf = build_transform(aug, False, mean, std)
    ids = pd.read_csv(data_dir / "sample_submission.csv", dtype=str)["id"]
    xs = [tf(image=np.asarray(Image.open(data_dir / "test" / f"{i}.png").convert("RGB")))["image"] for i in ids]
    with torch.no_grad():
        logits = torch.cat([model(torch.stack(xs[s:s + 128])) for s in range(0, len(xs), 128)])
    return torch.softmax(logits.double(), 1).numpy()


@pytest.fixture(scope="module")
def indep(world, demo_cfg) -> dict[tuple[str, int], np.ndarray]:
    aug = demo_cfg(world.demo, world.out, "experiment.name=a", *TRAIN).aug
    return {(m, k): _independent_probs(world.out / m / f"fold{k}" / "best.pt", world.demo, aug)
            for m in ("a", "b") for k in (0, 1)}


@pytest.fixture(scope="module")
def soft_run(world, demo_cfg) -> Path:
    """[a, b], no TTA ([]), equal weights, soft voting, default (auto -> label) format."""
    cfg = demo_cfg(world.demo, world.out, *ENSEMBLE)
    return pipeline.run(cfg, ["a", "b"], [], "equal", "soft", world.root / "sub" / "soft.csv", None)


# ---------------------------------------------------------------- 1. soft voting


def test_soft_voting_equals_independent_mean_of_member_probabilities(world, indep, soft_run):
    sample = pd.read_csv(world.demo / "sample_submission.csv", dtype=str)
    probs = _read(_probs_path(soft_run))
    assert list(probs.columns) == ["id"] + CLASSES
    assert list(probs["id"]) == list(sample["id"])
    member = {m: (indep[(m, 0)] + indep[(m, 1)]) / 2 for m in ("a", "b")}
    expected = (member["a"] + member["b"]) / 2
    got = probs[CLASSES].to_numpy()
    np.testing.assert_allclose(got, expected, atol=2e-5)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-6)
    # The check is not vacuous: the members differ, so neither alone matches the blend.
    assert np.abs(member["a"] - member["b"]).max() > 1e-3
    assert np.abs(got - member["a"]).max() > 1e-4


def _np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_combine_soft_is_weighted_mean_of_softmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 4)) * 3
    np.testing.assert_allclose(combine(logits, "soft"), _np_softmax(logits).mean(0), atol=1e-12)
    w = np.array([1.0, 2.0, 3.0])
    expected = (w[:, None, None] * _np_softmax(logits)).sum(0) / w.sum()
    np.testing.assert_allclose(combine(logits, "soft", w), expected, atol=1e-12)


def test_combine_hard_geometric_logits_on_hand_made_examples():
    # hard: argmaxes per predictor: sample 0 -> 0, 0, 2; sample 1 -> 1, 2, 2
    logits = np.array([
        [[5.0, 1.0, 0.0], [0.0, 3.0, 1.0]],
        [[2.0, 1.0, 0.0], [0.0, 1.0, 4.0]],
        [[0.0, 1.0, 9.0], [1.0, 0.0, 2.0]],
    ])
    np.testing.assert_allclose(combine(logits, "hard"), [[2 / 3, 0, 1 / 3], [0, 1 / 3, 2 / 3]], atol=1e-12)
    np.testing.assert_allclose(combine(logits, "hard", [2, 1, 1]), [[3 / 4, 0, 1 / 4], [0, 1 / 2, 1 / 2]],
                               atol=1e-12)
    # geometric: probabilities [.5, .5] and [.9, .1] -> sqrt(.45), sqrt(.05) renormalized = [.75, .25]
    lp = np.log(np.array([[[0.5, 0.5]], [[0.9, 0.1]]]))
    np.testing.assert_allclose(combine(lp, "geometric"), [[0.75, 0.25]], atol=1e-12)
    np.testing.assert_allclose(combine(lp, "soft"), [[0.7, 0.3]], atol=1e-12)
    # logits: softmax of the mean logit: mean of [0, 0] and [2, 0] is [1, 0]
    lg = np.array([[[0.0, 0.0]], [[2.0, 0.0]]])
    e = np.e
    np.testing.assert_allclose(combine(lg, "logits"), [[e / (e + 1), 1 / (e + 1)]], atol=1e-12)
    # weights 3:1 -> mean logit [0.5, 0]
    np.testing.assert_allclose(combine(lg, "logits", [3, 1]), _np_softmax(np.array([[0.5, 0.0]])), atol=1e-12)
    with pytest.raises(ValueError):
        combine(lg, "median")


# ---------------------------------------------------------------- 2-3. TTA


def test_identity_only_tta_equals_no_tta(world, demo_cfg, soft_run):
    out = world.root / "sub" / "identity.csv"
    pipeline.run(demo_cfg(world.demo, world.out, *ENSEMBLE), ["a", "b"], ["identity"], "equal", "soft", out, None)
    assert _probs_path(out).read_bytes() == _probs_path(soft_run).read_bytes()
    assert out.read_bytes() == soft_run.read_bytes()


def test_parse_views():
    d4 = parse_views(["d4"])
    assert len(d4) == 8 and len(set(d4)) == 8 and d4[0] == "identity"
    assert parse_views(["hflip", "d4", "hflip"])[0] == "hflip"
    assert len(parse_views(["hflip", "d4", "hflip"])) == 8
    assert parse_views(["identity", "scale1.15"]) == ["identity", "scale1.15"]
    with pytest.raises(UserError, match="unknown TTA view 'blur'"):
        parse_views(["identity", "blur"])


def test_zoom_and_scale_views():
    x = torch.zeros(1, 1, 8, 8)
    x[..., 3:5, 3:5] = 1.0  # a centred 2x2 square
    np.testing.assert_allclose(apply_view("zoom1.0", x), x, atol=1e-6)
    z = apply_view("zoom2", x)
    assert z.shape == x.shape
    assert z[..., 2:6, 2:6].mean() > 0.5 and z[..., :1, :].abs().max() < 1e-6  # magnified, same size
    assert z.sum() > 2 * x.sum()
    s = apply_view("zoom0.5", torch.full((1, 3, 8, 8), 0.25))
    assert s.shape == (1, 3, 8, 8)
    np.testing.assert_allclose(s, 0.25, atol=1e-6)  # shrunk and edge-padded: a flat image stays flat
    assert apply_view("scale1.5", x).shape == (1, 1, 12, 12)
    assert parse_views(["zoom0.95", "scale1.15"]) == ["zoom0.95", "scale1.15"]


@pytest.fixture(scope="module")
def digit_loader(world, demo_cfg):
    cfg = demo_cfg(world.demo, world.out, "experiment.name=a", *TRAIN)
    test, _ = load_test_table(cfg.data)
    mean, std = resolve_norm(cfg.aug)
    ds = ImageDataset(test["path"][:48], None, build_transform(cfg.aug, False, mean, std))
    return make_loader(ds, cfg.loader, batch_size=16)


def test_flip_tta_on_flip_invariant_model_equals_no_tta(digit_loader):
    torch.manual_seed(0)
    invariant = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 10))
    views = parse_views(["identity", "hflip", "vflip", "rot90", "d4"])
    lg = predict([invariant], digit_loader, Runtime(torch.device("cpu")), views)
    assert lg.shape == (1, 8, 48, 10)
    x = torch.cat([b for b, _ in digit_loader])
    with torch.no_grad():
        direct = invariant(x).numpy()
    for vi, v in enumerate(views):
        np.testing.assert_allclose(lg[0, vi], direct, atol=1e-5, err_msg=v)
    tta = combine(lg[0], "soft")
    np.testing.assert_allclose(tta, _np_softmax(direct), atol=1e-6)


def test_views_reach_a_non_invariant_model(digit_loader):
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(3, 4, (1, 3), bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, 1, 3).expand(4, 3, 1, 3)
                          * torch.arange(1.0, 5.0).view(4, 1, 1, 1))
    skewed = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d((2, 2)), torch.nn.Flatten(),
                                 torch.nn.Linear(16, 10))
    invariant = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 10))
    views = ["identity", "hflip", "rot90", "antitranspose"]
    lg = predict([skewed, invariant], digit_loader, Runtime(torch.device("cpu")), views)
    assert lg.shape == (2, 4, 48, 10)
    x = torch.cat([b for b, _ in digit_loader])
    with torch.no_grad():
        np.testing.assert_allclose(lg[0, 0], skewed(x).numpy(), atol=1e-5)
        np.testing.assert_allclose(lg[0, 1], skewed(x.flip(3)).numpy(), atol=1e-5)
        np.testing.assert_allclose(lg[0, 2], skewed(torch.rot90(x, 1, (2, 3))).numpy(), atol=1e-5)
        # anti-transpose: out[i, j] = x[n-1-j, n-1-i]
        n = x.shape[2]
        idx = torch.arange(n - 1, -1, -1)
        anti = x[:, :, idx][:, :, :, idx].transpose(2, 3)
        np.testing.assert_allclose(lg[0, 3], skewed(anti).numpy(), atol=1e-5)
    assert np.abs(lg[0, 1] - lg[0, 0]).max() > 1e-3  # hflip changes this model's logits
    np.testing.assert_allclose(lg[1, 1], lg[1, 0], atol=1e-5)  # ... and not the invariant one's
    up = apply_view("scale1.15", x[:2])
    assert tuple(up.shape) == (2, 3, round(32 * 1.15), round(32 * 1.15))


# ---------------------------------------------------------------- 4. formats


def test_label_submission_matches_sample_and_scores(world, demo_cfg, soft_run):
    sample = pd.read_csv(world.demo / "sample_submission.csv", dtype=str)
    sub = pd.read_csv(soft_run, dtype=str)
    assert list(sub.columns) == list(sample.columns) == ["id", "label"]
    assert list(sub["id"]) == list(sample["id"])
    probs = _read(_probs_path(soft_run))
    assert list(sub["label"]) == [CLASSES[i] for i in probs[CLASSES].to_numpy().argmax(1)]
    cfg = demo_cfg(world.demo, world.out, *ENSEMBLE)
    scores = score_submission(soft_run, world.demo / "solution.csv", cfg)
    assert isinstance(scores["accuracy"], float) and 0.0 <= scores["accuracy"] <= 1.0
    solution = pd.read_csv(world.demo / "solution.csv", dtype=str).set_index("id")
    assert scores["accuracy"] == pytest.approx((sub.set_index("id")["label"] == solution["label"]).mean())


def test_index_submission(world, demo_cfg, soft_run):
    out = world.root / "sub" / "index.csv"
    pipeline.run(demo_cfg(world.demo, world.out, *ENSEMBLE), ["a", "b"], NO_TTA, "equal", "soft", out, "index")
    sample = pd.read_csv(world.demo / "sample_submission.csv", dtype=str)
    sub = pd.read_csv(out, dtype={"id": str})
    assert list(sub.columns) == list(sample.columns)
    assert list(sub["id"]) == list(sample["id"])
    assert sub["label"].dtype.kind == "i"
    probs = _read(_probs_path(soft_run))[CLASSES].to_numpy()
    assert list(sub["label"]) == list(probs.argmax(1))


def test_label_and_index_differ_for_named_classes():
    sample = pd.DataFrame({"image": ["x", "y", "z"], "species": ["?", "?", "?"]})
    probs = np.array([[0.1, 0.7, 0.2], [0.8, 0.1, 0.1], [0.2, 0.2, 0.6]])
    classes = ["cat", "dog", "eel"]
    label = build_submission(sample, "image", probs, classes, "label")
    index = build_submission(sample, "image", probs, classes, "index")
    assert list(label["species"]) == ["dog", "cat", "eel"]
    assert list(index["species"]) == [1, 0, 2]
    check_submission(label, sample, "image", classes, "label")
    with pytest.raises(UserError, match="not in the class set"):
        check_submission(label.assign(species=["dog", "cow", "eel"]), sample, "image", classes, "label")
    with pytest.raises(UserError, match="ids are not"):
        check_submission(label.iloc[[1, 0, 2]].reset_index(drop=True), sample, "image", classes, "label")
    with pytest.raises(UserError, match="shape or columns"):
        check_submission(label[["species", "image"]], sample, "image", classes, "label")
    with pytest.raises(UserError, match="binary needs 2 classes"):
        build_submission(sample, "image", probs, classes, "binary")


def test_proba_submission_in_sample_column_order(world, demo_cfg, soft_run):
    comp = _link_copy(world.demo, world.root / "digits_proba")
    sample = pd.read_csv(world.demo / "sample_submission.csv", dtype=str)
    shuffled = list(np.random.default_rng(3).permutation(CLASSES))
    assert shuffled != CLASSES
    proba_sample = pd.DataFrame({"id": sample["id"], **{c: 0.1 for c in shuffled}})
    (comp / "sample_submission.csv").unlink()  # a hard link to the demo's file: do not write through it
    proba_sample.to_csv(comp / "sample_submission.csv", index=False)
    out = world.root / "sub" / "proba.csv"
    pipeline.run(demo_cfg(comp, world.out, *ENSEMBLE), ["a", "b"], NO_TTA, "equal", "soft", out, None)  # auto -> proba
    sub = pd.read_csv(out, dtype={"id": str})
    assert list(sub.columns) == ["id"] + shuffled
    assert list(sub["id"]) == list(sample["id"])
    ref = _read(_probs_path(soft_run))
    for c in CLASSES:
        np.testing.assert_allclose(sub[c].to_numpy(), ref[c].to_numpy(), atol=1e-9, err_msg=c)
    np.testing.assert_allclose(sub[shuffled].sum(axis=1), 1.0, atol=1e-6)


def test_binary_submission(world, demo_cfg):
    comp = world.root / "digits_bin"
    comp.mkdir()
    os.symlink(world.demo / "train", comp / "train")
    os.symlink(world.demo / "test", comp / "test")
    train = pd.read_csv(world.demo / "train.csv", dtype=str)
    solution = pd.read_csv(world.demo / "solution.csv", dtype=str)
    train[train["label"].isin(["0", "1"])].to_csv(comp / "train.csv", index=False)
    sol = solution[solution["label"].isin(["0", "1"])]
    sol.to_csv(comp / "solution.csv", index=False)
    pd.DataFrame({"id": sol["id"], "is_one": 0.5}).to_csv(comp / "sample_submission.csv", index=False)
    cfg = demo_cfg(comp, world.out, "experiment.name=bin", *TRAIN)
    for k in range(2):
        train_fold(cfg, k)
    out = world.root / "sub" / "bin.csv"
    pipeline.run(demo_cfg(comp, world.out, *ENSEMBLE), ["bin"], NO_TTA, None, None, out, "binary")
    sub = pd.read_csv(out, dtype={"id": str})
    assert list(sub.columns) == ["id", "is_one"]
    assert list(sub["id"]) == list(sol["id"])
    probs = _read(_probs_path(out))
    assert list(probs.columns) == ["id", "0", "1"]
    np.testing.assert_allclose(sub["is_one"].to_numpy(), probs["1"].to_numpy(), atol=1e-12)
    assert ((sub["is_one"] > 0) & (sub["is_one"] < 1)).all()


# ---------------------------------------------------------------- 5. clear errors, nothing written


def _copy_member(w: SimpleNamespace, src: str, dst: str, edit=None) -> None:
    """A copy of member src; `edit` changes the classes or config stored in each fold's best.pt and
    done.json (both hold them, as training writes them), and done.json records the new best.pt's
    hash, so the fold folder is consistent, as if trained so."""
    shutil.copytree(w.out / src, w.out / dst)
    if edit is None:
        return
    for ck_path in (w.out / dst).glob("fold*/best.pt"):
        ck = torch.load(ck_path, map_location="cpu", weights_only=True)
        edit(ck)
        torch.save(ck, ck_path)
        done_path = ck_path.with_name("done.json")
        done = json.loads(done_path.read_text())
        edit(done)
        done["best_sha1"] = file_sha1(ck_path)
        done_path.write_text(json.dumps(done))


@pytest.fixture(scope="module")
def bad_members(world) -> SimpleNamespace:
    """Broken copies of member a: other classes, a missing (unfinished) fold, another architecture.
    (A member trained for other test ids is no error any more: members are relocated to the
    competition the ensemble runs on.)"""

    def relabel(ck):
        ck["classes"] = CLASSES[:-1] + ["nine"]

    _copy_member(world, "a", "a_classes", relabel)

    _copy_member(world, "a", "a_missing")
    (world.out / "a_missing" / "fold1" / "done.json").unlink()  # a fold without done.json is not finished

    def other_arch(ck):
        ck["config"]["model"]["name"] = "resnet10t"

    _copy_member(world, "a", "a_arch", other_arch)
    return SimpleNamespace()


BAD = {
    "different_classes": (["a", "a_classes"], NO_TTA, "equal", r"a and a_classes have different class lists"),
    "missing_fold": (["a_missing"], NO_TTA, "equal",
                     r"a_missing has no finished run for folds \[1\].*missing_folds=warn"),
    "model_not_fitting_config": (["a_arch"], NO_TTA, "equal",
                                 r"fold0/best\.pt does not fit its stored config \(resnet10t"),
    "unknown_view": (["a"], ["hflip", "blur"], "equal", r"unknown TTA view 'blur'"),
    "wrong_weight_count": (["a", "b"], NO_TTA, [1.0], r"1 weights for 2 members"),
    "unknown_experiment": (["nope"], NO_TTA, "equal", r"experiment folder .*nope does not exist"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gives_clear_error_and_writes_nothing(world, demo_cfg, bad_members, case):
    experiments, tta, weights, message = BAD[case]
    sub_dir = world.root / "sub_err" / case
    out = sub_dir / "x.csv"
    with pytest.raises(UserError, match=message):
        pipeline.run(demo_cfg(world.demo, world.out, *ENSEMBLE), experiments, tta, weights, "soft", out, None)
    assert not out.exists()
    assert not _probs_path(out).exists()
    assert not sub_dir.exists() or not any(sub_dir.iterdir())


def test_missing_fold_with_warn_blends_the_folds_present(world, demo_cfg, bad_members, indep, capsys):
    out = world.root / "sub" / "missing_warn.csv"
    cfg = demo_cfg(world.demo, world.out, *ENSEMBLE, "ensemble.missing_folds=warn")
    pipeline.run(cfg, ["a_missing"], NO_TTA, "equal", "soft", out, None)
    printed = capsys.readouterr().out
    assert ("warning: experiment a_missing has no finished run for folds [1] (no done.json: never trained, "
            "interrupted or running); blending folds [0]") in printed
    probs = _read(_probs_path(out))[CLASSES].to_numpy()
    np.testing.assert_allclose(probs, indep[("a", 0)], atol=2e-5)
    assert np.abs(probs - (indep[("a", 0)] + indep[("a", 1)]) / 2).max() > 1e-4
    assert pd.read_csv(out, dtype=str).shape == (len(probs), 2)


# ---------------------------------------------------------------- 6. OOF-fitted weights


@pytest.fixture(scope="module")
def oof(world) -> SimpleNamespace:
    tables = {}
    for m in ("a", "b"):
        parts = [pd.read_csv(world.out / m / f"fold{k}" / "oof.csv", dtype={"id": str, "label": str}) for k in (0, 1)]
        tables[m] = pd.concat(parts).set_index("id").sort_index()
    assert (tables["a"].index == tables["b"].index).all()
    y = tables["a"]["target"].to_numpy()
    assert (y == tables["b"]["target"].to_numpy()).all()
    rng = np.random.default_rng(0)
    bad = rng.dirichlet(np.full(10, 0.1), size=len(y))  # confident and random
    return SimpleNamespace(y=y, probs=[tables["a"][prob_columns(CLASSES)].to_numpy(),
                                       tables["b"][prob_columns(CLASSES)].to_numpy(), bad])


@pytest.mark.parametrize("metric", ["accuracy", "log_loss"])
def test_auto_weights_never_worse_than_equal_on_oof(oof, metric):
    w = fit_weights(oof.probs, oof.y, metric, "soft")
    assert w.shape == (3,) and (w >= 0).all() and w.sum() == pytest.approx(1.0)
    stack = np.stack([np.log(np.clip(p, 1e-12, 1)) for p in oof.probs])

    def score(weights):
        return compute_metric(metric, oof.y, combine(stack, "soft", weights))

    fitted, equal = score(w), score(None)
    singles = [compute_metric(metric, oof.y, p) for p in oof.probs]
    if metric == "log_loss":
        assert fitted <= equal + 1e-12 and fitted <= min(singles) + 1e-12
    else:
        assert fitted >= equal and fitted >= max(singles)
    # The members are informative, the random one is not: it must get (nearly) no say.
    assert singles[0] > singles[2] if metric == "accuracy" else singles[0] < singles[2]
    assert w[2] < 0.15, w


# ---------------------------------------------------------------- 7. the CLI


def test_cli_with_tta_prints_oof_table_and_writes(world, overrides_for):
    out = world.root / "sub" / "cli.csv"
    cmd = [sys.executable, "-m", "src.ensemble", "--config", "configs/demo.yaml", "--experiments", "a",
           "--out", str(out),
           # the overrides after the views are moved out of the --tta list
           "--tta", "identity", "hflip", *overrides_for(world.demo, world.out, "data.n_folds=2", "runtime.device=cpu")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert "OOF CV (accuracy):" in lines, proc.stdout
    rows = [ln.split() for ln in lines[lines.index("OOF CV (accuracy):") + 1:]]
    assert rows[0] == ["member", "tta", "accuracy"]
    for tta in ("none", "identity+hflip"):
        row = [r for r in rows if r[:2] == ["a", tta]]
        assert row and 0.0 <= float(row[0][2]) <= 1.0, (tta, proc.stdout)
    assert f"wrote {out} (360 rows, format label, 1 member x 2 folds x 2 views)" in proc.stdout
    assert out.is_file() and _probs_path(out).is_file()
    sample = pd.read_csv(world.demo / "sample_submission.csv", dtype=str)
    sub = pd.read_csv(out, dtype=str)
    assert list(sub.columns) == list(sample.columns) and list(sub["id"]) == list(sample["id"])


def test_cli_bad_view_exits_2_with_one_line(world, overrides_for, capsys):
    out = world.root / "sub" / "cli_bad.csv"
    argv = ["--config", "configs/demo.yaml", "--experiments", "a", "--out", str(out), "--tta", "hflip", "blur",
            *overrides_for(world.demo, world.out)]
    with pytest.raises(SystemExit) as exc:
        run_cli(ens.main, argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown TTA view 'blur'") and err.count("\n") == 1, err
    assert not out.exists() and not _probs_path(out).exists()


def test_cli_overrides_after_experiments_are_not_member_names(world, overrides_for):
    """`--experiments a b section.key=value ...` (like `--tta hflip key=value`, which main() handles)."""
    out = world.root / "sub" / "cli_exp.csv"
    argv = ["--config", "configs/demo.yaml", "--out", str(out), "--experiments", "a", "b",
            *overrides_for(world.demo, world.out, "runtime.device=cpu")]
    # key=value items after --experiments are overrides, not member names.
    try:
        ens.main(argv)
    except UserError as e:
        pytest.fail(f"overrides after --experiments were not applied: {e}")
    assert out.is_file()
    sub = pd.read_csv(out, dtype=str)
    assert list(sub["id"]) == list(pd.read_csv(world.demo / "sample_submission.csv", dtype=str)["id"])


def test_auto_format_picks_binary_for_probability_metrics():
    sample = pd.DataFrame({"id": ["a", "b"], "target": [0, 0]})
    assert make_task("multiclass", ["cat", "dog"]).resolve_format("auto", sample, "id", "roc_auc") == "binary"
    assert make_task("multiclass", ["cat", "dog"]).resolve_format("auto", sample, "id", "accuracy") == "label"
    fractional = pd.DataFrame({"id": ["a", "b"], "target": [0.5, 0.5]})
    assert make_task("multiclass", ["cat", "dog"]).resolve_format("auto", fractional, "id", "accuracy") == "binary"
    assert make_task("multiclass", ["a", "b", "c"]).resolve_format("auto", sample, "id", "log_loss") == "label"


def test_members_are_read_from_the_output_dir_given_not_the_stored_one(world, demo_cfg, tmp_path, capsys):
    # Outputs copied elsewhere (a Kaggle dataset): the copy's OOF files must be the ones read.
    moved = tmp_path / "moved"
    shutil.copytree(world.out / "a", moved / "a")
    shutil.copytree(world.out / "folds", moved / "folds")
    for k in (0, 1):
        path = moved / "a" / f"fold{k}" / "oof.csv"
        oof = pd.read_csv(path, dtype={"id": str, "label": str})
        cols = prob_columns(CLASSES)
        oof[cols] = np.eye(len(CLASSES))[(oof["target"].to_numpy() + 1) % len(CLASSES)]  # always wrong
        oof.to_csv(path, index=False)
    cfg = demo_cfg(world.demo, moved, *ENSEMBLE)
    pipeline.run(cfg, ["a"], NO_TTA, "equal", None, tmp_path / "sub" / "moved.csv")
    table = capsys.readouterr().out
    assert "0.0000" in table, table
    assert (tmp_path / "sub" / "moved.csv").is_file()


# ---------------------------------------------------------------- top-k submissions (MAP@k)


def test_topk_rows_are_the_k_most_probable_labels_best_first():
    probs = np.array([[0.1, 0.5, 0.15, 0.25], [0.4, 0.3, 0.2, 0.1], [0.25, 0.25, 0.3, 0.2]])
    classes = ["w_a", "w_b", "w_c", "new_whale"]
    sample = pd.DataFrame({"Image": ["x", "y", "z"], "Id": ["new_whale w_a w_b"] * 3})
    assert make_task("multiclass", classes).resolve_format("auto", sample, "Image", "accuracy") == "topk"
    assert make_task("multiclass", classes).resolve_format("auto", sample.assign(Id="w_a"), "Image", "map@3") == "topk"
    assert make_task("multiclass", classes).resolve_format("auto", sample.assign(Id="w_a"), "Image", "accuracy") == "label"
    assert resolve_top_k(sample, "Image", "accuracy", None, 4) == 3  # the placeholders' word count
    assert resolve_top_k(sample, "Image", "map@2", None, 4) == 2 and resolve_top_k(sample, "Image", "map@2", 4, 4) == 4
    sub = build_submission(sample, "Image", probs, classes, "topk", 3)
    assert list(sub["Id"]) == ["w_b new_whale w_c", "w_a w_b w_c", "w_c w_a w_b"]  # a tie keeps the class order
    check_submission(sub, sample, "Image", classes, "topk", 3)
    with pytest.raises(UserError, match="3 distinct"):
        check_submission(sub.assign(Id="w_a w_a w_b"), sample, "Image", classes, "topk", 3)
    with pytest.raises(UserError, match="ensemble.top_k to 4 or fewer"):
        resolve_top_k(sample, "Image", "map@5", None, 4)


def test_a_map_at_5_competition_gets_ranked_labels_scored_as_written(world, demo_cfg, capsys):
    """A Happywhale-shaped copy of the demo: placeholders of five labels, metric map@5. The file holds
    each image's five most probable labels of the written probabilities, best first, and src.score
    gives it the MAP@5 of those probabilities."""
    comp = _link_copy(world.demo, world.root / "digits_top5")
    sample = pd.read_csv(world.demo / "sample_submission.csv", dtype=str)
    (comp / "sample_submission.csv").unlink()
    sample.assign(label="0 1 2 3 4").to_csv(comp / "sample_submission.csv", index=False)
    cfg = demo_cfg(comp, world.out, *ENSEMBLE, "metric.name=map@5")
    out = pipeline.run(cfg, ["a", "b"], NO_TTA, "equal", "soft", world.root / "sub" / "top5.csv", None)
    assert "format top5" in capsys.readouterr().out
    sub, probs = pd.read_csv(out, dtype=str), _read(_probs_path(out))
    expected = [" ".join(np.asarray(CLASSES)[np.argsort(-row, kind="stable")[:5]]) for row in probs[CLASSES].to_numpy()]
    assert list(sub["label"]) == expected
    solution = pd.read_csv(world.demo / "solution.csv", dtype=str).set_index("id").loc[sub["id"]]
    y = solution["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    scored = score_submission(out, world.demo / "solution.csv", cfg)
    assert scored["map@5"] == pytest.approx(compute_metric("map@5", y, probs[CLASSES].to_numpy()))
    assert scored["accuracy"] == pytest.approx(compute_metric("accuracy", y, probs[CLASSES].to_numpy()))


def test_the_printed_blend_score_is_the_score_of_what_the_voting_writes(world, demo_cfg, tmp_path, capsys):
    """One member under rank voting: its own row scores its probabilities, the blend row the rank
    averages the submission is made of; rank voting under log loss is refused before anything is written."""
    cfg = demo_cfg(world.demo, world.out, *ENSEMBLE)
    pipeline.run(cfg, ["a"], NO_TTA, "equal", "rank", tmp_path / "rank.csv", None)
    printed = capsys.readouterr().out
    oof = pd.concat([pd.read_csv(world.out / "a" / f"fold{k}" / "oof.csv", dtype={"id": str}) for k in (0, 1)])
    probs, y = oof[prob_columns(CLASSES)].to_numpy(), oof["target"].to_numpy()
    ranks = (np.argsort(np.argsort(probs, axis=0, kind="stable"), axis=0) + 0.0)  # per-class ranks (no ties here)
    blend_acc = float(np.mean(ranks.argmax(1) == y))
    row = next(line for line in printed.splitlines() if line.strip().startswith("blend"))
    assert float(row.split()[-1]) == pytest.approx(blend_acc, abs=5e-5)
    assert float(row.split()[-1]) != pytest.approx(float(np.mean(probs.argmax(1) == y)), abs=1e-6)  # not the member's
    bad = demo_cfg(world.demo, world.out, *ENSEMBLE, "metric.name=log_loss")
    with pytest.raises(UserError, match="voting=rank writes per-class rank averages"):
        pipeline.run(bad, ["a"], NO_TTA, "equal", "rank", tmp_path / "ll.csv", None)
    assert not (tmp_path / "ll.csv").exists()


def test_a_corrupt_ledger_leaves_the_submission_written_and_says_what_to_do(world, demo_cfg, tmp_path):
    cfg = demo_cfg(world.demo, world.out, *ENSEMBLE)
    ledger = tmp_path / "ledger.csv"
    ledger.write_bytes(b'garbage\x00,"never closed\n1,2,3\n')
    before = ledger.read_bytes()
    with pytest.raises(UserError, match=r"sub.csv was written, but its ledger row was not: .*ledger.csv is not a "
                                        r"ledger .*move it aside"):
        pipeline.run(cfg, ["a"], NO_TTA, "equal", "soft", tmp_path / "sub.csv", None)
    assert (tmp_path / "sub.csv").is_file() and (tmp_path / "sub_probs.csv").is_file()
    assert ledger.read_bytes() == before
