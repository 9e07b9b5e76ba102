"""Model: a timm classifier returning logits, pretrained weights (hub or local file), freezing."""

from __future__ import annotations

import difflib
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from timm.models import group_parameters, load_state_dict
from timm.optim import param_groups_layer_decay

from src.core.config import ModelCfg
from src.core.utils import UserError
from src.data.meta_table import meta_dims
from src.models.meta_model import MetaModel


def _create(cfg: ModelCfg, num_classes: int, pretrained: bool, img_size: int | None = None) -> torch.nn.Module:
    kwargs = {"num_classes": num_classes, "drop_rate": cfg.drop_rate, "in_chans": cfg.in_chans or 3}
    if cfg.drop_path_rate:  # only when asked: some timm models have no stochastic depth
        kwargs["drop_path_rate"] = cfg.drop_path_rate
    try:
        model = timm.create_model(cfg.name, pretrained=pretrained, **kwargs)
        pc = model.pretrained_cfg
        if img_size is not None and pc.get("fixed_input_size") and tuple(pc.get("input_size", ()))[-1:] != (img_size,):
            # ViT-like models are built for one input size; timm resamples position embeddings.
            try:
                model = timm.create_model(cfg.name, pretrained=pretrained, img_size=img_size, **kwargs)
            except TypeError:
                raise UserError(f"{cfg.name} takes only {pc['input_size'][-1]} px inputs; set aug.img_size="
                                f"{pc['input_size'][-1]}") from None
        return model
    except TypeError as e:
        if "drop_path_rate" in str(e):
            raise UserError(f"{cfg.name} has no stochastic depth (timm's drop_path_rate); set model.drop_path_rate=0") from None
        raise
    except RuntimeError as e:
        if "Unknown model" in str(e) or "Invalid pretrained tag" in str(e):
            close = difflib.get_close_matches(cfg.name.split(".")[0], timm.list_models(), n=3)
            raise UserError(f"timm has no model '{cfg.name}'; set model.name (close names: {close})") from None
        raise


