"""Soft-voting ensemble of fold models and experiments, with test-time augmentation.

    python -m src.ensemble --config configs/demo.yaml --tta
    python -m src.ensemble --experiments exp_a exp_b --tta hflip vflip --weights auto
    python -m src.ensemble --tta d4 --voting geometric --out submissions/final.csv

Each member is an experiment under outputs/<name>/ with fold<k>/best.pt; the config stored in
each checkpoint rebuilds its model and transforms. Test images are decoded once per member; the
views are made from the decoded batch. Before writing, the OOF score of every member and of the
blend is printed without and with TTA. Writes submissions/<name>.csv and <name>_probs.csv.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

from src.checkpoint import load_checkpoint
from src.config import Config, add_config_args, config_from_dict, load_config
from src.data import ImageDataset, build_transform, load_test_table, make_loader, resolve_norm
from src.folds import load_or_create_folds
from src.metrics import LOWER_IS_BETTER, compute_metric, softmax
from src.model import build_model
from src.train import amp_dtype, autocast, pick_device, prob_columns, read_oof
from src.utils import UserError, atomic_save, run_cli

# ---------------------------------------------------------------- TTA views

_D4: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x,
    "hflip": lambda x: x.flip(3),
    "vflip": lambda x: x.flip(2),
    "rot90": lambda x: torch.rot90(x, 1, (2, 3)),
    "rot180": lambda x: torch.rot90(x, 2, (2, 3)),
    "rot270": lambda x: torch.rot90(x, 3, (2, 3)),
    "transpose": lambda x: x.transpose(2, 3),
    "antitranspose": lambda x: torch.rot90(x, 2, (2, 3)).transpose(2, 3),
}
_SCALE = re.compile(r"^(scale|zoom)(\d+(?:\.\d+)?)$")


def parse_views(names: list[str]) -> list[str]:
    """Expand `d4` and check every view name."""
    out: list[str] = []
    for n in names:
        if n == "d4":
            out += list(_D4)
        elif n in _D4 or _SCALE.match(n):
            out.append(n)
        else:
            raise UserError(f"unknown TTA view '{n}'; use {', '.join(_D4)}, d4, scale<f> or zoom<f> (e.g. scale1.15, zoom0.9)")
    return list(dict.fromkeys(out))


def apply_view(name: str, x: torch.Tensor) -> torch.Tensor:
    """One view of a normalized batch (N, C, H, W).

    scale<f> feeds the model a resized input, round(f * H) pixels (multi-scale TTA for CNNs);
    zoom<f> magnifies the content by f at the same input size (center crop, or edge padding
    when f < 1), like the training zoom.
    """
    m = _SCALE.match(name)
    if not m:
        return _D4[name](x)
    f = float(m.group(2))
    h, w = x.shape[2], x.shape[3]
    size = (max(1, round(h * f)), max(1, round(w * f)))
    y = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=f < 1)
    if m.group(1) == "scale":
        return y
    if f >= 1:
        top, left = (size[0] - h) // 2, (size[1] - w) // 2
        return y[:, :, top:top + h, left:left + w]
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    return F.pad(y, (left, w - size[1] - left, top, h - size[0] - top), mode="replicate")


# ---------------------------------------------------------------- members


@dataclass
class Member:
    """One experiment's fold models, all rebuilt from the configs stored in their checkpoints."""

    name: str
    cfg: Config
    classes: list[str]
    folds: list[int]
    models: list[torch.nn.Module] = field(repr=False)
    mean: tuple = ()
    std: tuple = ()
    stored: Config | None = field(default=None, repr=False)  # the config as trained, paths included


