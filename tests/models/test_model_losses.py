"""Model building (local and hub pretrained weights), freezing, and the losses."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from src.core.config import Config
from src.core.tasks import make_task
from src.core.utils import UserError, seed_everything
from src.models.losses import FocalLoss, build_loss, class_weights
from src.models.model import build_model, freeze, param_groups, set_train_mode
from src.models.optim import build_optimizer

REPO = Path(__file__).resolve().parents[2]
FREEZE_AT = "layer4.0.conv1"


@pytest.fixture(scope="module")
def make_cfg(demo_cfg, tmp_path_factory) -> Callable[..., Config]:
    """make_cfg(*overrides): configs/demo.yaml with test_resnet; nothing here reads the data folder."""
    data, out = tmp_path_factory.mktemp("no_data"), tmp_path_factory.mktemp("out")
    return lambda *overrides: demo_cfg(data, out, "model.name=test_resnet", *overrides)


def _model(make_cfg: Callable[..., Config], seed: int = 0, *overrides: str) -> torch.nn.Module:
    seed_everything(seed)
    return build_model(make_cfg(*overrides).model, 10)


# ---------------------------------------------------------------- freezing


def test_freeze_before_leaves_exactly_the_tail_trainable(make_cfg):
    model = _model(make_cfg)
    names = [n for n, _ in model.named_parameters()]
    cut = names.index(f"{FREEZE_AT}.weight")
    assert 0 < cut < len(names) - 2  # a real split: something frozen, more than the head trainable

    frozen = freeze(model, before=FREEZE_AT)

    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == names[cut:]
    assert frozen.params == names[:cut]
    assert frozen.any
    # every BatchNorm before layer4 is listed (kept in eval), none of layer4's
    bns = [n for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert frozen.bn_modules == [n for n in bns if not n.startswith("layer4.")]
    assert frozen.bn_modules  # the stem and layers 1-3 have BatchNorms


def test_freeze_before_a_module_name_matches_its_first_parameter(make_cfg):
    a, b = _model(make_cfg), _model(make_cfg)
    fa, fb = freeze(a, before=FREEZE_AT), freeze(b, before="layer4")
    assert fa.params == fb.params
    assert [p.requires_grad for p in a.parameters()] == [p.requires_grad for p in b.parameters()]


def test_freeze_stages_two_freezes_stem_and_layer1(make_cfg):
    model = _model(make_cfg)
    frozen = freeze(model, stages=2)
    names = [n for n, _ in model.named_parameters()]
    expected = [n for n in names if n.split(".")[0] in ("conv1", "bn1", "layer1")]
    assert frozen.params == expected
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == expected
    assert all(p.requires_grad for n, p in model.named_parameters() if n not in expected)
    assert "layer2.0.conv1.weight" not in frozen.params


def test_freeze_nothing_and_too_many_stages(make_cfg):
    model = _model(make_cfg)
    frozen = freeze(model)
    assert not frozen.any and frozen.bn_modules == []
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(UserError, match="freeze_stages"):
        freeze(_model(make_cfg), stages=6)  # stem, layer1..4 are 5 stages; 6 would freeze the head


def test_freeze_bad_name_raises_user_error(make_cfg):
    with pytest.raises(UserError, match="layer4.0.conv9"):
        freeze(_model(make_cfg), before="layer4.0.conv9")
    with pytest.raises(UserError, match="names no parameter"):
        freeze(_model(make_cfg), before="layer4.0.conv")  # a prefix of a name, not a whole component


@pytest.mark.parametrize("include_frozen", [False, True])
def test_frozen_weights_and_bn_statistics_do_not_move(include_frozen: bool, make_cfg):
    cfg = make_cfg("optim.name=adamw", "optim.lr=0.1", "optim.weight_decay=0.5")
    model = _model(make_cfg, 1)
    frozen = freeze(model, before=FREEZE_AT)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    set_train_mode(model, frozen)
    modules = dict(model.named_modules())
    assert all(not modules[n].training for n in frozen.bn_modules)
    assert modules["layer4.0.bn1"].training and model.training

    groups = param_groups(model, cfg.optim.weight_decay, frozen, 0.1, include_frozen=include_frozen)
    opt = build_optimizer(cfg.optim, groups)
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 32, 32) * 2 + 0.5, torch.randint(0, 10, (8,))
    F.cross_entropy(model(x), y).backward()
    opt.step()

    after = model.state_dict()
    frozen_keys = [k for k in after if any(k.startswith(m + ".") for m in frozen.bn_modules)] + frozen.params
    assert any(k.endswith("running_mean") for k in frozen_keys)
    unchanged = [k for k in frozen_keys if torch.equal(before[k], after[k])]
    assert unchanged == frozen_keys
    # trainable weights moved (timm zero-inits each block's last BN weight, so layer4.0.conv1/bn1 get
    # no gradient at the first step; the downsample path, bn2 and the head do)
    for k in ("layer4.0.downsample.1.weight", "layer4.0.bn2.weight", "fc.weight"):
        assert not torch.equal(before[k], after[k]), k
    for k in ("layer4.0.bn1.running_mean", "layer4.0.bn1.running_var"):
        assert not torch.equal(before[k], after[k]), k  # trainable BN statistics moved


# ---------------------------------------------------------------- pretrained weights


@pytest.fixture(scope="module")
def weights_1000(tmp_path_factory) -> tuple[dict, Path, Path]:
    """A test_resnet state dict with an ImageNet (1000-class) head, unlike any fresh init,
    saved with torch.save and with safetensors."""
    torch.manual_seed(123)
    sd = timm.create_model("test_resnet", num_classes=1000).state_dict()
    g = torch.Generator().manual_seed(7)
    for v in sd.values():
        if v.is_floating_point():
            v.add_(torch.rand(v.shape, generator=g) * 0.05)  # keeps running_var positive
        else:
            v.fill_(11)  # num_batches_tracked
    sd = {k: v.contiguous() for k, v in sd.items()}
    d = tmp_path_factory.mktemp("weights")
    pth, st = d / "test_resnet.pth", d / "test_resnet.safetensors"
    torch.save(sd, pth)
    save_file(sd, str(st))
    return sd, pth, st


@pytest.mark.parametrize("kind", ["pth", "safetensors"])
def test_local_pretrained_weights_load_except_the_head(weights_1000, kind: str, make_cfg):
    sd, pth, st = weights_1000
    path = pth if kind == "pth" else st
    model = _model(make_cfg, 0, "model.pretrained=true", f"model.pretrained_path={path}")
    own = model.state_dict()
    assert own.keys() == sd.keys()
    body = [k for k in own if not k.startswith("fc.")]
    assert len(body) > 40
    differing = [k for k in body if not torch.equal(own[k], sd[k])]
    assert differing == []
    assert own["fc.weight"].shape[0] == 10 and sd["fc.weight"].shape[0] == 1000
    scratch = _model(make_cfg, 0).state_dict()
    assert not torch.equal(scratch["conv1.0.weight"], sd["conv1.0.weight"])  # the file, not the init
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_weights_of_another_architecture_raise_user_error(tmp_path: Path, make_cfg):
    path = tmp_path / "resnet10t.pth"
    torch.save(timm.create_model("resnet10t", num_classes=1000).state_dict(), path)
    # torch's load_state_dict(strict=False) still raises a RuntimeError on size mismatches, so the
    # loader must check shapes itself (the version committed in 2121b5b let that RuntimeError through).
    with pytest.raises(UserError, match="does not fit.*model.name"):
        _model(make_cfg, 0, "model.pretrained=true", f"model.pretrained_path={path}")


def test_weights_with_missing_keys_raise_user_error(weights_1000, tmp_path: Path, make_cfg):
    sd, _, _ = weights_1000
    partial = {k: v for k, v in sd.items() if not k.startswith("layer3.")}
    path = tmp_path / "partial.pth"
    torch.save(partial, path)
    with pytest.raises(UserError, match="does not fit"):
        _model(make_cfg, 0, "model.pretrained=true", f"model.pretrained_path={path}")


def test_missing_and_unreadable_weights_files_raise_user_error(tmp_path: Path, make_cfg):
    with pytest.raises(UserError, match="does not exist"):
        _model(make_cfg, 0, "model.pretrained=true", f"model.pretrained_path={tmp_path / 'nope.pth'}")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a state dict")
    with pytest.raises(UserError, match="cannot read weights"):
        _model(make_cfg, 0, "model.pretrained=true", f"model.pretrained_path={junk}")


@pytest.mark.slow  # a fresh interpreter importing torch and timm: 8-20 s
def test_hub_weights_offline_fail_with_a_helpful_message(demo_dir: Path, tmp_path: Path, overrides_for):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "WANDB_MODE": "disabled",
           "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "src.train", "--config", "configs/demo.yaml", "--fold", "0", "--dry-run",
         *overrides_for(demo_dir, out, "model.pretrained=true", "model.name=test_resnet", "data.check_images=false")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "model.pretrained_path" in proc.stderr
    assert "model.pretrained=false" in proc.stderr
    assert not (out / "demo" / "fold0").exists()


# ---------------------------------------------------------------- losses


def _batch(n: int = 16, c: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g) * 3, torch.randint(0, c, (n,), generator=g)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_focal_gamma_zero_equals_cross_entropy(eps: float, make_cfg):
    logits, y = _batch()
    focal = FocalLoss(gamma=0.0, smoothing=eps)(logits, y)
    ce = F.cross_entropy(logits, y, label_smoothing=eps)
    torch.testing.assert_close(focal, ce, rtol=1e-6, atol=1e-6)
    built = build_loss(make_cfg("loss.name=focal", "loss.gamma=0", f"loss.smoothing={eps}").loss, make_task("multiclass", map(str, range(5))), y.numpy())
    assert isinstance(built, FocalLoss)
    torch.testing.assert_close(built(logits, y), ce, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["ce", "focal"])
def test_label_smoothing_matches_hand_reference(name: str, make_cfg):
    eps = 0.1
    logits, y = _batch(32, 7, seed=3)
    logp = F.log_softmax(logits, 1)
    nll = -logp[torch.arange(len(y)), y]
    by_hand = ((1 - eps) * nll + eps * (-logp).mean(1)).mean()
    crit = build_loss(make_cfg(f"loss.name={name}", "loss.gamma=0").loss, make_task("multiclass", map(str, range(7))), y.numpy(), smoothing=eps)
    got = crit(logits, y)
    torch.testing.assert_close(got, by_hand, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got, F.cross_entropy(logits, y, label_smoothing=eps), rtol=1e-6, atol=1e-6)
    assert not torch.isclose(got, nll.mean())  # smoothing changed something


def test_build_loss_smoothing_argument_overrides_config(make_cfg):
    logits, y = _batch()
    loss_cfg = make_cfg("loss.name=ce", "loss.smoothing=0.2").loss
    torch.testing.assert_close(build_loss(loss_cfg, make_task("multiclass", map(str, range(5))), y.numpy())(logits, y),
                               F.cross_entropy(logits, y, label_smoothing=0.2))
    torch.testing.assert_close(build_loss(loss_cfg, make_task("multiclass", map(str, range(5))), y.numpy(), smoothing=0.0)(logits, y),
                               F.cross_entropy(logits, y))


def test_focal_is_much_smaller_than_ce_for_confident_correct_predictions():
    n, c = 8, 4
    y = torch.arange(n) % c
    logits = torch.full((n, c), -3.0)
    logits[torch.arange(n), y] = 4.0  # p(correct) ~ 0.997
    ce = F.cross_entropy(logits, y)
    focal = FocalLoss(gamma=2.0)(logits, y)
    assert 0 < focal < ce * 0.01
    p = F.softmax(logits, 1)[torch.arange(n), y]
    torch.testing.assert_close(focal, (-(1 - p) ** 2 * p.log()).mean())
    # a confidently wrong prediction is barely discounted
    wrong = (y + 1) % c
    assert FocalLoss(gamma=2.0)(logits, wrong) > 0.9 * F.cross_entropy(logits, wrong)


def test_soft_targets(make_cfg):
    logits, _ = _batch(12, 6, seed=5)
    g = torch.Generator().manual_seed(1)
    soft = torch.softmax(torch.randn(12, 6, generator=g), 1)
    ref = F.cross_entropy(logits, soft)
    torch.testing.assert_close(FocalLoss(gamma=0.0)(logits, soft), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(build_loss(make_cfg("loss.name=ce").loss, make_task("multiclass", map(str, range(6))), np.zeros(12, int))(logits, soft), ref)
    # smoothing applies to index targets only: probability rows are taken as they are
    torch.testing.assert_close(FocalLoss(gamma=0.0, smoothing=0.3)(logits, soft), ref, rtol=1e-6, atol=1e-6)
    focal = FocalLoss(gamma=2.0)(logits, soft)
    assert torch.isfinite(focal) and 0 < focal < ref
    # one-hot probability rows equal index targets
    y = soft.argmax(1)
    torch.testing.assert_close(FocalLoss(gamma=2.0)(logits, F.one_hot(y, 6).float()), FocalLoss(gamma=2.0)(logits, y))


def test_balanced_class_weights(make_cfg):
    targets = np.array([0] * 6 + [1] * 3 + [2] * 1)
    w = class_weights(make_cfg("loss.class_weights=balanced").loss, targets, 3)
    torch.testing.assert_close(w, torch.tensor([10 / 18, 10 / 9, 10 / 3]))
    crit = build_loss(make_cfg("loss.name=ce", "loss.class_weights=balanced").loss, make_task("multiclass", map(str, range(3))), targets)
    logits, y = _batch(10, 3, seed=2)
    torch.testing.assert_close(crit(logits, y), F.cross_entropy(logits, y, weight=w))
    assert class_weights(make_cfg().loss, targets, 3) is None


def test_class_weight_list_and_focal_alpha(make_cfg):
    cfg = make_cfg("loss.name=focal", "loss.gamma=0", "loss.class_weights=[1.0, 2.0, 3.0]", "loss.alpha=[0.5, 0.5, 1.0]")
    crit = build_loss(cfg.loss, make_task("multiclass", map(str, range(3))), np.array([0, 1, 2]))
    torch.testing.assert_close(crit.alpha, torch.tensor([0.5, 1.0, 3.0]))
    logits, y = _batch(10, 3, seed=4)
    per_sample = F.cross_entropy(logits, y, reduction="none") * crit.alpha[y]
    torch.testing.assert_close(crit(logits, y), per_sample.mean())


def test_class_weight_and_alpha_length_mismatch_raise_user_error(make_cfg):
    with pytest.raises(UserError, match="class_weights has 2 values for 3 classes"):
        build_loss(make_cfg("loss.class_weights=[1.0, 2.0]").loss, make_task("multiclass", map(str, range(3))), np.array([0, 1, 2]))
    with pytest.raises(UserError, match="alpha has 4 values for 3 classes"):
        build_loss(make_cfg("loss.name=focal", "loss.alpha=[1, 1, 1, 1]").loss, make_task("multiclass", map(str, range(3))), np.array([0, 1, 2]))
