"""Stratified K-fold training of a (partially frozen) timm model.

    python -m src.train --fold 0                       # the ResNeXt101 recipe, fold 0
    python -m src.train --config configs/demo.yaml --fold all
    python -m src.train --fold -1 train.epochs=8       # all training data, no validation
    python -m src.train --fold 0 --resume              # continue an interrupted fold
    python -m src.train --fold 0 --dry-run             # build everything, one forward pass

Writes outputs/<experiment>/fold<k>/: best.pt, last.pt, oof.csv, history.csv, curves.png,
confusion_matrix.png, done.json; after --fold all also outputs/<experiment>/cv.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from timm.data import Mixup
from timm.utils import ModelEmaV3
from tqdm import tqdm

from src.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from src.config import Config, add_config_args, load_config, save_config
from src.data import (
    EpochSampler,
    ImageDataset,
    build_transform,
    drop_bad_images,
    load_train_table,
    make_loader,
    resolve_norm,
)
from src.folds import folds_path, load_or_create_folds
from src.losses import build_loss
from src.metrics import LOWER_IS_BETTER, is_better, softmax, summary
from src.model import build_model, freeze, param_counts, param_groups, set_train_mode, unfreeze
from src.optim import build_optimizer, build_scheduler
from src.plots import plot_confusion, plot_curves
from src.tracking import Tracker
from src.utils import UserError, atomic_save, atomic_write_text, run_cli, seed_everything


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


# Settings that do not change what is computed; anything else must match to resume.
RESUME_MAY_CHANGE = ("loader.num_workers", "loader.pin_memory", "loader.persistent_workers", "wandb.",
                     "data.dir", "data.check_images", "experiment.output_dir", "ensemble.", "train.device")


def derive_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([abs(int(p)) for p in parts]).generate_state(1)[0])


def pick_device(pref: str) -> torch.device:
    """auto: CUDA, then Apple MPS, then CPU."""
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    if pref == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device=cuda but no CUDA device is visible; set train.device=auto or cpu")
    if pref == "mps" and not has_mps:
        raise UserError("train.device=mps but Apple MPS is not available; set train.device=auto or cpu")
    return torch.device(pref)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: only on CUDA; auto picks bf16 where supported, else fp16."""
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def fold_dir(cfg: Config, fold: int) -> Path:
    return cfg.out_dir / f"fold{fold}"


def prob_columns(classes: list[str]) -> list[str]:
    return [f"prob_{c}" for c in classes]


def read_oof(path: Path) -> pd.DataFrame:
    """An oof.csv with ids and labels kept as written (a label 'None' or 'NA' stays a string)."""
    return pd.read_csv(path, dtype={"id": str, "label": str}, keep_default_na=False)