def load_member(name: str, output_dir: str, missing_folds: str, data_dir: str | None = None) -> Member:
    """Load outputs/<name>/fold<k>/best.pt for every fold of the experiment.

    The stored config rebuilds the model and transforms; its output and data folders are
    replaced by the caller's, so copied outputs (a Kaggle kernel) work where they now are.
    """
    root = Path(output_dir) / name
    if not root.is_dir():
        raise UserError(f"experiment folder {root} does not exist; train it first or fix --experiments")
    found = sorted(int(p.parent.name[4:]) for p in root.glob("fold*/best.pt") if p.parent.name[4:].isdigit())
    if not found:
        raise UserError(f"{root} has no fold<k>/best.pt; train the folds first (python -m src.train --fold all)")
    ckpts = {k: load_checkpoint(root / f"fold{k}" / "best.pt") for k in found}
    stored = config_from_dict(ckpts[found[0]]["config"], str(root / f"fold{found[0]}" / "best.pt"))
    cfg = stored.model_copy(update={
        "experiment": stored.experiment.model_copy(update={"output_dir": output_dir, "name": name}),
        "data": stored.data.model_copy(update={"dir": data_dir or stored.data.dir}),
    })
    expected = list(range(cfg.data.n_folds))
    missing = [k for k in expected if k not in ckpts]
    if missing:
        msg = f"experiment {name} lacks best.pt for folds {missing}"
        if missing_folds == "error":
            raise UserError(f"{msg}; train them, or set ensemble.missing_folds=warn to blend the folds present")
        print(f"warning: {msg}; blending folds {[k for k in expected if k in ckpts]}")
    folds = [k for k in expected if k in ckpts]
    classes = ckpts[folds[0]]["classes"]
    models = []
    for k in folds:
        ck = ckpts[k]
        if ck["classes"] != classes:
            raise UserError(f"{name} fold {k} has a different class list from fold {folds[0]}; retrain it")
        kcfg = config_from_dict(ck["config"], f"{root}/fold{k}/best.pt")
        model = build_model(kcfg.model, len(classes), pretrained=False, img_size=kcfg.aug.img_size)
        try:
            model.load_state_dict(ck["model"])
        except RuntimeError as e:
            raise UserError(f"{root}/fold{k}/best.pt does not fit its stored config ({kcfg.model.name}, "
                            f"{len(classes)} classes): {str(e).splitlines()[0][:150]}; retrain that fold") from None
        models.append(model.eval())
    mean, std = resolve_norm(cfg.aug, models[0].pretrained_cfg)
    return Member(name, cfg, classes, folds, models, mean, std, stored)


# ---------------------------------------------------------------- prediction


@torch.no_grad()
def predict_views(models: list[torch.nn.Module], loader, views: list[str], device: torch.device,
                  dtype: torch.dtype | None = None) -> np.ndarray:
    """Logits of shape (models, views, N, C): every batch is decoded once, then viewed and predicted."""
    out: list[list[list[torch.Tensor]]] = [[[] for _ in views] for _ in models]
    for m in models:
        m.to(device).eval()
    for x, _ in loader:
        x = x.to(device, non_blocking=True)
        for vi, v in enumerate(views):
            xv = apply_view(v, x)
            for mi, m in enumerate(models):
                with autocast(device, dtype):
                    out[mi][vi].append(m(xv).float().cpu())
    return np.stack([np.stack([torch.cat(v).numpy() for v in per_model]) for per_model in out])


def combine(logits: np.ndarray, voting: str, weights: np.ndarray | None = None) -> np.ndarray:
    """Blend logits (K, N, C) from K predictors into probabilities (N, C).

    soft: weighted mean of probabilities; geometric: of log-probabilities, renormalized;
    logits: softmax of the weighted mean logit; hard: weighted share of argmax votes.
    """
    k = logits.shape[0]
    w = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)
    w = w[:, None, None]
    if voting == "soft":
        return (w * softmax(logits)).sum(0)
    if voting == "geometric":
        return softmax((w * np.log(np.clip(softmax(logits), 1e-12, 1.0))).sum(0))
    if voting == "logits":
        return softmax((w * logits).sum(0))
    if voting == "hard":
        votes = np.eye(logits.shape[2])[logits.argmax(2)]  # (K, N, C)
        return (w * votes).sum(0)
    raise ValueError(voting)


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(np.clip(p, 1e-12, 1.0))


