"""Ensemble members: an experiment's finished folds and their predictions per fold and TTA view.

Predictions are cached as logits in outputs/<experiment>/preds/fold<k>/, keyed by the bytes of
the fold's best.pt, the images (ids and the bytes of their files), the view and the precision. A model is built only for the (fold, view) pairs the cache lacks, so re-blending with
other weights, voting or formats needs no model at all.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from src.core import distributed
from src.core.config import Config, LoaderCfg, config_from_dict
from src.core.runtime import Runtime, predict
from src.core.tasks import Task, task_of
from src.core.utils import UserError
from src.data.answers import to_answers
from src.data.folds import folds_path, load_or_create_folds
from src.data.loaders import eval_loader
from src.data.meta_table import encode, meta_rows
from src.evaluation.blending import as_logits, combine
from src.evaluation.metrics import table_summary
from src.models.model import build_model
from src.runs.checkpoint import load_checkpoint
from src.runs.layout import (
    check_fold_identity,
    experiment_dir,
    file_sha1,
    finished_folds,
    fold_paths,
    fold_record,
    images_key,
    load_preds,
    oof_probs,
    preds_key,
    preds_path,
    read_oof,
    save_preds,
    split_folds,
)


@dataclass
class Member:
    """One experiment's finished folds, each with its own stored config (paths relocated)."""

    name: str
    exp_dir: Path
    folds: list[int]
    classes: list[str]
    configs: dict[int, Config] = field(repr=False)
    records: dict[int, dict] = field(repr=False)  # each fold's done.json
    computed: int = 0  # (fold, view) predictions made by a model in this process
    cached: int = 0  # ... and read from the cache
    _sha: dict[int, str] = field(default_factory=dict, repr=False)

    @property
    def cfg(self) -> Config:
        """The first fold's config: the data and split every fold shares."""
        return self.configs[self.folds[0]]

    @property
    def task(self) -> Task:
        return task_of(self.cfg, self.classes)

    def oof_scores(self) -> dict:
        """{'folds': the finished folds this member uses, accuracy, f1_macro and the metric} of their
        OOF predictions concatenated: what a CV figure quotes (cv.json may predate a retrained or
        removed fold)."""
        oof = _oof_table(self)
        return {"folds": list(self.folds), **table_summary(oof, oof_probs(oof, self.classes), self.task,
                                                            self.cfg.metric.name, self.cfg.data.aggregate)}

    def sha(self, fold: int) -> str:
        if fold not in self._sha:
            self._sha[fold] = file_sha1(fold_paths(self.exp_dir, fold).best)
        return self._sha[fold]

    def model(self, fold: int, rt: Runtime) -> torch.nn.Module:
        """The fold's best.pt, rebuilt from its stored config, on the runtime's device."""
        path = fold_paths(self.exp_dir, fold).best
        ckpt = load_checkpoint(path)
        mine, recorded = ckpt.get("run_id"), self.records[fold].get("run_id")
        if mine is not None and recorded is not None and mine != recorded:  # None: written before run ids
            raise UserError(f"{path} comes from another training run than fold {fold}'s done.json; retrain the fold "
                            "or restore the fold folder as one piece")
        if ckpt["classes"] != self.classes:
            raise UserError(f"{path} holds another class list than the fold's done.json; retrain fold {fold}")
        cfg = self.configs[fold]
        meta = _checked_meta(cfg, ckpt.get("meta"), path)
        model = build_model(cfg.model, task_of(cfg, self.classes).n_outputs, pretrained=False, img_size=cfg.aug.img_size,
                            meta=meta)
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise UserError(f"{path} does not fit its stored config ({cfg.model.name}, {len(self.classes)} classes): "
                            f"{str(e).splitlines()[0][:150]}; retrain that fold") from None
        return rt.model(model).eval()


def _checked_meta(cfg: Config, meta: dict | None, path: Path) -> dict | None:
    """The checkpoint's metadata preprocessing, which must be of the columns its config names."""
    want, have = cfg.data.meta_cols, None if meta is None else meta["cols"]
    if (want is None) != (have is None) or (isinstance(want, list) and want != have):
        raise UserError(f"{path} was trained with data.meta_cols={have} but its fold's config says data.meta_cols={want}; "
                        "retrain the fold, or restore its done.json and best.pt as one piece")
    return meta