def load_weights_file(model: torch.nn.Module, path: str | Path) -> None:
    """Load a local .pth/.safetensors state dict into `model`, except a classifier of another size.

    The file is read with torch.load(weights_only=True) or safetensors, so it cannot run code.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model.pretrained_path {path} does not exist; point it at a .pth or .safetensors state dict")
    try:
        state = load_state_dict(str(path), weights_only=True)
    except Exception as e:
        raise UserError(f"cannot read weights from {path} ({type(e).__name__}: {str(e)[:200]}); it must be a state dict saved with torch.save or safetensors") from None
    own = model.state_dict()
    head = model.pretrained_cfg.get("classifier", "")
    heads = (head,) if isinstance(head, str) else tuple(head)

    def in_head(k: str) -> bool:
        return any(k.startswith(h + ".") for h in heads)

    # A classifier sized for other classes (e.g. ImageNet's 1000) is left freshly initialized.
    shape_bad = [k for k in state if k in own and state[k].shape != own[k].shape]
    state = {k: v for k, v in state.items() if k not in shape_bad}
    shape_bad = [k for k in shape_bad if not in_head(k)]
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not in_head(k)]
    if missing or unexpected or shape_bad:
        detail = (shape_bad or missing or unexpected)[:3]
        raise UserError(
            f"{path} does not fit {model.pretrained_cfg.get('architecture', 'the model')}: {len(shape_bad)} "
            f"mismatched shapes, {len(missing)} missing and {len(unexpected)} unexpected keys (e.g. {detail}); "
            "check that model.name matches the weights file"
        )


def build_model(cfg: ModelCfg, num_classes: int, pretrained: bool | None = None,
                img_size: int | None = None, meta: dict | None = None) -> torch.nn.Module:
    """A timm model with a `num_classes` head that returns logits.

    Args:
        cfg: the model section (name, pretrained, pretrained_path, drop_rate).
        num_classes: size of the classifier head.
        pretrained: False builds the bare architecture (a checkpoint will be loaded); None loads
            cfg.pretrained_path when given, else the hub's weights when cfg.pretrained.
        img_size: input side; fixed-size models (ViT, Swin) are built for it.
        meta: the fitted metadata preprocessing (src.data.meta_table.fit_meta): the timm model becomes
            the backbone of a MetaModel taking (image, meta) pairs; None: the timm model itself.
    """
    if meta is not None:
        model = MetaModel(build_model(cfg, num_classes, pretrained, img_size), cfg, *meta_dims(meta), num_classes)
        model.meta_spec = meta  # what its inputs' vectors are encoded with (not a tensor: kept off the state dict)
        return model
    if pretrained is False:
        return _create(cfg, num_classes, False, img_size)
    if cfg.pretrained_path:  # a given file is always loaded, whatever model.pretrained says
        model = _create(cfg, num_classes, False, img_size)
        load_weights_file(model, cfg.pretrained_path)
        return model
    if not cfg.pretrained:
        return _create(cfg, num_classes, False, img_size)
    return _from_hub(cfg, num_classes, img_size)


def has_weights(cfg: ModelCfg) -> bool:
    """Whether a model built from this section starts from trained weights."""
    return bool(cfg.pretrained_path) or cfg.pretrained


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick connection to the Hugging Face hub (or HF_ENDPOINT); False offline."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def _from_hub(cfg: ModelCfg, num_classes: int, img_size: int | None) -> torch.nn.Module:
    """Pretrained weights from the hub, or offline from its local cache, without a minute of retries."""
    from huggingface_hub import constants

    offline, before = not hub_reachable(), constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or offline  # cache only: a miss fails at once
    try:
        return _create(cfg, num_classes, True, img_size)
    except UserError:
        raise
    except Exception as e:
        where = "the hub is not reachable and they are not in the local cache" if offline else f"the hub ({type(e).__name__})"
        raise UserError(
            f"cannot get pretrained weights for {cfg.name}: {where}; download them where there is network and "
            "set model.pretrained_path=/path/to/weights.safetensors (or .pth), or set model.pretrained=false "
            "to train from scratch"
        ) from None
    finally:
        constants.HF_HUB_OFFLINE = before


def set_grad_checkpointing(model: torch.nn.Module, name: str) -> None:
    """timm's activation checkpointing (model.grad_checkpointing): the blocks' activations are
    recomputed in backward instead of kept."""
    try:
        model.set_grad_checkpointing(True)
    except (AttributeError, AssertionError):  # no method, or timm's "gradient checkpointing not supported"
        raise UserError(f"{name} does not support gradient checkpointing in timm; set model.grad_checkpointing=false "
                        "(and lower loader.batch_size with train.accum_steps to save memory)") from None


# ---------------------------------------------------------------- freezing


@dataclass
class Frozen:
    """What was frozen: parameter names and the BatchNorm modules kept in eval mode."""

    params: list[str] = field(default_factory=list)
    bn_modules: list[str] = field(default_factory=list)

    @property
    def any(self) -> bool:
        return bool(self.params)


def freeze(model: torch.nn.Module, before: str | None = None, stages: int | None = None) -> Frozen:
    """Freeze every parameter before the parameter/module `before`, or the first `stages` stages.

    Stages are timm's coarse parameter groups (for ResNets: stem, layer1, ..., layer4, head).
    BatchNorm layers whose parameters are all frozen are listed so the loop keeps them in eval
    mode and their running statistics do not move.
    """
    if isinstance(model, MetaModel):  # the backbone's names and stages; the metadata branch and head always train
        inner = freeze(model.backbone, before, stages)
        frozen = {f"backbone.{n}" for n in inner.params}
        for n, p in model.named_parameters():
            p.requires_grad_(n not in frozen)
        return Frozen([f"backbone.{n}" for n in inner.params], [f"backbone.{n}" for n in inner.bn_modules])
    names = [n for n, _ in model.named_parameters()]
    if before is not None:
        hit = next((i for i, n in enumerate(names) if n == before or n.startswith(before + ".")), None)
        if hit is None:
            close = difflib.get_close_matches(before, names, n=3) or names[:3]
            raise UserError(f"model.freeze_before='{before}' names no parameter of the model; close names: {close}")
        frozen = set(names[:hit])
    elif stages is not None:
        groups = group_parameters(model, model.group_matcher(coarse=True))
        order = sorted(groups)
        if stages > len(order) - 1:
            raise UserError(f"model.freeze_stages={stages} would freeze the head; this model has {len(order) - 1} stages before it")
        frozen = {n for g in order[:stages] for n in groups[g]}
    else:
        frozen = set()
    for n, p in model.named_parameters():
        p.requires_grad_(n not in frozen)
    bn = [
        name
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        and any(True for _ in m.parameters(recurse=False))
        and all(not p.requires_grad for p in m.parameters(recurse=False))
    ]
    return Frozen([n for n in names if n in frozen], bn)


def unfreeze(model: torch.nn.Module, frozen: Frozen) -> Frozen:
    for p in model.parameters():
        p.requires_grad_(True)
    return Frozen()


def set_train_mode(model: torch.nn.Module, frozen: Frozen) -> None:
    """model.train(), with frozen BatchNorm layers back in eval mode."""
    model.train()
    modules = dict(model.named_modules())
    for name in frozen.bn_modules:
        modules[name].eval()


def param_counts(model: torch.nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}


def _layer_scales(model: torch.nn.Module, layer_decay: float, name: str) -> dict[str, float]:
    """Each parameter's lr_scale under timm's layer-wise decay (its fine-grained group_matcher: a
    block d blocks below the head scales by layer_decay^d), frozen parameters included; a MetaModel's
    backbone is decayed from its top, the metadata branch and head are not."""
    if isinstance(model, MetaModel):
        return {f"backbone.{n}": v for n, v in _layer_scales(model.backbone, layer_decay, name).items()}
    held = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(True)  # timm groups only trainable parameters; a frozen one may be unfrozen later
        groups = param_groups_layer_decay(model, weight_decay=0.0, layer_decay=layer_decay)
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(held[n])
    if len({g["lr_scale"] for g in groups}) < 2:
        raise UserError(f"{name} has no layer grouping in timm, so optim.layer_decay would change nothing; set it to null")
    by_id = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    return {n: by_id[id(p)] for n, p in model.named_parameters()}


def param_groups(model: torch.nn.Module, weight_decay: float, frozen: Frozen, backbone_lr_mult: float,
                 include_frozen: bool, layer_decay: float | None = None, name: str = "the model",
                 meta_lr_mult: float = 1.0) -> list[dict]:
    """Optimizer groups, each parameter's lr_scale the product of three factors:

    - layer-wise decay (`layer_decay`, timm's layer map): layer_decay^d, d blocks below the head;
    - the frozen backbone (only when it will be unfrozen later): `backbone_lr_mult`;
    - a MetaModel's metadata branch (optim.meta_lr_mult): `meta_lr_mult`.

    No weight decay on norm and bias (1-D) parameters nor on those the model names in
    no_weight_decay() (a ViT's position embedding and class token), as timm's optimizer factory does.
    """
    frozen_set = set(frozen.params)
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    layers = _layer_scales(model, layer_decay, name) if layer_decay is not None else {}
    buckets: dict[tuple[float, bool, bool], list] = {}
    for n, p in model.named_parameters():
        is_backbone = n in frozen_set
        if is_backbone and not include_frozen:
            continue
        no_decay = p.ndim <= 1 or n.endswith(".bias") or n in skip
        own = meta_lr_mult if isinstance(model, MetaModel) and n.startswith("meta.") else 1.0
        buckets.setdefault((layers.get(n, 1.0) * own, is_backbone, no_decay), []).append(p)
    groups = []
    for (layer_scale, is_backbone, no_decay), params in sorted(buckets.items(), key=lambda kv: (-kv[0][0], kv[0][1:])):
        g = {"params": params, "weight_decay": 0.0 if no_decay else weight_decay}
        scale = layer_scale * (backbone_lr_mult if is_backbone else 1.0)
        if scale != 1.0:
            g["lr_scale"] = scale
        groups.append(g)
    return groups
