"""One fold of training, conducted: setup, epochs (src/training/engine.py), checkpoints (CheckpointKeeper),
final artifacts; several folds and their CV report. `python -m src.train` is its command line."""

from __future__ import annotations

import json
import math
import time
import uuid
import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from timm.data import Mixup
from timm.utils import ModelEmaV3

from src.core import distributed
from src.core.config import Config, TrainCfg, config_from_dict, save_config
from src.core.runtime import Norm, Runtime
from src.core.tasks import task_of
from src.core.tracking import Tracker
from src.core.utils import UserError, atomic_save, atomic_write_text, derive_seed, seed_everything
from src.data.answers import to_answers
from src.data.folds import fold_tables, folds_path
from src.data.image_cache import image_cache
from src.data.loaders import ImageDataset, make_loader, resolve_workers, with_image_inputs
from src.data.meta_table import check_meta, encode, fit_meta, meta_rows
from src.data.transforms import build_transform, resolve_norm
from src.evaluation.metrics import check_metric_fits, higher_is_better, is_better, monitor_name, summary, table_summary
from src.models.losses import build_loss
from src.models.model import (
    build_model,
    freeze,
    has_weights,
    param_counts,
    param_groups,
    set_grad_checkpointing,
    set_train_mode,
    unfreeze,
)
from src.models.optim import LossScaler, build_optimizer, build_scheduler
from src.runs.checkpoint import RESUME_MAY_CHANGE, CheckpointKeeper, config_diff, load_checkpoint
from src.runs.layout import (
    FoldPaths,
    check_not_locked,
    file_sha1,
    finished_folds,
    fold_lock,
    fold_paths,
    fold_record,
    mark_unfinished,
    oof_probs,
    read_done,
    read_oof,
    write_done,
    write_oof,
)
from src.training.engine import CompiledForward, FoldState, train_one_epoch, validate
from src.training.plots import plot_confusion, plot_curves, plot_label_scores, plot_residuals
from src.training.size_schedule import size_at
from src.training.soft_targets import with_soft_targets
from src.training.weight_averaging import finish_swa, new_swa, swa_cv, swa_step

# ---------------------------------------------------------------- setup