def _meta_rows(cfg: Config, ids, split: str) -> pd.DataFrame | None:
    """The metadata rows (text) of a fold's images: from train.csv for OOF, the test table for test."""
    return None if cfg.data.meta_cols is None else meta_rows(cfg, ids, "test" if split == "test" else "train")


def _relocated(cfg: Config, output_dir: str, name: str, data_dir: str | None,
               images: tuple[bool, str | None]) -> Config:
    """A stored config with the caller's output and data folders and image-cache settings, so
    copied outputs (a Kaggle kernel, whose input folder is read-only) work where they now are."""
    return cfg.model_copy(update={
        "experiment": cfg.experiment.model_copy(update={"output_dir": output_dir, "name": name}),
        "data": cfg.data.model_copy(update={"dir": data_dir or cfg.data.dir, "cache": images[0],
                                            "cache_dir": images[1]}),
    })


def _check_identities(root: Path, configs: dict[int, Config]) -> None:
    """Each finished fold holds its own fold's run (src.runs.layout.check_fold_identity), checked
    against the split its config names, before anything reads it."""
    splits: dict[Path, dict | None] = {}
    for k, cfg in configs.items():
        path = folds_path(cfg)
        if path not in splits:
            splits[path] = split_folds(path)
        check_fold_identity(fold_paths(root, k), splits[path])


def open_member(name: str, output_dir: str, missing_folds: str, data_dir: str | None = None,
                images: tuple[bool, str | None] = (True, None), needs_every_fold: str | None = None) -> Member:
    """The finished folds (done.json) of outputs/<name>/; no model is loaded here. `images` is
    the caller's (data.cache, data.cache_dir): where inference runs decides how it caches.
    `needs_every_fold`: why the caller cannot do without a missing fold (its error then says so)."""
    root = experiment_dir(output_dir, name)
    if not root.is_dir():
        raise UserError(f"experiment folder {root} does not exist; train it first or fix --experiments")
    found = finished_folds(root)
    if not found:
        raise UserError(f"{root} has no finished fold (no fold<k>/done.json); train the folds first "
                        "(python -m src.train --fold all), or finish interrupted ones with --resume")
    records = {k: fold_record(fold_paths(root, k)) for k in found}
    configs = {k: _relocated(config_from_dict(r["config"], str(fold_paths(root, k).done)), output_dir, name, data_dir,
                             images) for k, r in records.items()}
    _check_identities(root, configs)
    expected = list(range(configs[found[0]].data.n_folds))
    missing = [k for k in expected if k not in found]
    if missing:
        msg = f"experiment {name} has no finished run for folds {missing} (no done.json: never trained, interrupted or running)"
        if needs_every_fold:
            raise UserError(f"{msg}; train them (python -m src.train --fold K), since {needs_every_fold}")
        if missing_folds == "error":
            raise UserError(f"{msg}; train them, or set ensemble.missing_folds=warn to blend the folds present")
        if missing_folds == "warn":  # warn_quietly: the caller says which folds it used
            print(f"warning: {msg}; blending folds {[k for k in expected if k in found]}")
    folds = [k for k in expected if k in found]
    classes = records[folds[0]]["classes"]
    for k in folds:
        if records[k]["classes"] != classes:
            raise UserError(f"{name} fold {k} has a different class list from fold {folds[0]}; retrain it")
    member = Member(name, root, folds, classes, {k: configs[k] for k in folds}, {k: records[k] for k in folds})
    for k in folds:  # the bytes training finished with: a best.pt swapped in later is refused
        expected = records[k].get("best_sha1")
        if expected is not None and member.sha(k) != expected:
            raise UserError(f"{fold_paths(root, k).best} has changed since fold {k} of {name} finished (truncated, "
                            "corrupted or replaced: its done.json records other bytes); retrain the fold or restore "
                            "its best.pt")
    return member


