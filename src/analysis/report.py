"""The experiment report and the recipe comparison (`python -m src.report`).

The report reads an experiment's run folders (through src/runs/ and src/runs/members.py): each
fold's history.csv, oof.csv, done.json and best.pt. Everything about images is computed by the
fold model that never trained on the image (the one whose validation fold holds it), so Grad-CAM
shows what the OOF prediction was based on; each map's forward pass must reproduce the
probability in oof.csv, which proves the model is the right one. A regression report shows the
predicted values against the labels and the images with the largest |error| (worst_images.csv, no
column to relabel: a reviewed value is no class), and Grad-CAM explains the head's one output.

    outputs/<exp>/report.html         self-contained (PNGs embedded)
    outputs/<exp>/suspect_labels.csv  every OOF image by loss, with an empty reviewed_label column
                                      (regression: worst_images.csv, every OOF image by |error|)
    outputs/<exp>/report/*.png        the figures
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
import yaml

from src.analysis.figures import (
    cam_grid,
    confusion_pair,
    feature_map_grid,
    filter_grid,
    image_grid,
    learning_curves,
)
from src.analysis.gradcam import first_conv_filters, grad_cam, pick_cam_layer, stage_maps
from src.analysis.html_page import Page
from src.analysis.oof_review import (
    confusion,
    cv_table,
    label_table,
    read_member_oof,
    residual_table,
    row_normalised,
    suspects,
)
from src.core.config import CONFIG_DIR, Config
from src.core.progress import progress
from src.core.runtime import Norm, Runtime
from src.core.utils import UserError, atomic_save
from src.data.arrays import is_photo
from src.data.folds import load_or_create_folds
from src.data.images import read_image
from src.data.relabel import REVIEW_COL
from src.data.transforms import build_transform, resolve_norm
from src.runs.checkpoint import config_diff
from src.runs.layout import fold_paths, oof_probs
from src.runs.members import Member, open_member
from src.training.plots import plot_label_scores, plot_residuals

# How far a Grad-CAM pass's probability may be from oof.csv's before the report says the fold
# model does not reproduce its OOF predictions: float32 here; where validation ran under CUDA
# autocast (bf16/fp16) the OOF numbers carry that precision.
OOF_TOLERANCE = {"fp32": 1e-3, "amp": 3e-2}


@dataclass
class Cam:
    """One Grad-CAM map: the image, the fold whose model explained it, and what that model said."""

    id: str
    fold: int
    label: str
    predicted: str
    prob: float  # the predicted class's probability in this pass
    prob_oof: float  # ... and in oof.csv
    image: np.ndarray = field(repr=False)  # (H, W, 3) uint8: the image as the model saw it
    cam: np.ndarray = field(repr=False)  # (H, W) in [0, 1]


@dataclass
class Report:
    html: Path
    suspects_csv: Path
    cv: pd.DataFrame
    counts: np.ndarray | None  # None for a multi-label task: no confusion between labels
    per_class: pd.DataFrame  # per class (precision, recall, F1, support), or per label (label_table)
    suspects: pd.DataFrame
    cams: list[Cam]
    cam_layer: str
    figures: dict[str, Path]


def git_commit() -> str:
    """The repository's commit (with '+ local changes' when the tree differs), or why not known."""
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=CONFIG_DIR.parent, capture_output=True,  # noqa: E731
                                        text=True, timeout=10, check=True).stdout.strip()
        head = run("rev-parse", "HEAD")
        return head + (" + local changes" if run("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout, or git is not installed)"


def _oof_with_paths(m: Member) -> pd.DataFrame:
    """All OOF rows with their image path; each id's fold must be its fold in the split."""
    oof = read_member_oof(m.exp_dir, m.folds, m.classes, m.records)
    table, _, split = load_or_create_folds(m.cfg, create=False)
    split_fold = dict(zip(table["id"], table["fold"]))
    missing = sorted(set(oof["id"]) - set(split_fold))
    if missing:
        raise UserError(f"OOF ids {missing[:5]} of {m.name} are not in the split {split}; the run belongs to other data")
    moved = [i for i, k in zip(oof["id"], oof["fold"]) if split_fold[i] != int(k)]
    if moved:
        raise UserError(f"{len(moved)} OOF images of {m.name} (e.g. {moved[:3]}) sit in another fold of {split} than "
                        "the fold that predicted them; the run used another split: retrain it (--fold all --force)")
    path_of = dict(zip(table["id"], table["path"]))
    return oof.assign(path=[path_of[i] for i in oof["id"]])


def model_input(m: Member, fold: int, model: torch.nn.Module, path: str, rt: Runtime
                 ) -> tuple[torch.Tensor, np.ndarray]:
    """(normalized (1, C, S, S) tensor on the device, the image as uint8 (S, S, 3)): the fold's
    own evaluation transform and device normalisation, so the map lies on exactly what the model
    saw. An array that is no photo (src.data.arrays) is shown by its channel 0, stretched to 0..255."""
    aug = m.configs[fold].aug
    img = read_image(path, m.configs[fold].data.dicom_window)
    x = build_transform(aug, False)(image=img)["image"]  # (C, S, S), uint8 or float32
    return rt.batch(x[None], Norm(*resolve_norm(aug, model.pretrained_cfg))), shown(x.permute(1, 2, 0).numpy())


def shown(img: np.ndarray) -> np.ndarray:
    """An image as a figure shows it: a photo as it is, any other array by its channel 0 stretched to 0..255."""
    if is_photo(img):
        return np.ascontiguousarray(img)
    first = img[..., 0].astype(np.float64)
    first = (first - first.min()) / (np.ptp(first) or 1.0) * 255.0
    return np.repeat(np.clip(first + 0.5, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def compute_cams(m: Member, rows: pd.DataFrame, rt: Runtime, layer: str | None) -> tuple[list[Cam], str]:
    """Grad-CAM of each row's image (id, fold, label, path, prob_*) by its own fold's model, in row order."""
    cams: dict[str, Cam] = {}
    model, current = None, None
    records = rows.sort_values("fold", kind="stable").to_dict("records")  # one model load per fold
    for r in progress(records, desc=f"{m.name} Grad-CAM"):
        k = int(r["fold"])
        if k != current:
            model, current = m.model(k, rt), k
            layer = layer or pick_cam_layer(model, m.configs[k].aug.img_size)
        x, seen = model_input(m, k, model, r["path"], rt)
        cam, probs = grad_cam(model, x, layer, activate=m.task.activate)  # explains the top output
        top = int(probs.argmax())  # the class, the rounded grade, or the most probable label
        shown = m.task.shown(probs)
        cams[r["id"]] = Cam(r["id"], k, r["label"], shown, float(probs[top]), float(r[f"prob_{m.classes[top]}"]),
                            seen, cam)
    return [cams[i] for i in rows["id"]], layer or "none"


def most_confidently_wrong(sus: pd.DataFrame, n: int, task) -> pd.DataFrame:
    """The n wrong OOF predictions with the highest probability on their (wrong) class (for
    multi-label and ordinal tasks: the highest loss; regression: the largest |error|)."""
    key = "prob" if "prob" in sus else "loss"
    return sus[~task.right(sus)].sort_values(key, ascending=False, kind="stable").head(n)


def _caption(r) -> str:
    """A suspect's grid caption: its truth, the prediction and how sure or how far off it was."""
    how = f"{r.prob:.2f}" if hasattr(r, "prob") else (f"(score {r.score:.2f})" if hasattr(r, "score")
                                                       else f"(loss {r.loss:.2f})")
    return f"{r.id}\ntrue {r.label or '-'}, pred {r.predicted or '-'} {how}"


def _thumbnail(path: str, dicom_window, side: int = 256) -> np.ndarray:
    """An image for a grid cell (a DICOM windowed as the model saw it): large photos shrunk so the longer side is `side` pixels."""
    img = shown(read_image(path, dicom_window))
    scale = side / max(img.shape[:2])
    return cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else img


def _histories(m: Member) -> dict[int, pd.DataFrame]:
    return {k: pd.read_csv(fold_paths(m.exp_dir, k).history) for k in m.folds
            if fold_paths(m.exp_dir, k).history.is_file()}


def _cam_title(c: Cam) -> str:
    return f"{c.id} (fold {c.fold})\ntrue {c.label}, pred {c.predicted} {c.prob:.2f}"


def _figures(m: Member, oof: pd.DataFrame, counts: np.ndarray, sus: pd.DataFrame, cams: list[Cam], n_wrong: int,
             rt: Runtime) -> dict[str, Path]:
    """Every PNG of the report, under outputs/<exp>/report/."""
    d, metric = m.exp_dir / "report", m.cfg.metric.name
    figs = {"curves": d / "curves.png", "confusion": d / CONFUSION[m.task.space].file,
            "wrong": d / "most_confidently_wrong.png",
            "cam_right": d / "gradcam_right.png", "cam_wrong": d / "gradcam_wrong.png",
            "filters": d / "first_conv_filters.png", "feature_maps": d / "feature_maps.png"}
    learning_curves(_histories(m), metric, figs["curves"])
    CONFUSION[m.task.space].figure(m, oof, counts, figs["confusion"])
    wrong = most_confidently_wrong(sus, n_wrong, m.task)
    path_of = dict(zip(oof["id"], oof["path"]))
    image_grid([(_thumbnail(path_of[r.id], m.cfg.data.dicom_window), _caption(r)) for r in wrong.itertuples()], figs["wrong"])
    right_ids = set(sus["id"][m.task.right(sus)])
    for key, right in (("cam_right", True), ("cam_wrong", False)):
        cam_grid([(c.image, c.cam, _cam_title(c)) for c in cams if (c.id in right_ids) == right], figs[key])
    # The first layer and early stages: the most confidently right image, by its fold's model.
    best = sus.iloc[-1]
    model = m.model(int(best["fold"]), rt)
    name, filters = first_conv_filters(model)
    filter_grid(filters, f"{name}: {filters.shape[0]} filters {filters.shape[1]}x{filters.shape[2]} "
                f"(fold {best['fold']})", figs["filters"])
    x, seen = model_input(m, int(best["fold"]), model, path_of[best["id"]], rt)
    feature_map_grid(seen, stage_maps(model, x), figs["feature_maps"])
    return figs


def _cam_rows(sus: pd.DataFrame, oof: pd.DataFrame, n_cam: int, seed: int, task) -> pd.DataFrame:
    """The n_cam most confidently wrong images and n_cam right ones drawn at random (seeded)."""
    wrong = most_confidently_wrong(sus, n_cam, task)
    right = sus[task.right(sus)]
    right = right.sample(min(n_cam, len(right)), random_state=seed) if len(right) else right
    ids = list(right["id"]) + list(wrong["id"])
    return oof.set_index("id").loc[ids].reset_index()


def build_report(cfg: Config, name: str | None = None, n_wrong: int = 24, n_cam: int = 8, cam_layer: str | None = None
                 ) -> Report:
    """Write outputs/<name>/report.html, suspect_labels.csv and the figures; return what they show.

    Args:
        cfg: a config naming the output and data folders (the experiment's own settings come from
            its folds' stored configs).
        name: the experiment (default: cfg.experiment.name).
        n_wrong: most confidently wrong OOF images in the grid.
        n_cam: Grad-CAM maps of right predictions, and as many of wrong ones.
        cam_layer: module to explain (default: the deepest stage whose map is at least 4x4).
    """
    m = open_member(name or str(cfg.experiment.name), cfg.experiment.output_dir, "warn", cfg.data.dir)
    if m.cfg.data.meta_cols is not None:  # Grad-CAM's hooks explain an image model's feature stage, fed images alone
        raise UserError(f"src.report explains image models with Grad-CAM, and {m.name} was trained with data.meta_cols "
                        "(image + metadata); report an image-only experiment, or read its OOF with src.ensemble")
    rt = Runtime.from_cfg(cfg.runtime)
    # 1) tables: CV, confusion matrix and per-class scores (multi-label: per-label scores), suspect labels
    oof = _oof_with_paths(m)
    cv = cv_table(oof, m.task, m.cfg.metric.name, m.records, m.cfg.data.aggregate)
    counts, per_class = CONFUSION[m.task.space].tables(m, oof)
    sus = suspects(oof, m.task)
    view = CONFUSION[m.task.space]
    listed = sus if view.relabel else sus.drop(columns=REVIEW_COL)
    sus_path = atomic_save(m.exp_dir / view.review_file, lambda tmp: listed.to_csv(tmp, index=False))
    # 2) Grad-CAM by each image's own fold model, then every figure
    cams, layer = compute_cams(m, _cam_rows(sus, oof, n_cam, m.cfg.experiment.seed, m.task), rt, cam_layer)
    figs = _figures(m, oof, counts, sus, cams, n_wrong, rt)
    report = Report(m.exp_dir / "report.html", sus_path, cv, counts, per_class, sus, cams, layer, figs)
    # 3) the page
    _page(m, report, n_wrong).write(report.html)
    print(f"wrote {report.html} (figures in {m.exp_dir / 'report'}) and {sus_path} ({len(sus)} OOF images by loss)")
    return report


def _confusion_tables(m: Member, oof: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    counts, per_class = confusion(oof, m.classes)
    if counts.sum() != len(oof):
        raise UserError(f"the confusion matrix counts {counts.sum()} images for {len(oof)} OOF rows")
    return counts, per_class


def _label_tables(m: Member, oof: pd.DataFrame) -> tuple[None, pd.DataFrame]:
    return None, label_table(oof, m.task, m.cfg.metric.name, m.cfg.ensemble.threshold)


def _confusion_figure(m: Member, oof: pd.DataFrame, counts: np.ndarray, path: Path) -> None:
    confusion_pair(counts, row_normalised(counts), m.classes, path)


def _label_figure(m: Member, oof: pd.DataFrame, counts: None, path: Path) -> None:
    plot_label_scores(m.task.targets(oof["label"]), oof_probs(oof, m.classes), m.classes, path)


def _residual_tables(m: Member, oof: pd.DataFrame) -> tuple[None, pd.DataFrame]:
    return None, residual_table(oof, m.task)


def _residual_figure(m: Member, oof: pd.DataFrame, counts: None, path: Path) -> None:
    plot_residuals(m.task.targets(oof["label"]), oof_probs(oof, m.classes)[:, 0], m.classes[0], path)


@dataclass(frozen=True)
class ConfusionView:
    """How the report shows what OOF confused: the tables (counts, per-class scores), the figure, its heading."""

    tables: Callable
    figure: Callable
    heading: str
    alt: str
    file: str = "confusion.png"  # the figure's name under report/
    wrong: str = "most confidently wrong"  # the heading of the grid of the worst OOF images
    review_file: str = "suspect_labels.csv"  # every OOF image by loss
    relabel: bool = True  # with a reviewed_label column for src.folds --relabel


# Task.space -> the confusion matrix (classes; grades rounded from the score), or, with no confusion
# between labels, each label's F1 at its threshold and its positives; for values, predicted against label
CONFUSION = {
    "classes": ConfusionView(_confusion_tables, _confusion_figure, "Out-of-fold confusion matrix", "confusion matrix"),
    "grades": ConfusionView(_confusion_tables, _confusion_figure,
                            "Out-of-fold confusion matrix (grades rounded from the score)", "confusion matrix"),
    "labels": ConfusionView(_label_tables, _label_figure, "Out-of-fold scores per label (thresholds fitted on OOF "
                            "to the metric, as src.ensemble does)", "per-label F1"),
    "values": ConfusionView(_residual_tables, _residual_figure, "Out-of-fold predicted values against labels, and "
                            "the errors by range of the label", "residuals", file="residuals.png",
                            wrong="with the largest |error|", review_file="worst_images.csv", relabel=False),
}


def _config_notes(m: Member) -> list[str]:
    first = m.cfg.to_dict()
    notes = []
    for k in m.folds[1:]:
        diff = [d for d in config_diff(first, m.configs[k].to_dict()) if not d.startswith("experiment.")]
        if diff:
            notes.append(f"fold {k} was trained with other settings than fold {m.folds[0]}: {diff[:8]}")
    return notes


def _page(m: Member, r: Report, n_wrong: int) -> Page:
    page = Page(f"Experiment report: {m.name}")
    page.text(f"code commit at report time: {git_commit()}; finished folds {m.folds} of {m.cfg.data.n_folds}; "
              f"{len(r.suspects)} OOF images, {len(m.classes)} {m.task.noun} ({m.task.name}); model {m.cfg.model.name}")
    page.heading("Cross-validation (each fold's model on its own validation images)")
    page.table(r.cv)
    page.heading("Learning curves (each fold, and their mean)")
    page.image(r.figures["curves"], "learning curves")
    view = CONFUSION[m.task.space]
    page.heading(view.heading)
    page.image(r.figures["confusion"], view.alt)
    page.table(r.per_class)
    page.heading(f"The {n_wrong} OOF images {view.wrong}")
    page.image(r.figures["wrong"], view.wrong)
    page.text(f"Every OOF image, highest loss first: {r.suspects_csv}." + (
        " Fill its reviewed_label column where a label is wrong, then: python -m src.folds --relabel "
        + str(r.suspects_csv) if view.relabel else ""))
    page.table(r.suspects.head(15).drop(columns=REVIEW_COL))
    page.heading(f"Grad-CAM on {r.cam_layer}, by the fold model that never trained on the image")
    amp = torch.cuda.is_available() and any(c.runtime.device != "cpu" and c.runtime.amp != "off"
                                             for c in m.configs.values())
    tol = OOF_TOLERANCE["amp" if amp else "fp32"]
    bad = [c for c in r.cams if abs(c.prob - c.prob_oof) > tol]
    if bad:
        page.text(f"{len(bad)} maps' forward passes do not reproduce oof.csv's probability (e.g. {bad[0].id}: "
                  f"{bad[0].prob:.4f} vs {bad[0].prob_oof:.4f}): best.pt and oof.csv disagree", "warn")
    page.text("right predictions (a random sample)")
    page.image(r.figures["cam_right"], "Grad-CAM right")
    page.text(f"wrong predictions ({view.wrong})")
    page.image(r.figures["cam_wrong"], "Grad-CAM wrong")
    page.heading("First convolution's filters, and the first stages' feature maps")
    page.image(r.figures["filters"], "first convolution filters")
    page.image(r.figures["feature_maps"], "feature maps")
    page.heading("Resolved config (fold " + str(m.folds[0]) + ")")
    for note in _config_notes(m):
        page.text(note, "warn")
    page.code(yaml.safe_dump(m.cfg.to_dict(), sort_keys=False))
    return page