def fit_weights(oof_probs: list[np.ndarray], y: np.ndarray, metric: str, voting: str) -> np.ndarray:
    """Member weights that maximize the metric on OOF predictions (never worse than equal).

    Nelder-Mead over softmax-parametrized weights, started from equal weights; equal weights and
    each single member are candidates too, so the result is at least as good as equal on OOF.
    """
    k = len(oof_probs)
    stack = np.stack([_logit(p) for p in oof_probs])
    sign = 1.0 if metric in LOWER_IS_BETTER else -1.0

    def loss(w: np.ndarray) -> float:
        return sign * compute_metric(metric, y, combine(stack, voting, w))

    candidates = [np.full(k, 1.0 / k)] + [np.eye(k)[i] for i in range(k)]
    if k > 1:
        res = minimize(lambda t: loss(softmax(t)), np.zeros(k), method="Nelder-Mead",
                       options={"maxiter": 200 * k, "xatol": 1e-4, "fatol": 1e-7})
        candidates.append(softmax(res.x))
    return min(candidates, key=loss)


# ---------------------------------------------------------------- OOF report


def member_oof(member: Member, views: list[str] | None, device, dtype, voting: str = "soft") -> tuple[pd.DataFrame, np.ndarray]:
    """(table of id and target, OOF logits N x C): each fold model predicts its own validation images.

    Without views the stored oof.csv files are used; with views the folds' images are predicted again.
    """
    cfg = member.cfg
    root = Path(cfg.experiment.output_dir) / member.name
    parts = [read_oof(root / f"fold{k}" / "oof.csv") for k in member.folds]
    oof = pd.concat(parts, ignore_index=True)
    if not views:
        return oof[["id", "target"]], _logit(oof[prob_columns(member.classes)].to_numpy())
    df, _, _ = load_or_create_folds(cfg, create=False)
    df = df[df["id"].isin(set(oof["id"]))]  # images training skipped (data.bad_images=skip) stay out
    tf = build_transform(cfg.aug, False, member.mean, member.std)
    ids, targets, logits = [], [], []
    for k, model in zip(member.folds, member.models):
        val = df[df["fold"] == k].reset_index(drop=True)
        loader = make_loader(ImageDataset(val["path"], val["target"], tf), cfg.loader, device=device.type)
        lg = predict_views([model], loader, views, device, dtype)[0]  # (V, n, C)
        logits.append(_logit(combine(lg, voting)))
        ids += list(val["id"])
        targets += list(val["target"])
    return pd.DataFrame({"id": ids, "target": targets}), np.concatenate(logits)


# ---------------------------------------------------------------- submission


def resolve_format(fmt: str, sample: pd.DataFrame, id_col: str, classes: list[str], metric: str = "accuracy") -> str:
    """auto: one column per class -> proba; two classes, one column and a probability metric
    (roc_auc, log_loss) or fractional placeholders -> binary; one column -> label."""
    cols = [c for c in sample.columns if c != id_col]
    if fmt != "auto":
        return fmt
    if set(cols) == set(classes):
        return "proba"
    if len(cols) != 1:
        raise UserError(f"cannot tell the submission format from columns {cols}; set ensemble.format")
    values = pd.to_numeric(sample[cols[0]], errors="coerce")
    fractional = values.notna().all() and ((values % 1) != 0).any()
    if len(classes) == 2 and (metric in ("roc_auc", "log_loss") or fractional):
        return "binary"
    return "label"


def build_submission(sample: pd.DataFrame, id_col: str, probs: np.ndarray, classes: list[str], fmt: str) -> pd.DataFrame:
    """Fill sample_submission's columns, in its id order, from test probabilities (N, C)."""
    cols = [c for c in sample.columns if c != id_col]
    sub = sample.copy()
    if fmt == "proba":
        missing = [c for c in cols if c not in classes]
        if missing:
            raise UserError(f"sample_submission columns {missing[:5]} are not classes; set ensemble.format")
        for c in cols:
            sub[c] = probs[:, classes.index(c)]
    elif fmt == "binary":
        if len(classes) != 2 or len(cols) != 1:
            raise UserError(f"ensemble.format=binary needs 2 classes and one column; have {len(classes)} classes, columns {cols}")
        sub[cols[0]] = probs[:, 1]
    elif fmt in ("label", "index"):
        if len(cols) != 1:
            raise UserError(f"ensemble.format={fmt} needs one prediction column; sample_submission has {cols}")
        pred = probs.argmax(1)
        sub[cols[0]] = [classes[i] for i in pred] if fmt == "label" else pred
    return sub