def _eval_setup(cfg: Config) -> tuple:
    """What the evaluation transform depends on: folds that share it share one decoding pass."""
    return (cfg.model.name, cfg.aug.img_size, cfg.aug.crop_pct, cfg.aug.mean, cfg.aug.std, cfg.data.cache,
            cfg.data.dicom_window)


def fold_logits(m: Member, jobs: dict[int, pd.DataFrame], split: str, views: list[str], rt: Runtime,
                loader_cfg: LoaderCfg, cache: bool = True) -> dict[int, np.ndarray]:
    """Logits (views, N, C) of each fold's model on its images (`jobs`: fold -> table with id, path).

    Cached predictions are read; the rest is predicted in one pass per group of folds that share
    their images and evaluation transform (the test set: every fold of a member), then cached.
    """
    out: dict[int, dict[str, np.ndarray]] = {}
    todo: dict[tuple, list[int]] = {}
    paths: dict[tuple[int, str], Path] = {}
    imgs: dict[int, str] = {}
    rows = {k: _meta_rows(m.configs[k], df["id"], split) for k, df in jobs.items()}
    for k, df in jobs.items():
        imgs[k] = images_key(df["id"], df["path"])
        if rows[k] is not None:  # the metadata is an input too: edited values are predicted again
            imgs[k] = hashlib.sha1(f"{imgs[k]}\0{rows[k].to_csv()}".encode()).hexdigest()
        out[k] = {}
        for v in views:
            paths[k, v] = preds_path(m.exp_dir, k, split, v, preds_key(m.sha(k), split, v, imgs[k], rt.amp_name))
            cached = load_preds(paths[k, v]) if cache else None
            if cached is not None and cached.shape == (len(df), m.task.n_outputs):
                out[k][v] = cached
    hits = distributed.common({(k, v) for k in out for v in out[k]})  # under torchrun all ranks plan the same passes
    for k in jobs:
        out[k] = {v: a for v, a in out[k].items() if (k, v) in hits}
        m.cached += len(out[k])
        if len(out[k]) < len(views):
            # each fold encodes metadata with its own fitted preprocessing: a pass of its own
            todo.setdefault((imgs[k], _eval_setup(m.configs[k]), k if rows[k] is not None else None), []).append(k)
    for group in todo.values():
        cfg = m.configs[group[0]]
        models = [m.model(k, rt) for k in group]
        vectors = None if rows[group[0]] is None else encode(models[0].meta_spec, rows[group[0]],
                                                             cfg.data.test_csv if split == "test" else cfg.data.train_csv)
        loader, norm = eval_loader(cfg, jobs[group[0]]["path"].tolist(), loader_cfg, rt, models[0].pretrained_cfg,
                                   vectors)
        need = [v for v in views if any(v not in out[k] for k in group)]
        part = predict(models, loader, rt, need, desc=f"{m.name} {split} folds {group} x {len(need)} views",
                       norm=norm) if len(loader.dataset) else None  # this rank's images under torchrun
        logits = distributed.gather_rows(part, axis=2)  # (folds in group, views needed, N, C)
        for gi, k in enumerate(group):
            for vi, v in enumerate(need):
                if v in out[k]:  # cached already; the group pass predicted it for another fold
                    continue
                if cache and distributed.is_main():
                    save_preds(paths[k, v], logits[gi, vi])
                out[k][v] = logits[gi, vi]
                m.computed += 1
        del models
    return {k: np.stack([out[k][v] for v in views]) for k in jobs}


def member_oof(m: Member, views: list[str] | None, rt: Runtime, loader_cfg: LoaderCfg, within: str = "soft"
               ) -> tuple[pd.DataFrame, np.ndarray]:
    """(table of id, target and fold, OOF log-probabilities N x C): each fold model on its own validation images,
    one row per answer with data.answer_id (its images' probabilities combined by data.aggregate).

    Without views the stored oof.csv files are used; with views those images are predicted again
    (or read from the cache), and each fold's views are blended by `within` (the blend's rule
    within a member: src.ensembling.oof.within_member).
    """
    task = m.task
    if not views:
        oof = _oof_table(m)
        table, probs = oof[_ROWS + [c for c in ("answer",) if c in oof]], oof_probs(oof, m.classes)
    else:
        table, logits = member_oof_views(m, views, rt, loader_cfg)
        probs = np.concatenate([combine(logits[k], within, task=task) for k in m.folds])
    table, probs = to_answers(table, probs, task, m.cfg.data.aggregate)
    return table, as_logits(probs, task)


