"""Averaged experiments: each fold's K best checkpoints (fold<k>/top/, train.keep_top) averaged,
or each fold's SWA model (train.swa), written as a new experiment that the ensemble can blend.

    outputs/<experiment>_top<K>/ or outputs/<experiment>_swa/
      fold<k>/best.pt oof.csv done.json     the averaged model, its OOF predictions, its record
      cv.json                               its OOF scores

Averaged top-K weights get their BatchNorm statistics recomputed over the fold's training images
and are validated on the fold's own validation images, so their OOF score is scored like any
fold's and printed beside the original's.
"""

from __future__ import annotations

import uuid

import pandas as pd

from src.core.config import Config, save_config
from src.core.runtime import Runtime
from src.core.utils import UserError
from src.evaluation.metrics import higher_is_better, monitor_name, table_summary
from src.runs.checkpoint import load_checkpoint, save_checkpoint
from src.runs.layout import file_sha1, fold_paths, oof_probs, read_oof, write_done, write_oof
from src.runs.members import Member, open_member
from src.training.engine import validate
from src.training.trainer import cv_report, setup_fold
from src.training.weight_averaging import average_state_dicts, recompute_bn, swa_paths


def top_checkpoints(m: Member, fold: int, k: int) -> list[dict]:
    """The fold's K best kept checkpoints (best first) of its finished run."""
    files = sorted(fold_paths(m.exp_dir, fold).dir.glob("top/epoch*.pt"))
    ckpts = [load_checkpoint(p) for p in files]
    ckpts = [c for c in ckpts if c.get("run_id") == m.records[fold].get("run_id")]
    if len(ckpts) < k:
        raise UserError(f"fold {fold} of {m.name} kept {len(ckpts)} checkpoints of its run in top/, fewer than "
                        f"--top {k}; train with train.keep_top={k} (or more), or lower --top")
    ckpts.sort(key=lambda c: c["metric"], reverse=higher_is_better(m.cfg))
    return ckpts[:k]


def _averaged_fold(m: Member, fold: int, cfg: Config, top: int | None, rt: Runtime) -> tuple[dict, dict]:
    """(model state, {"epochs", "probs", "fold state"}) of one fold's averaged model, validated."""
    s = setup_fold(cfg, fold, rt)
    if top is not None:
        ckpts = top_checkpoints(m, fold, top)
        s.model.load_state_dict(average_state_dicts([c["model"] for c in ckpts]))
        recompute_bn(s.model, s.train_loader, rt, s.batches, s.norm)
        epochs = [int(c["epoch"]) for c in ckpts]
        probs, _ = validate(s.model, s.val_loader, rt, s.task.targets(s.val_df["label"]), cfg.metric.name, s.norm,
                            s.task)
    else:
        ckpt_path, oof_path = swa_paths(fold_paths(m.exp_dir, fold).dir)
        ckpt = load_checkpoint(ckpt_path, fix="train the fold with train.swa=true")
        if ckpt.get("run_id") != m.records[fold].get("run_id") or not oof_path.is_file():
            raise UserError(f"fold {fold} of {m.name} has no SWA model of its finished run; train it with train.swa=true")
        s.model.load_state_dict(ckpt["model"])
        epochs = [int(ckpt["epoch"])]
        oof = read_oof(oof_path, m.classes)
        probs = oof_probs(oof.set_index("id").loc[s.val_df["id"]].reset_index(), m.classes)
    return s.model.state_dict(), {"epochs": epochs, "probs": probs, "state": s}


def average_experiment(cfg: Config, name: str, top: int | None = None, swa: bool = False) -> dict:
    """Write outputs/<name>_top<K> (or _swa) from experiment `name`'s folds; return its CV report.

    Args:
        cfg: config naming the competition (data) and the outputs folder.
        name: the experiment whose folds are averaged.
        top: average each fold's `top` best kept checkpoints; or swa=True: take each fold's SWA model.
    """
    if (top is None) == (not swa):
        raise UserError("give --top K or --swa (one of them)")
    m = open_member(name, cfg.experiment.output_dir, "error", cfg.data.dir,
                    needs_every_fold="the averaged experiment is blended like any other and needs every fold")
    new = f"{name}_top{top}" if top is not None else f"{name}_swa"
    rt = Runtime.from_cfg(cfg.runtime)
    rows = []
    for k in m.folds:
        fold_cfg = m.configs[k].model_copy(update={"experiment": m.configs[k].experiment.model_copy(update={"name": new})})
        state, info = _averaged_fold(m, k, fold_cfg, top, rt)
        s, run_id = info["state"], uuid.uuid4().hex[:12]
        fp = fold_paths(fold_cfg.out_dir, k)
        fp.done.unlink(missing_ok=True)
        meta = {"config": fold_cfg.to_dict(), "classes": m.classes, "fold": k, "run_id": run_id,
                **({"meta": s.meta} if s.meta is not None else {})}  # data.meta_cols: the fold's fitted preprocessing
        save_checkpoint(fp.best, {**meta, "model": state, "epoch": max(info["epochs"]), "averaged_epochs": info["epochs"]})
        write_oof(fp.oof, s.val_df["id"], k, s.val_df["label"], s.val_df.get("target"), info["probs"], m.classes,
                  run_id, max(info["epochs"]), s.val_df.get("answer"))
        scores = table_summary(s.val_df, info["probs"], s.task, fold_cfg.metric.name, fold_cfg.data.aggregate)
        record = {"fold": k, "best_epoch": max(info["epochs"]), "averaged_epochs": info["epochs"], "averaged_from": name,
                  "monitor": monitor_name(fold_cfg), "best": scores.get(monitor_name(fold_cfg)), **scores,
                  "classes": m.classes, "config": fold_cfg.to_dict(), "run_id": run_id, "best_sha1": file_sha1(fp.best),
                  **({"meta_cols": s.meta["cols"]} if s.meta is not None else {})}
        write_done(fp, record)
        rows.append({"fold": k, "epochs": "+".join(map(str, info["epochs"])),
                     f"{name}": m.records[k].get(fold_cfg.metric.name), new: scores[fold_cfg.metric.name]})
    save_config(fold_cfg)
    print(f"{new}: each fold's {'top ' + str(top) + ' checkpoints averaged' if top else 'SWA model'} "
          f"against {name}'s best.pt ({cfg.metric.name}):")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    report = cv_report(fold_cfg, m.folds)
    print(f"OOF {cfg.metric.name} over folds {m.folds}: {name} {m.oof_scores()[cfg.metric.name]:.4f}, "
          f"{new} {report['oof'][cfg.metric.name]:.4f}")
    return report