def check_submission(sub: pd.DataFrame, sample: pd.DataFrame, id_col: str, classes: list[str], fmt: str) -> None:
    """Row count, ids and their order, columns, no NaN, labels in the class set."""
    if len(sub) != len(sample) or list(sub.columns) != list(sample.columns):
        raise UserError("the submission's shape or columns differ from sample_submission.csv")
    if not (sub[id_col].astype(str).to_numpy() == sample[id_col].astype(str).to_numpy()).all():
        raise UserError("the submission's ids are not sample_submission.csv's ids in its order")
    if sub.isna().any().any():
        raise UserError("the submission holds NaN values; a member predicted non-finite numbers")
    if fmt == "label":
        col = [c for c in sub.columns if c != id_col][0]
        bad = set(sub[col].astype(str)) - set(classes)
        if bad:
            raise UserError(f"predicted labels {sorted(bad)[:5]} are not in the class set")


# ---------------------------------------------------------------- the command


def run(cfg: Config, experiments: list[str] | None = None, tta: list[str] | None = None,
        weights: str | list[float] | None = None, voting: str | None = None, out: str | Path | None = None,
        fmt: str | None = None) -> Path:
    """Blend members' folds (x TTA views) into a submission CSV and return its path.

    Args:
        cfg: config naming the competition (data) and defaults (ensemble section).
        experiments: member experiment names (default: cfg's experiment).
        tta: view names ([] or None = identity only).
        weights: 'equal', 'auto' or one weight per member (default: ensemble.weights).
        voting: soft | geometric | logits | hard (default: ensemble.voting).
        out: submission path (default: submissions/<members>[_tta].csv).
        fmt: submission format (default: ensemble.format).
    """
    e = cfg.ensemble
    names = experiments or [str(cfg.experiment.name)]
    views = parse_views(tta or ["identity"])
    weights = e.weights if weights is None else weights
    voting = voting or e.voting
    device = pick_device(cfg.train.device)
    dtype = amp_dtype(cfg.train.amp, device)
    test, sample = load_test_table(cfg.data)

    members = [load_member(n, cfg.experiment.output_dir, e.missing_folds, cfg.data.dir) for n in names]
    classes = members[0].classes
    for m in members[1:]:
        if m.classes != classes:
            raise UserError(f"members {members[0].name} and {m.name} have different class lists; blend experiments of one competition")
    for m in members:
        try:
            m_test, _ = load_test_table(m.stored.data)
        except UserError:  # the member's own data folder is not here (copied outputs): nothing to compare
            m_test = test
        if list(m_test["id"]) != list(test["id"]):
            raise UserError(f"member {m.name} was trained for other test ids ({m.cfg.data.dir}); blend experiments of one competition")
    if isinstance(weights, list) and len(weights) != len(members):
        raise UserError(f"{len(weights)} weights for {len(members)} members; give one per member")

    # 1) OOF report: each member and the blend, without and with TTA
    metric = cfg.metric.name
    report_views = [None] + ([views] if views != ["identity"] else [])
    oof_logits: dict[int, list[np.ndarray]] = {}
    y = None
    ids = None
    rows = []
    for vi, rv in enumerate(report_views):
        per = []
        for m in members:
            table, lg = member_oof(m, rv, device, dtype, voting)
            table = table.set_index("id")
            if ids is None:
                ids = table.index
                y = table["target"].to_numpy()
            if set(table.index) != set(ids):
                raise UserError(f"member {m.name}'s OOF ids differ from {members[0].name}'s; members must share the training set")
            order = table.index.get_indexer(ids)
            per.append(lg[order])
            rows.append({"member": m.name, "tta": "+".join(rv) if rv else "none", metric: compute_metric(metric, y, softmax(lg[order]))})
        oof_logits[vi] = per
    fit_on = oof_logits[len(report_views) - 1]
    if weights == "auto":
        w = fit_weights([softmax(x) for x in fit_on], y, metric, voting)
        print("auto weights: " + ", ".join(f"{m.name} {wi:.3f}" for m, wi in zip(members, w)))
    elif weights == "equal":
        w = np.full(len(members), 1.0 / len(members))
    else:
        w = np.asarray(weights, dtype=np.float64)
    if len(members) > 1:
        for vi, rv in enumerate(report_views):
            blend = combine(np.stack(oof_logits[vi]), voting, w)
            rows.append({"member": "blend", "tta": "+".join(rv) if rv else "none", metric: compute_metric(metric, y, blend)})
    print("OOF CV (" + metric + "):")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4f}"))

    # 2) test predictions: decode once per member, folds x views
    member_probs = []
    for m in members:
        tf = build_transform(m.cfg.aug, False, m.mean, m.std)
        loader = make_loader(ImageDataset(test["path"], None, tf), m.cfg.loader, device=device.type)
        lg = predict_views(m.models, loader, views, device, dtype)  # (folds, views, N, C)
        k = lg.shape[0] * lg.shape[1]
        member_probs.append(combine(lg.reshape(k, *lg.shape[2:]), voting))
    # Per-row shifts cancel in softmax, so members' log-probabilities stand in for their logits;
    # hard votes were already counted per member, members' vote shares are then averaged.
    probs = combine(np.stack([_logit(p) for p in member_probs]), "soft" if voting == "hard" else voting, w)

    # 3) submission
    fmt = resolve_format(fmt or e.format, sample, cfg.data.id_col, classes, metric)
    sub = build_submission(sample, cfg.data.id_col, probs, classes, fmt)
    check_submission(sub, sample, cfg.data.id_col, classes, fmt)
    out = Path(out) if out else Path("submissions") / ("+".join(names) + ("_tta" if views != ["identity"] else "") + ".csv")
    probs_df = pd.DataFrame(probs, columns=classes)
    probs_df.insert(0, cfg.data.id_col, sample[cfg.data.id_col].to_numpy())
    probs_path = out.with_name(out.stem + "_probs.csv")
    atomic_save(probs_path, lambda tmp: probs_df.to_csv(tmp, index=False))
    atomic_save(out, lambda tmp: sub.to_csv(tmp, index=False))
    dist = pd.Series(np.asarray(classes)[probs.argmax(1)]).value_counts().reindex(classes, fill_value=0)
    print(f"wrote {out} ({len(sub)} rows, format {fmt}, {len(members)} members x folds x {len(views)} views); "
          f"probabilities in {probs_path}")
    print("predicted classes: " + ", ".join(f"{c} {n}" for c, n in dist.items()))
    return out