_ROWS = ["id", "label", "fold"]  # what an OOF table's rows say of an image (with data.answer_id: and its answer)


def _oof_table(m: Member) -> pd.DataFrame:
    """The member's OOF rows, every fold's; an id twice is refused: the OOF report, the views and
    the weights align members by id (and an image predicted twice would count twice in the score)."""
    parts = [read_oof(fold_paths(m.exp_dir, k).oof, m.classes, m.records[k].get("run_id")) for k in m.folds]
    oof = pd.concat(parts, ignore_index=True)
    twice = oof["id"].duplicated(keep=False)
    if twice.any():
        files = [str(fold_paths(m.exp_dir, k).oof) for k in sorted(set(oof.loc[twice, "fold"]))]
        raise UserError(f"experiment {m.name}'s OOF predictions repeat {oof.loc[twice, 'id'].nunique()} ids (e.g. "
                        f"{oof.loc[twice, 'id'].iloc[0]}) in {', '.join(files)}; each image belongs to one validation "
                        "fold, so pull or retrain the fold that repeats them")
    return oof


def member_oof_views(m: Member, views: list[str], rt: Runtime, loader_cfg: LoaderCfg
                     ) -> tuple[pd.DataFrame, dict[int, np.ndarray]]:
    """(table of id, target and fold in fold order, fold -> logits (views, N_k, C)) of each fold
    model on its own validation images, one array per view (predicted, or read from the cache)."""
    oof = _oof_table(m)
    table, _, _ = load_or_create_folds(m.cfg, create=False)
    path_of = dict(zip(table["id"], table["path"]))
    jobs = {k: pd.DataFrame({"id": p["id"].to_numpy(), "path": [path_of[i] for i in p["id"]]})
            for k, p in oof.groupby("fold", sort=False)}
    logits = fold_logits(m, {k: jobs[k] for k in m.folds}, "oof", views, rt, loader_cfg)
    return oof[_ROWS + [c for c in ("answer",) if c in oof]], logits


def check_test_meta(m: Member, ids) -> None:
    """Before anything is predicted: the test table of a member trained with data.meta_cols exists,
    holds every test id and the columns each fold was trained with (done.json's meta_cols)."""
    for k in m.folds:
        cfg = m.configs[k]
        if cfg.data.meta_cols is not None:
            rows = meta_rows(cfg, ids, "test")
            lacking = [c for c in m.records[k].get("meta_cols", []) if c not in rows.columns]
            if lacking:
                raise UserError(f"{cfg.data.test_csv} has no column {lacking[:3]}, which fold {k} of {m.name} was "
                                "trained with (data.meta_cols); restore the column, or retrain without it")


def member_test(m: Member, test: pd.DataFrame, views: list[str], rt: Runtime, loader_cfg: LoaderCfg,
                within: str, cache: bool = True) -> np.ndarray:
    """Test probabilities (N, C): every fold x view of the member, blended by `within` (the blend's
    rule within a member: src.ensembling.oof.within_member); with data.answer_id the images' (cached per
    image) combined into their answers', in the sample submission's order (src.data.answers.test_images)."""
    logits = fold_logits(m, {k: test for k in m.folds}, "test", views, rt, loader_cfg, cache)
    # (folds * views, N, C) -> (N, C)
    probs = combine(np.concatenate([logits[k] for k in m.folds]), within, task=m.task)
    return to_answers(test, probs, m.task, m.cfg.data.aggregate)[1]


def open_members(cfg: Config, names: list[str]) -> list[Member]:
    members = [open_member(n, cfg.experiment.output_dir, cfg.ensemble.missing_folds, cfg.data.dir,
                           (cfg.data.cache, cfg.data.cache_dir)) for n in names]
    for m in members[1:]:
        if m.classes != members[0].classes:
            raise UserError(f"members {members[0].name} and {m.name} have different class lists; "
                            "blend experiments of one competition")
    return members