@torch.no_grad()
def predict(model: torch.nn.Module, loader, device: torch.device, dtype: torch.dtype | None,
            channels_last: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(logits N x C as float32 numpy, second item of each batch) over a loader, in order."""
    model.eval()
    outs, extra = [], []
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, dtype):
            outs.append(model(x).float().cpu())
        extra.append(y)
    return torch.cat(outs).numpy(), torch.cat(extra).numpy()


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _fold_tables(cfg: Config, fold: int) -> tuple[pd.DataFrame, pd.DataFrame | None, list[str]]:
    if fold != -1 and not 0 <= fold < cfg.data.n_folds:
        raise UserError(f"--fold {fold} is out of range; use 0..{cfg.data.n_folds - 1}, all, or -1")
    table = load_train_table(cfg.data)
    # Images are checked before the split is written, so bad data writes nothing; skipped images
    # stay in the split (it must not depend on which files were readable today).
    cache = folds_path(cfg).with_name(f"{Path(cfg.data.dir).resolve().name}_images_checked.json")
    readable = set(drop_bad_images(table, cfg, cache)["id"])
    df, classes, _ = load_or_create_folds(cfg, table=table)
    df = df[df["id"].isin(readable)].reset_index(drop=True)
    if fold == -1:
        return df, None, classes
    return df[df["fold"] != fold].reset_index(drop=True), df[df["fold"] == fold].reset_index(drop=True), classes


def _config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys


def train_fold(
    cfg: Config,
    fold: int,
    *,
    resume: bool = False,
    force: bool = False,
    dry_run: bool = False,
    on_epoch: Callable[[int, float], None] | None = None,
) -> dict:
    """Train one fold (or all data with fold=-1) and return its result (done.json's content).

    Args:
        cfg: the resolved config.
        fold: fold index to validate on, or -1 to train on everything for train.epochs.
        resume: continue from last.pt.
        force: retrain a finished fold.
        dry_run: build data, model and freezing, run one forward pass, train nothing.
        on_epoch: called with (epoch, monitored value) after each validation (Optuna pruning).
    """
    out = fold_dir(cfg, fold)
    done_path, last_path, best_path = out / "done.json", out / "last.pt", out / "best.pt"
    if not dry_run:
        if done_path.is_file() and not force:
            print(f"fold {fold}: finished earlier ({done_path}); pass --force to train it again")
            return json.loads(done_path.read_text())
        if last_path.is_file() and not (resume or force):
            raise UserError(f"fold {fold} has an unfinished run in {out}; pass --resume to continue it or --force to start over")

    # 1) data
    train_df, val_df, classes = _fold_tables(cfg, fold)
    n_classes = len(classes)
    device = pick_device(cfg.train.device)
    dtype = amp_dtype(cfg.train.amp, device)
    channels_last = cfg.train.channels_last and device.type == "cuda"
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.train.deterministic

    # 2) model and freezing
    fold_seed = derive_seed(cfg.experiment.seed, fold + 1)
    seed_everything(fold_seed)
    model = build_model(cfg.model, n_classes, img_size=cfg.aug.img_size)
    frozen = freeze(model, cfg.model.freeze_before, cfg.model.freeze_stages)
    counts = param_counts(model)
    mean, std = resolve_norm(cfg.aug, model.pretrained_cfg)
    model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    print(
        f"fold {fold}: {len(train_df)} train / {len(val_df) if val_df is not None else 0} valid images, "
        f"{n_classes} classes, {cfg.model.name} on {device}"
        + (f" ({str(dtype).removeprefix('torch.')} autocast)" if dtype else "")
        + f"; parameters {counts['total']:,} total, {counts['trainable']:,} trainable, {counts['frozen']:,} frozen"
    )

    train_ds = ImageDataset(train_df["path"], train_df["target"], build_transform(cfg.aug, True, mean, std))
    sampler = EpochSampler(len(train_ds), seed=fold_seed)
    train_loader = make_loader(train_ds, cfg.loader, device=device.type, sampler=sampler, drop_last=True)
    val_loader = None
    if val_df is not None:
        val_ds = ImageDataset(val_df["path"], val_df["target"], build_transform(cfg.aug, False, mean, std))
        val_loader = make_loader(val_ds, cfg.loader, device=device.type, batch_size=cfg.loader.batch_size * 2)

    if dry_run:
        x, _ = next(iter(make_loader(train_ds, cfg.loader, device=device.type, batch_size=min(4, len(train_ds)))))
        model.eval()
        with torch.no_grad(), autocast(device, dtype):
            logits = model(x.to(device))
        print(f"dry run: input {tuple(x.shape)} -> logits {tuple(logits.shape)}; nothing trained, no checkpoint written")
        return {"dry_run": True, "params": counts, "n_train": len(train_df), "n_valid": 0 if val_df is None else len(val_df)}

    # 3) loss, optimizer, schedule, EMA, mixup
    mixing = cfg.train.mixup > 0 or cfg.train.cutmix > 0
    targets = train_df["target"].to_numpy()
    criterion = build_loss(cfg.loss, n_classes, targets, smoothing=0.0 if mixing else None).to(device)
    mixup = (
        Mixup(mixup_alpha=cfg.train.mixup, cutmix_alpha=cfg.train.cutmix, prob=cfg.train.mix_prob,
              label_smoothing=cfg.loss.smoothing, num_classes=n_classes)
        if mixing else None
    )
    groups = param_groups(model, cfg.optim.weight_decay, frozen, cfg.model.backbone_lr_mult,
                          include_frozen=cfg.model.unfreeze_epoch is not None)
    optimizer = build_optimizer(cfg.optim, groups)
    batches = len(train_loader) if cfg.train.limit_batches is None else min(len(train_loader), cfg.train.limit_batches)
    updates_per_epoch = max(1, math.ceil(batches / cfg.train.accum_steps))
    higher = cfg.train.monitor == "metric" and cfg.metric.name not in LOWER_IS_BETTER
    scheduler = build_scheduler(cfg.sched, optimizer, cfg.optim.lr, cfg.train.epochs, updates_per_epoch, higher)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    # Decay warmup (timm) lets the average follow the weights early on; short runs need it.
    ema = ModelEmaV3(model, decay=cfg.train.ema_decay, use_warmup=True) if cfg.train.ema else None
    monitor_name = cfg.metric.name if cfg.train.monitor == "metric" else "loss"

    # 4) resume
    start_epoch, num_updates, history = 0, 0, []
    best, best_epoch, bad_epochs = None, -1, 0
    if resume and last_path.is_file():
        ckpt = load_checkpoint(last_path)
        diff = [k for k in _config_diff(ckpt["config"], cfg.to_dict()) if not k.startswith(RESUME_MAY_CHANGE)]
        if diff:
            raise UserError(f"the config differs from the interrupted run in {diff[:6]}; resume with the "
                            "settings it was started with, or pass --force to start over")
        st = ckpt["train_state"]
        try:
            model.load_state_dict(st["model"])
        except RuntimeError as e:
            raise UserError(f"{last_path} does not fit the configured model ({str(e).splitlines()[0][:120]}); "
                            "resume with the config it was trained with, or pass --force") from None
        optimizer.load_state_dict(st["optimizer"])
        scheduler.load_state_dict(st["scheduler"])
        scaler.load_state_dict(st["scaler"])
        if ema is not None and st.get("ema") is not None:
            ema.load_state_dict(st["ema"])
        set_rng_state(st["rng"])
        start_epoch, num_updates = ckpt["epoch"] + 1, st["num_updates"]
        history, best, best_epoch, bad_epochs = ckpt["history"], ckpt["best_metric"], ckpt["best_epoch"], st["bad_epochs"]
        print(f"fold {fold}: resuming after epoch {ckpt['epoch']} (best {monitor_name} {best} at epoch {best_epoch})")
    elif resume:
        print(f"fold {fold}: nothing to resume in {out}; starting fresh")
    if start_epoch == 0:
        save_config(cfg)

    tracker = Tracker(cfg, name=f"{cfg.experiment.name}-fold{fold}", out_dir=cfg.out_dir)
    meta = {"config": cfg.to_dict(), "classes": classes, "fold": fold}

    def state(epoch: int, finished: bool) -> dict:
        return {
            **meta,
            "model": (ema.module if ema is not None else model).state_dict(),
            "epoch": epoch,
            "metric": history[-1].get(f"val_{monitor_name}") if history else None,
            "best_metric": best,
            "best_epoch": best_epoch,
            "history": history,
            "finished": finished,
            "train_state": {
                "model": model.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": rng_state(),
                "num_updates": num_updates,
                "bad_epochs": bad_epochs,
            },
        }

    # 5) epochs
    try:
        for epoch in range(start_epoch, cfg.train.epochs):
            t0 = time.time()
            seed_everything(derive_seed(fold_seed, epoch))
            sampler.set_epoch(epoch)
            if cfg.model.unfreeze_epoch is not None and epoch >= cfg.model.unfreeze_epoch and frozen.any:
                frozen = unfreeze(model, frozen)
                print(f"epoch {epoch}: unfroze all parameters (backbone lr x{cfg.model.backbone_lr_mult})")
            set_train_mode(model, frozen)
            loss_sum, correct, seen = 0.0, 0, 0
            bar = tqdm(train_loader, total=batches, desc=f"fold {fold} epoch {epoch}", leave=False, disable=None)
            optimizer.zero_grad(set_to_none=True)
            for step, (x, y) in enumerate(bar):
                if step >= batches:
                    break
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                target = y
                if mixup is not None:
                    x, target = mixup(x, y)
                with autocast(device, dtype):
                    logits = model(x)
                    loss = criterion(logits, target)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"the training loss became {loss.item()} at epoch {epoch}, step {step}; lower optim.lr, "
                        "set train.clip_grad, or set train.amp=off"
                    )
                scaler.scale(loss / cfg.train.accum_steps).backward()
                if (step + 1) % cfg.train.accum_steps == 0 or step + 1 == batches:
                    if cfg.train.clip_grad is not None:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_grad)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    num_updates += 1
                    scheduler.step_update(num_updates=num_updates)
                    if ema is not None:
                        ema.update(model, step=num_updates)
                loss_sum += loss.item() * len(y)
                correct += (logits.argmax(1) == y).sum().item()
                seen += len(y)
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")
            row = {"epoch": epoch, "lr": max(g["lr"] for g in optimizer.param_groups),
                   "train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1)}

            # 6) validation
            improved = val_loader is None
            if val_loader is not None:
                eval_model = ema.module if ema is not None else model
                logits, y_val = predict(eval_model, val_loader, device, dtype, channels_last)
                probs = softmax(logits)
                val_loss = float(torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y_val)))
                scores = summary(y_val, probs, cfg.metric.name)
                row.update({"val_loss": val_loss, **{f"val_{k}": v for k, v in scores.items()}})
                value = scores[cfg.metric.name] if cfg.train.monitor == "metric" else val_loss
                improved = is_better(monitor_name, value, best)
                if improved:
                    best, best_epoch, bad_epochs = value, epoch, 0
                    oof = pd.DataFrame({"id": val_df["id"], "fold": fold, "label": val_df["label"], "target": y_val})
                    oof[prob_columns(classes)] = probs
                    atomic_save(out / "oof.csv", lambda tmp, oof=oof: oof.to_csv(tmp, index=False))
                else:
                    bad_epochs += 1
            else:
                best, best_epoch = None, epoch
            row["time_s"] = round(time.time() - t0, 2)
            history.append(row)
            scheduler.step(epoch + 1, row.get("val_loss") if cfg.train.monitor == "loss" else row.get(f"val_{cfg.metric.name}"))
            if improved:
                save_checkpoint(best_path, state(epoch, False))
            stop = cfg.train.early_stopping is not None and bad_epochs >= cfg.train.early_stopping
            save_checkpoint(last_path, state(epoch, False))
            tracker.log({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
                  + ("  *" if improved and val_loader is not None else ""))
            if on_epoch is not None and val_loader is not None:
                on_epoch(epoch, row.get(f"val_{monitor_name}"))
            if stop:
                print(f"early stopping: {monitor_name} has not improved for {bad_epochs} epochs")
                break
    except BaseException:
        tracker.finish()
        raise

    # 7) final artifacts
    result = {"fold": fold, "best_epoch": best_epoch, "epochs_run": len(history), "monitor": monitor_name,
              "best": best, "params": counts}
    hist = pd.DataFrame(history)
    atomic_save(out / "history.csv", lambda tmp: hist.to_csv(tmp, index=False))
    plot_curves(hist, cfg.metric.name, out / "curves.png")
    final = state(history[-1]["epoch"], True) if history else None
    if final is not None:
        save_checkpoint(last_path, final)
    if val_df is not None and (out / "oof.csv").is_file():
        oof = read_oof(out / "oof.csv")
        probs = oof[prob_columns(classes)].to_numpy()
        result.update(summary(oof["target"].to_numpy(), probs, cfg.metric.name))
        plot_confusion(oof["target"].to_numpy(), probs.argmax(1), classes, out / "confusion_matrix.png")
        tracker.confusion(oof["target"].to_numpy(), probs.argmax(1), classes)
        tracker.summary({"best_" + monitor_name: best, "best_epoch": best_epoch,
                         **{f"best_{k}": v for k, v in result.items() if k in ("accuracy", "f1_macro", cfg.metric.name)}})
    else:
        save_checkpoint(best_path, final)
    tracker.finish()
    atomic_write_text(done_path, json.dumps(result, indent=2))
    return result


def cv_report(cfg: Config, folds: list[int]) -> dict:
    """Concatenate the folds' OOF predictions, score them, write cv.json and print a table."""
    classes = None
    parts, rows = [], []
    for k in folds:
        path = fold_dir(cfg, k) / "oof.csv"
        done = json.loads((fold_dir(cfg, k) / "done.json").read_text())
        oof = read_oof(path)
        classes = classes or [c.removeprefix("prob_") for c in oof.columns if c.startswith("prob_")]
        parts.append(oof)
        rows.append({"fold": k, "best_epoch": done["best_epoch"],
                     **{m: done.get(m) for m in ("accuracy", "f1_macro", cfg.metric.name)}})
    oof = pd.concat(parts, ignore_index=True)
    overall = summary(oof["target"].to_numpy(), oof[prob_columns(classes)].to_numpy(), cfg.metric.name)
    table = pd.DataFrame(rows + [{"fold": "oof", "best_epoch": "", **overall}])
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    report = {"experiment": cfg.experiment.name, "metric": cfg.metric.name, "folds": rows, "oof": overall,
              "n_oof": len(oof)}
    atomic_write_text(cfg.out_dir / "cv.json", json.dumps(report, indent=2))
    return report


def parse_fold(text: str) -> int | str:
    if text == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fold takes a fold index, all or -1, not '{text}'") from None


def run(cfg: Config, fold: int | str, *, resume: bool = False, force: bool = False, dry_run: bool = False) -> dict:
    """Train one fold, -1 (all data) or 'all' folds (then write the CV report)."""
    if fold != "all":
        return train_fold(cfg, int(fold), resume=resume, force=force, dry_run=dry_run)
    t0 = time.time()
    results = [train_fold(cfg, k, resume=resume, force=force, dry_run=dry_run) for k in range(cfg.data.n_folds)]
    if dry_run:
        return {"folds": results}
    report = cv_report(cfg, list(range(cfg.data.n_folds)))
    print(f"{cfg.data.n_folds} folds in {time.time() - t0:.0f} s; CV report in {cfg.out_dir / 'cv.json'}")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fold", type=parse_fold, required=True, help="fold index, all, or -1 (all data)")
    parser.add_argument("--resume", action="store_true", help="continue from last.pt")
    parser.add_argument("--force", action="store_true", help="retrain folds that already finished")
    parser.add_argument("--dry-run", action="store_true", help="build everything, one forward pass, train nothing")
    add_config_args(parser)
    args = parser.parse_intermixed_args(argv)
    cfg = load_config(args.config, args.overrides)
    run(cfg, args.fold, resume=args.resume, force=args.force, dry_run=args.dry_run)

if __name__ == "__main__":
    run_cli(main)