def setup_fold(cfg: Config, fold: int, rt: Runtime, dry: bool = False) -> FoldState:
    """Data, model with freezing, and loaders of one fold (the optimization is added by `optimization`);
    `dry`: write nothing (no split file, no image cache)."""
    fits = lambda n_classes: check_metric_fits(cfg.metric.name, n_classes, task_of(cfg))  # noqa: E731
    if cfg.data.meta_cols is not None:
        check_meta(cfg)  # before the split is written
    train_df, val_df, classes = distributed.main_first(lambda: fold_tables(cfg, fold, fits, write=not dry))  # rank 0 writes the split
    # the whole table's images (not this fold's part): every fold resolves the same channels and statistics
    cfg = with_image_inputs(cfg, list(train_df["path"]) + ([] if val_df is None else list(val_df["path"])))
    task = task_of(cfg, classes)
    seed = derive_seed(cfg.experiment.seed, fold + 1)
    seed_everything(seed)
    meta, vectors = fold_meta(cfg, train_df, val_df)
    model = build_model(cfg.model, task.n_outputs, img_size=cfg.aug.img_size, meta=meta)
    if cfg.model.grad_checkpointing:
        set_grad_checkpointing(model, cfg.model.name)
    frozen = freeze(model, cfg.model.freeze_before, cfg.model.freeze_stages)
    if frozen.any and not has_weights(cfg.model):
        warnings.warn(f"{len(frozen.params)} parameter tensors are frozen at their random initialization "
                      "(no model.pretrained_path, model.pretrained=false); set one of them, or null "
                      "model.freeze_before / model.freeze_stages", stacklevel=2)
    counts = param_counts(model)
    mean, std = resolve_norm(cfg.aug, model.pretrained_cfg)
    model = rt.model(model)
    print(
        f"fold {fold}: {len(train_df)} train / {len(val_df) if val_df is not None else 0} valid images, "
        f"{task.describe()}"
        + f", {cfg.model.name} on {rt.device}"
        + (f" ({rt.amp_name} autocast)" if rt.dtype else "")
        + f"; parameters {counts['total']:,} total, {counts['trainable']:,} trainable, {counts['frozen']:,} frozen"
    )
    train_cache, val_cache = (None, None) if dry else (image_cache(cfg, train=True), image_cache(cfg, train=False))
    train_ds = ImageDataset(train_df["path"], task.targets(train_df["label"]), build_transform(cfg.aug, True), train_cache,
                            cfg.data.dicom_window, vectors[0])
    train_ds = with_soft_targets(train_ds, cfg, train_df, classes)  # distillation, soft pseudo-labels
    sampler = distributed.epoch_sampler(len(train_ds), seed)
    train_loader = make_loader(train_ds, cfg.loader, device=rt.device.type, sampler=sampler,
                               drop_last=len(sampler) > cfg.loader.batch_size)
    val_loader = None
    if val_df is not None:
        val_ds = ImageDataset(val_df["path"], task.targets(val_df["label"]), build_transform(cfg.aug, False), val_cache,
                              cfg.data.dicom_window, vectors[1])
        val_loader = make_loader(distributed.shard_dataset(val_ds, cfg.loader.batch_size * 2), cfg.loader,
                                 device=rt.device.type, batch_size=cfg.loader.batch_size * 2)
    limit = cfg.train.limit_batches
    batches = len(train_loader) if limit is None else min(len(train_loader), limit)
    return FoldState(cfg, fold, fold_paths(cfg.out_dir, fold), rt, classes, train_df, val_df, model, frozen, counts,
                     sampler, train_loader, val_loader, batches, seed, Norm(mean, std), meta=meta)


def fold_meta(cfg: Config, train_df: pd.DataFrame, val_df: pd.DataFrame | None
              ) -> tuple[dict | None, tuple[np.ndarray | None, np.ndarray | None]]:
    """(the metadata preprocessing fitted on the fold's training rows only, the training and
    validation rows' vectors); (None, (None, None)) without data.meta_cols."""
    if cfg.data.meta_cols is None:
        return None, (None, None)
    rows = meta_rows(cfg, train_df["id"], "train")
    spec = fit_meta(cfg, rows)
    val = None if val_df is None else encode(spec, meta_rows(cfg, val_df["id"], "train"))
    return spec, (encode(spec, rows), val)


def fill_caches(s: FoldState) -> None:
    """Decode and resize, once, the images the fold's caches lack, with a progress bar (the
    datasets would build them one by one otherwise). Called once the run is known to start."""
    for loader in (s.train_loader, s.val_loader):
        ds = getattr(loader, "dataset", None)
        ds = getattr(ds, "base", ds)  # probability targets wrap the images (src/training/soft_targets.py)
        base = getattr(ds, "dataset", ds)  # a torch Subset: this rank's share under torchrun
        if getattr(base, "cache", None) is None:
            continue
        paths = [base.paths[i] for i in ds.indices] if base is not ds else base.paths
        base.cache.fill_or_fail(paths, workers=max(2, resolve_workers(s.cfg.loader)))


def fold_epochs(cfg: TrainCfg, updates_per_epoch: int) -> int:
    """train.epochs, raised until the fold takes train.min_steps optimizer steps (not in smoke runs,
    train.limit_batches, whose epochs are cut short on purpose)."""
    if not cfg.min_steps or cfg.limit_batches is not None:
        return cfg.epochs
    return max(cfg.epochs, math.ceil(cfg.min_steps / updates_per_epoch))


