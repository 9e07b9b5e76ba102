"""Configs: merge order, defaults, every shipped file loads, errors name the key and the source."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from src.core.config import CLI, CONFIG_DIR, Config, config_from_dict, load_config, parse_override, save_config
from src.core.utils import UserError

BASE = CONFIG_DIR / "base.yaml"


def _write(path: Path, data: dict | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def exp_file(tmp_path: Path) -> Path:
    """An experiment file outside configs/ that names base.yaml by absolute path."""
    return _write(tmp_path / "my_exp.yaml", {"base": str(BASE), "train": {"epochs": 3}})


# ---------------------------------------------------------------- merge order and defaults


def test_experiment_file_wins_over_base(exp_file: Path):
    base = yaml.safe_load(BASE.read_text())
    assert base["train"]["epochs"] != 3  # else the test could not tell the files apart
    cfg = load_config(exp_file)
    assert cfg.train.epochs == 3
    # keys the experiment does not mention keep base.yaml's values, even in a section it edits
    assert cfg.train.accum_steps == base["train"]["accum_steps"]
    assert cfg.optim.lr == pytest.approx(base["optim"]["lr"])
    assert cfg.model.name == base["model"]["name"]


def test_command_line_wins_over_experiment_file(exp_file: Path):
    cfg = load_config(exp_file, ["train.epochs=7", "optim.lr=0.5"])
    assert cfg.train.epochs == 7
    assert cfg.optim.lr == pytest.approx(0.5)


def test_later_override_wins_over_earlier(exp_file: Path):
    assert load_config(exp_file, ["train.epochs=7", "train.epochs=9"]).train.epochs == 9


def test_three_level_chain_merges_in_order(tmp_path: Path):
    _write(tmp_path / "mid.yaml", {"base": str(BASE), "train": {"epochs": 4}, "optim": {"lr": 0.25}})
    leaf = _write(tmp_path / "sub" / "leaf.yaml", {"base": "../mid.yaml", "train": {"epochs": 5}})
    cfg = load_config(leaf)
    assert cfg.train.epochs == 5  # leaf beats mid
    assert cfg.optim.lr == pytest.approx(0.25)  # mid beats base
    assert cfg.experiment.name == "leaf"


def test_demo_changes_only_what_it_names():
    base = load_config(BASE)
    demo = load_config("configs/demo.yaml")
    assert demo.aug.img_size == 32 and base.aug.img_size == 224
    assert demo.aug.crop_pct == base.aug.crop_pct  # same section, untouched key
    # base.yaml freezes nothing; the ResNeXt101 recipe names its own freeze point
    assert demo.model.freeze_before is None and base.model.freeze_before is None
    assert load_config("configs/resnext101.yaml").model.freeze_before == "layer4.0.conv1"


def test_experiment_name_defaults_to_file_stem(exp_file: Path, tmp_path: Path):
    assert load_config(exp_file).experiment.name == "my_exp"
    assert load_config("configs/demo.yaml").experiment.name == "demo"
    assert load_config("configs/resnext101.yaml").experiment.name == "resnext101"
    assert load_config(exp_file, ["experiment.name=other"]).experiment.name == "other"
    named = _write(tmp_path / "x.yaml", {"base": str(BASE), "experiment": {"name": "fixed"}})
    assert load_config(named).experiment.name == "fixed"


def test_default_config_is_resnext101():
    assert load_config().experiment.name == "resnext101"


def test_out_dir_is_output_dir_slash_name(tmp_path: Path):
    cfg = load_config("configs/demo.yaml", [f"experiment.output_dir={tmp_path}"])
    assert cfg.out_dir == tmp_path / "demo"


def test_override_values_are_parsed_as_yaml():
    cfg = load_config(
        "configs/demo.yaml",
        [
            "aug.zoom=[0.8, 1.3]",
            "model.freeze_before=null",
            "train.clip_grad=1.5",
            "aug.hflip=true",
            "model.freeze_stages=2",
        ],
    )
    assert cfg.aug.zoom == (0.8, 1.3)
    assert cfg.model.freeze_before is None and cfg.model.freeze_stages == 2
    assert cfg.train.clip_grad == pytest.approx(1.5)
    assert cfg.aug.hflip is True
    assert parse_override("a.b.c=x=y") == {"a": {"b": {"c": "x=y"}}}


# ---------------------------------------------------------------- every shipped file loads


def _experiment_files() -> list[Path]:
    files = []
    for p in sorted(CONFIG_DIR.rglob("*.yaml")):
        data = yaml.safe_load(p.read_text()) or {}
        # search spaces and other non-experiment YAMLs have no `base` key; base.yaml is the root
        if p == BASE or (isinstance(data, dict) and "base" in data):
            files.append(p)
    return files


def test_the_shipped_experiment_files_are_found():
    names = {p.name for p in _experiment_files()}
    assert {"base.yaml", "demo.yaml", "resnext101.yaml"} <= names


@pytest.mark.parametrize("path", _experiment_files(), ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_config_file_loads(path: Path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.experiment.name == path.stem or "name" in (yaml.safe_load(path.read_text()).get("experiment") or {})


# ---------------------------------------------------------------- errors name the key and the source


def _error(path, overrides=None) -> str:
    with pytest.raises(UserError) as e:
        load_config(path, overrides or [])
    return str(e.value)


def test_unknown_key_in_file_names_the_file(tmp_path: Path):
    bad = _write(tmp_path / "typo.yaml", {"base": str(BASE), "train": {"epochz": 3}})
    msg = _error(bad)
    assert "train.epochz" in msg
    assert str(bad) in msg
    assert "epochs" in msg  # the close-match hint


def test_unknown_section_in_file(tmp_path: Path):
    bad = _write(tmp_path / "typo2.yaml", {"base": str(BASE), "trian": {"epochs": 3}})
    msg = _error(bad)
    assert "trian" in msg and str(bad) in msg


def test_unknown_key_on_command_line():
    msg = _error("configs/demo.yaml", ["train.epochz=3"])
    assert "train.epochz" in msg
    assert CLI in msg and CLI == "the command line"


def test_wrong_type_on_command_line():
    msg = _error("configs/demo.yaml", ["train.epochs=abc"])
    assert "train.epochs" in msg and "the command line" in msg and "abc" in msg


def test_wrong_type_in_file_names_the_file(tmp_path: Path):
    bad = _write(tmp_path / "wt.yaml", {"base": str(BASE), "loader": {"batch_size": "big"}})
    msg = _error(bad)
    assert "loader.batch_size" in msg and str(bad) in msg


def test_invalid_choice_lists_allowed_values():
    msg = _error("configs/demo.yaml", ["optim.name=adamx"])
    assert "optim.name" in msg and "the command line" in msg and "adamx" in msg
    for allowed in ("adam", "adamw", "sgd", "rmsprop"):
        assert f"'{allowed}'" in msg


def test_invalid_choice_in_file(tmp_path: Path):
    bad = _write(tmp_path / "ch.yaml", {"base": str(BASE), "data": {"bad_images": "maybe"}})
    msg = _error(bad)
    assert "data.bad_images" in msg and str(bad) in msg and "'error'" in msg and "'skip'" in msg


@pytest.mark.parametrize("text", ["train.epochs", "=3"])
def test_malformed_override_without_equals(text: str):
    msg = _error("configs/demo.yaml", [text])
    assert f"'{text}'" in msg and "section.key=value" in msg


def test_override_without_section():
    msg = _error("configs/demo.yaml", ["epochs=3"])
    assert "'epochs=3'" in msg and "section" in msg


def test_freeze_before_and_freeze_stages_both_set_names_both_keys():
    # resnext101.yaml sets model.freeze_before
    msg = _error("configs/resnext101.yaml", ["model.freeze_stages=2"])
    assert "model.freeze_before" in msg and "model.freeze_stages" in msg
    assert "from " in msg


def test_freeze_conflict_names_the_source_that_set_it():
    # Section-level checks name the highest-precedence source among the section's keys.
    msg = _error("configs/resnext101.yaml", ["model.freeze_stages=2"])
    assert "the command line" in msg, msg


def test_n_folds_below_two_names_the_command_line():
    # base.yaml says 5; the 1 came from the command line, and the message must say so.
    msg = _error("configs/demo.yaml", ["data.n_folds=1"])
    assert "data.n_folds" in msg
    assert "the command line" in msg, msg


def test_tuple_of_wrong_length_is_not_reported_as_missing():
    # pydantic reports a too-short tuple as 'missing' at ('aug', 'zoom', 1): not a missing key.
    msg = _error("configs/demo.yaml", ["aug.zoom=[1.0]"])
    assert "aug.zoom" in msg
    assert "the command line" in msg, msg


def test_base_loop(tmp_path: Path):
    _write(tmp_path / "a.yaml", {"base": "b.yaml", "train": {"epochs": 1}})
    _write(tmp_path / "b.yaml", {"base": "a.yaml"})
    msg = _error(tmp_path / "a.yaml")
    assert "base" in msg and ("a.yaml" in msg or "b.yaml" in msg)


def test_self_base(tmp_path: Path):
    me = _write(tmp_path / "me.yaml", {"base": "me.yaml"})
    msg = _error(me)
    assert str(me.resolve()) in msg and "base" in msg


def test_missing_config_file(tmp_path: Path):
    missing = tmp_path / "nope.yaml"
    msg = _error(missing)
    assert str(missing) in msg and "does not exist" in msg


def test_missing_base_file(tmp_path: Path):
    exp = _write(tmp_path / "orphan.yaml", {"base": "gone.yaml"})
    msg = _error(exp)
    assert "gone.yaml" in msg and "does not exist" in msg


def test_invalid_yaml_names_the_file(tmp_path: Path):
    bad = _write(tmp_path / "broken.yaml", "train: {epochs: [1\n")
    msg = _error(bad)
    assert str(bad) in msg and "YAML" in msg


def test_non_mapping_file(tmp_path: Path):
    bad = _write(tmp_path / "list.yaml", "- 1\n- 2\n")
    msg = _error(bad)
    assert str(bad) in msg and "mapping" in msg


# ---------------------------------------------------------------- save_config


def test_save_config_roundtrip(tmp_path: Path):
    cfg = load_config(
        "configs/demo.yaml", [f"experiment.output_dir={tmp_path}", "train.epochs=2", "aug.zoom=[0.7,1.4]"]
    )
    written = save_config(cfg)
    assert written == tmp_path / "demo" / "config.yaml"
    assert written.is_file()
    assert [p.name for p in written.parent.iterdir()] == ["config.yaml"]  # no temp file left
    again = load_config(written)
    assert again == cfg
    assert config_from_dict(yaml.safe_load(written.read_text()), str(written)) == cfg


def test_save_config_explicit_path(tmp_path: Path):
    cfg = load_config("configs/resnext101.yaml", [f"experiment.output_dir={tmp_path}"])
    target = tmp_path / "elsewhere" / "cfg.yaml"
    assert save_config(cfg, target) == target
    assert load_config(target) == cfg


def test_config_from_dict_rejects_unknown_key(tmp_path: Path):
    d = load_config("configs/demo.yaml").to_dict()
    d["train"]["bogus"] = 1
    with pytest.raises(UserError, match=r"train\.bogus.*ckpt\.pt|ckpt\.pt.*train\.bogus"):
        config_from_dict(d, "ckpt.pt")


def test_mixup_needs_an_even_batch():
    msg = _error("configs/demo.yaml", ["train.mixup=0.2", "loader.batch_size=33"])
    assert "even" in msg and "the command line" in msg