def parse_weights(text: str) -> str | list[float]:
    if text in ("equal", "auto"):
        return text
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--weights takes equal, auto or w1,w2,..., not '{text}'") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", nargs="+", default=None, help="member experiments (default: the config's)")
    parser.add_argument("--tta", nargs="*", default=None, help="TTA views; without names: ensemble.tta")
    parser.add_argument("--weights", type=parse_weights, default=None, help="equal | auto | w1,w2,...")
    parser.add_argument("--voting", choices=["soft", "geometric", "logits", "hard"], default=None)
    parser.add_argument("--format", dest="fmt", choices=["auto", "label", "index", "proba", "binary"], default=None)
    parser.add_argument("--out", default=None, help="submission path (default: submissions/<members>[_tta].csv)")
    add_config_args(parser)
    args = parser.parse_intermixed_args(argv)
    for name in ("experiments", "tta"):  # `--tta hflip train.device=cpu`: overrides are not views or members
        values = getattr(args, name)
        if values:
            args.overrides += [t for t in values if "=" in t]
            setattr(args, name, [t for t in values if "=" not in t] or (None if name == "experiments" else []))
    cfg = load_config(args.config, args.overrides)
    tta = None if args.tta is None else (args.tta or cfg.ensemble.tta)
    run(cfg, args.experiments, tta, args.weights, args.voting, args.out, args.fmt)


if __name__ == "__main__":
    run_cli(main)