def describe_groups(groups: list[dict], epochs: int, updates_per_epoch: int) -> str:
    """One line on the optimizer's parameter groups (layer decay, backbone lr) and steps, the same in a
    dry run and a real one."""
    scales = [g.get("lr_scale", 1.0) for g in groups]
    return (f"optimizer: {len(groups)} parameter groups, lr x {min(scales):.3g} to x {max(scales):.3g}; "
            f"{epochs} epochs of {updates_per_epoch} optimizer steps")


def optimization(s: FoldState, lr: float | None = None) -> None:
    """Loss, mixup, optimizer, schedule, grad scaler and EMA of a set-up fold; `lr` instead of
    optim.lr (the learning-rate finder's sweep, whose optim.lr may still be `find`)."""
    cfg = s.cfg
    mixing = cfg.train.mixup > 0 or cfg.train.cutmix > 0
    targets = s.task.targets(s.train_df["label"])
    s.criterion = build_loss(cfg.loss, s.task, targets, smoothing=0.0 if mixing else None).to(s.rt.device)
    if mixing:
        # timm mixes dense targets for multi-label tasks (multi_label) and a regression head's grade (one column)
        s.mixup = Mixup(mixup_alpha=cfg.train.mixup, cutmix_alpha=cfg.train.cutmix, prob=cfg.train.mix_prob,
                        **s.task.mixup_options(cfg.loss.smoothing))
    groups = param_groups(s.model, cfg.optim.weight_decay, s.frozen, cfg.model.backbone_lr_mult,
                          include_frozen=cfg.model.unfreeze_epoch is not None, layer_decay=cfg.optim.layer_decay,
                          name=cfg.model.name, meta_lr_mult=cfg.optim.meta_lr_mult)
    peak = cfg.optim.peak_lr if lr is None else lr
    s.optimizer = build_optimizer(cfg.optim, groups, lr=peak)
    updates_per_epoch = max(1, math.ceil(s.batches / cfg.train.accum_steps))
    s.epochs = fold_epochs(cfg.train, updates_per_epoch)
    print(describe_groups(groups, s.epochs, updates_per_epoch))
    if s.epochs > cfg.train.epochs:
        print(f"train.min_steps={cfg.train.min_steps}: {updates_per_epoch} optimizer step"
              f"{'s' * (updates_per_epoch != 1)} an epoch, so {s.epochs} epochs instead of train.epochs="
              f"{cfg.train.epochs} (the schedule follows; train.min_steps=0 keeps the epochs)")
    s.scheduler = build_scheduler(cfg.sched, s.optimizer, peak, s.epochs, updates_per_epoch, higher_is_better(cfg))
    s.scaler = LossScaler(s.rt.device.type, enabled=s.rt.dtype == torch.float16)
    # Decay warmup (timm) lets the average follow the weights early on; short runs need it.
    s.ema = ModelEmaV3(s.model, decay=cfg.train.ema_decay, use_warmup=True) if cfg.train.ema else None
    s.swa = new_swa(s.model) if cfg.train.swa else None
    s.ddp = distributed.wrap(s.model, s.rt.device)
    print(distributed.describe_batch(cfg.loader.batch_size, cfg.train.accum_steps, peak if lr is None else None))
    s.forward = CompiledForward(s.net) if cfg.train.compile else None


def dry_run(s: FoldState) -> dict:
    """One forward pass of a few training images; nothing trained or written."""
    x, _ = next(iter(make_loader(s.train_loader.dataset, s.cfg.loader, device=s.rt.device.type,
                                 batch_size=min(4, len(s.train_df)))))
    s.model.eval()
    with torch.no_grad(), s.rt.autocast():
        logits = s.model(s.rt.batch(x, s.norm))
    cfg, upe = s.cfg, max(1, math.ceil(s.batches / s.cfg.train.accum_steps))
    groups = param_groups(s.model, cfg.optim.weight_decay, s.frozen, cfg.model.backbone_lr_mult,
                          include_frozen=cfg.model.unfreeze_epoch is not None, layer_decay=cfg.optim.layer_decay,
                          name=cfg.model.name, meta_lr_mult=cfg.optim.meta_lr_mult)
    print(describe_groups(groups, fold_epochs(cfg.train, upe), upe))
    split = folds_path(s.cfg)
    image = x[0] if isinstance(x, list) else x  # (image, metadata) pairs come as [images, vectors]
    print(f"dry run: input {tuple(image.shape)} -> logits {tuple(logits.shape)}; nothing trained or written (no checkpoint, "
          "no image cache" + ("" if split.is_file() else f"; the split {split} would be written by a real run") + ")")
    return {"dry_run": True, "params": s.counts, "n_train": len(s.train_df),
            "n_valid": 0 if s.val_df is None else len(s.val_df)}


# ---------------------------------------------------------------- one fold


def run_epoch(s: FoldState, keeper: CheckpointKeeper, epoch: int, tracker: Tracker,
              on_epoch: Callable[[int, float], None] | None) -> None:
    """Train one epoch, validate, keep checkpoints and the OOF file of the best epoch, report."""
    t0 = time.time()
    cfg = s.cfg
    seed_everything(derive_seed(s.seed, epoch))
    s.sampler.set_epoch(epoch)
    if cfg.model.unfreeze_epoch is not None and epoch >= cfg.model.unfreeze_epoch and s.frozen.any:
        s.frozen = unfreeze(s.model, s.frozen)
        s.ddp = distributed.wrap(s.model, s.rt.device)  # DDP syncs only what was trainable when it was built
        s.forward = CompiledForward(s.net) if cfg.train.compile else None
        print(f"epoch {epoch}: unfroze all parameters (backbone lr x{cfg.model.backbone_lr_mult})")
    set_train_mode(s.model, s.frozen)
    s.train_size = size_at(cfg.aug.size_schedule, epoch)
    trained = distributed.mean_over_ranks(train_one_epoch(s, epoch), ("train_loss", "train_accuracy"))
    row = {"epoch": epoch, **({"img_size": s.train_size} if s.train_size else {}), **trained}
    row["img_per_s"] = round(row["img_per_s"] * distributed.world_size(), 1)  # every process's images (steps are in lockstep)
    swa_step(s, epoch)
    value = None
    if s.val_loader is not None:
        probs, scores = validate(s.eval_model, s.val_loader, s.rt, s.task.targets(s.val_df["label"]), cfg.metric.name,
                                 s.norm, s.task, what=f"fold {s.fold} at epoch {epoch}", answers=s.answers)
        row.update({f"val_{k}": v for k, v in scores.items()})
        value = scores[monitor_name(cfg)]
    improved = keeper.observe(epoch, value)
    if improved and s.val_df is not None and distributed.is_main():
        write_oof(s.fp.oof, s.val_df["id"], s.fold, s.val_df["label"], s.val_df.get("target"), probs, s.classes,
                  keeper.meta["run_id"], epoch, s.val_df.get("answer"))
    row["time_s"] = round(time.time() - t0, 2)
    keeper.history.append(row)
    s.scheduler.step(epoch + 1, row.get(f"val_{monitor_name(cfg)}"))
    if distributed.is_main():
        keeper.save(s, epoch, improved)
    tracker.log({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
    print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
          + ("  *" if improved and s.val_loader is not None else ""))
    if on_epoch is not None and value is not None:
        on_epoch(epoch, value)


def sync_oof(s: FoldState, keeper: CheckpointKeeper) -> None:
    """oof.csv must hold best.pt's predictions. A run stopped between the two writes and resumed
    (which need not improve again) can leave them apart: then best.pt predicts the fold again."""
    fp = s.fp

    def current() -> bool:
        return fp.oof.is_file() and set(read_oof(fp.oof, s.classes).get("epoch", [])) == {str(keeper.best_epoch)}

    if distributed.from_main(current):  # every rank takes rank 0's answer: they validate together or not at all
        return
    s.eval_model.load_state_dict(load_checkpoint(fp.best)["model"])
    probs, _ = validate(s.eval_model, s.val_loader, s.rt, s.task.targets(s.val_df["label"]), s.cfg.metric.name, s.norm,
                        s.task)
    if distributed.is_main():
        write_oof(fp.oof, s.val_df["id"], s.fold, s.val_df["label"], s.val_df.get("target"), probs, s.classes,
                  keeper.meta["run_id"], keeper.best_epoch, s.val_df.get("answer"))


def finish_fold(s: FoldState, keeper: CheckpointKeeper, tracker: Tracker) -> dict:
    """history.csv, curves, final checkpoints, OOF scores and confusion matrix, then done.json
    (written by rank 0 under torchrun; every rank returns its result)."""
    cfg, fp = s.cfg, s.fp
    if distributed.is_main():
        hist = pd.DataFrame(keeper.history)
        atomic_save(fp.history, lambda tmp: hist.to_csv(tmp, index=False))
        plot_curves(hist, cfg.metric.name, fp.curves)
        keeper.finish(s, keep_last_as_best=s.val_df is None)
    distributed.barrier()  # best.pt is on disk for every rank
    if not fp.best.is_file():
        raise UserError(f"no epoch of fold {s.fold} produced a finite validation {monitor_name(cfg)}, so there is no "
                        "best model; lower optim.lr, set runtime.amp=off or train.clip_grad, then retrain with --force")
    if s.val_df is not None:
        sync_oof(s, keeper)
    swa = finish_swa(s, keeper.meta, keeper.history[-1]["epoch"])  # every rank: its validation is gathered
    return distributed.from_main(lambda: _record(s, keeper, tracker, swa))


def _confusion(y: np.ndarray, probs: np.ndarray, classes: list[str], fp, tracker: Tracker) -> None:
    plot_confusion(y, probs.argmax(1), classes, fp.confusion)
    tracker.confusion(y, probs.argmax(1), classes)


def _label_scores(y: np.ndarray, probs: np.ndarray, classes: list[str], fp, tracker: Tracker) -> None:
    plot_label_scores(y, probs, classes, fp.confusion.with_name("label_scores.png"))


# Task.space -> a finished fold's OOF figure: the confusion matrix (classes; grades rounded from the
# score), each label's F1 and support (labels: no confusion between them), or predicted against label
# (values, regression: residuals.png)
FOLD_FIGURES = {"classes": _confusion, "grades": _confusion, "labels": _label_scores,
                "values": lambda y, probs, classes, fp, tracker: plot_residuals(
                    y, probs[:, 0], classes[0], fp.confusion.with_name("residuals.png"))}


def _record(s: FoldState, keeper: CheckpointKeeper, tracker: Tracker, swa: dict | None) -> dict:
    """The fold's scores, confusion matrix and summary, and done.json, written last."""
    cfg, fp = s.cfg, s.fp
    result = {"fold": s.fold, "best_epoch": keeper.best_epoch, "epochs": s.epochs, "epochs_run": len(keeper.history),
              "monitor": monitor_name(cfg), "best": keeper.best, "params": s.counts, "classes": s.classes,
              "config": cfg.to_dict(), "run_id": keeper.meta["run_id"], "processes": distributed.world_size(),
              **({"meta_cols": s.meta["cols"]} if s.meta is not None else {})}  # what inference checks the test table for
    if s.val_df is not None:
        oof = read_oof(fp.oof, s.classes)
        oof, probs = to_answers(oof, oof_probs(oof, s.classes), s.task, cfg.data.aggregate)  # Kaggle's rows: answers
        y = s.task.targets(oof["label"])
        result.update(summary(y, probs, cfg.metric.name))
        FOLD_FIGURES[s.task.space](y, probs, s.classes, fp, tracker)
        tracker.summary({f"best_{monitor_name(cfg)}": keeper.best, "best_epoch": keeper.best_epoch,
                         **{f"best_{k}": v for k, v in result.items() if k in ("accuracy", "f1_macro", cfg.metric.name)}})
    if swa is not None:
        result["swa"] = swa
    result["best_sha1"] = file_sha1(fp.best)  # later stages refuse a best.pt swapped in after training
    write_done(fp, result)  # last: only now is the fold finished
    return result


def check_same_settings(cfg: Config, fold: int) -> None:
    """Refuse to train a fold with settings that differ from the experiment's finished folds (in
    anything that changes what is computed): the ensemble would blend models of two recipes under
    one name. --fold -1 (all data, often trained longer) is not compared."""
    if fold == -1:
        return
    mine = cfg.to_dict()
    for k in finished_folds(cfg.out_dir):
        if k == fold:
            continue
        fp = fold_paths(cfg.out_dir, k)
        theirs = config_from_dict(fold_record(fp)["config"], str(fp.done)).to_dict()  # older key names migrated
        diff = [key for key in config_diff(theirs, mine) if not key.startswith(RESUME_MAY_CHANGE)]
        processes = fold_record(fp).get("processes", 1)  # the effective batch: processes x batch x accumulation
        if processes != distributed.world_size():
            diff.append(f"processes ({processes} there, {distributed.world_size()} here)")
        if diff:
            raise UserError(f"fold {fold} would train with settings that differ from fold {k} of experiment "
                            f"{cfg.experiment.name} in {diff[:6]}; use fold {k}'s settings, another experiment.name, "
                            "--fold all --force to retrain every fold, or --allow-mixed-configs")


def _check_can_start(fp: FoldPaths, fold: int, resume: bool, force: bool) -> dict | None:
    """The finished result when there is nothing to do; raise when an unfinished run is in the way."""
    if fp.done.is_file() and not force:
        print(f"fold {fold}: finished earlier ({fp.done}); pass --force to train it again")
        return read_done(fp)
    if fp.last.is_file() and not (resume or force):
        raise UserError(f"fold {fold} has an unfinished run in {fp.dir}; pass --resume to continue it or --force to start over")
    return None


def _claim(cfg: Config, fp: FoldPaths, fold: int, resume: bool, force: bool, fresh: bool) -> dict | None:
    """Inside the fold lock: the finished result if another process finished the fold while this
    one set up; else clear what --force replaces and, for a fresh run, write the config."""
    if (result := _check_can_start(fp, fold, resume, force)) is not None:
        return result
    if force:
        mark_unfinished(fp)
        for p in (fp.last, fp.best, fp.oof):
            p.unlink(missing_ok=True)
    if fresh:
        save_config(cfg)
    return None


def train_fold(cfg: Config, fold: int, *, resume: bool = False, force: bool = False, dry_run_only: bool = False,
               on_epoch: Callable[[int, float], None] | None = None, tracker: Tracker | None = None,
               allow_mixed: bool = False) -> dict:
    """Train one fold (or all data with fold=-1) and return its result (done.json's content).

    Args:
        cfg: the resolved config (optim.lr=find made a number: src.training.lr_finder.resolve_lr).
        fold: fold index to validate on, or -1 to train on everything for train.epochs.
        resume: continue from last.pt.
        force: retrain a finished fold (its done.json and checkpoints are removed first).
        dry_run_only: build data, model and freezing, run one forward pass, train nothing.
        on_epoch: called with (epoch, monitored value) after each validation (Optuna pruning).
        tracker: the W&B run the caller opened for this fold (it stays open); None = no tracking.
        allow_mixed: train even when the experiment's other folds were trained with other settings.
    """
    fp = fold_paths(cfg.out_dir, fold)
    rt = Runtime.from_cfg(cfg.runtime)
    if dry_run_only:
        if cfg.optim.lr == "find":
            print(f"optim.lr=find: a real run first sweeps {cfg.optim.find_steps} steps on fold 0 for the rate "
                  "(or takes the one the experiment recorded)")
        return dry_run(setup_fold(cfg, fold, rt, dry=True))
    what = f"fold {fold} of experiment {cfg.experiment.name}"
    check_not_locked(fp, what)  # its last.pt is another process's live run, not an interrupted one
    if (result := _check_can_start(fp, fold, resume, force)) is not None:
        return result
    # Data, model and resume state first: a mistake there writes nothing, not even a lock.
    s = setup_fold(cfg, fold, rt)
    cfg = s.cfg  # with the channel count and statistics the images imply (loaders.with_image_inputs)
    if not allow_mixed:
        check_same_settings(cfg, fold)
    optimization(s)
    meta = {"config": cfg.to_dict(), "classes": s.classes, "fold": fold, "processes": distributed.world_size(),
            **({"meta": s.meta} if s.meta is not None else {}),  # data.meta_cols: the fitted preprocessing
            "run_id": distributed.from_main(lambda: uuid.uuid4().hex[:12])}
    keeper = CheckpointKeeper(fp.best, fp.last, meta, monitor_name(cfg),
                              lambda new, best: is_better(monitor_name(cfg), new, best), cfg.train.early_stopping,
                              top_k=cfg.train.keep_top)
    start = keeper.resume(s, cfg.to_dict()) if resume and fp.last.is_file() and not force else 0
    if start:
        print(f"fold {fold}: resuming after epoch {start - 1} (best {monitor_name(cfg)} {keeper.best} "
              f"at epoch {keeper.best_epoch})")
        if keeper.should_stop:  # it had stopped early before the interruption: only finish it
            start = s.epochs
    elif resume and not force:
        print(f"fold {fold}: nothing to resume in {fp.dir}; starting fresh")
    distributed.main_first(lambda: fill_caches(s))  # rank 0 builds what is missing, the others find it
    with distributed.on_main(fold_lock(fp, what)):
        if (result := distributed.from_main(lambda: _claim(cfg, fp, fold, resume or start > 0, force, start == 0))) is not None:
            return result
        tracker = tracker or Tracker.off()
        for epoch in range(start, s.epochs):
            run_epoch(s, keeper, epoch, tracker, on_epoch)
            if keeper.should_stop:
                print(f"early stopping: {monitor_name(cfg)} has not improved for {keeper.bad_epochs} epochs")
                break
        return finish_fold(s, keeper, tracker)


# ---------------------------------------------------------------- several folds


def cv_report(cfg: Config, folds: list[int]) -> dict:
    """Concatenate the folds' OOF predictions, score them, write cv.json and print a table."""
    parts, rows, classes = [], [], None
    for k in folds:
        fp = fold_paths(cfg.out_dir, k)
        done = fold_record(fp)
        if classes is not None and done["classes"] != classes:
            raise UserError(f"fold {k} of {cfg.experiment.name} has another class list than fold {folds[0]}; retrain it")
        classes = done["classes"]
        parts.append(read_oof(fp.oof, classes, done.get("run_id")))
        rows.append({"fold": k, "best_epoch": done["best_epoch"],
                     **{m: done.get(m) for m in dict.fromkeys((*task_of(cfg).summary_metrics, cfg.metric.name))}})
    oof = pd.concat(parts, ignore_index=True)
    task = task_of(cfg, classes)
    overall = table_summary(oof, oof_probs(oof, classes), task, cfg.metric.name, cfg.data.aggregate)
    swa = swa_cv(cfg.out_dir, folds, task, cfg.metric.name, cfg.data.aggregate)
    table = pd.DataFrame(rows + [{"fold": "oof", "best_epoch": "", **overall}]
                         + ([{"fold": "oof swa", "best_epoch": "", **swa}] if swa else []))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    report = {"experiment": cfg.experiment.name, "metric": cfg.metric.name, "folds": rows, "oof": overall,
              "n_oof": len(oof), "n_answers": oof["answer"].nunique() if "answer" in oof else len(oof),
              **({"oof_swa": swa} if swa else {})}
    atomic_write_text(cfg.out_dir / "cv.json", json.dumps(report, indent=2))
    return report
