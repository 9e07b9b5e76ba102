"""The command wrapper every main() shares (src.core.cli): --help of every command, a config that
names no competition refused in one sentence before anything is written, Ctrl-C's message (the
--resume hint only where resuming exists), and the repository's configs found from the package."""

from __future__ import annotations

import ast
import importlib

import pytest
from conftest import REPO

from src.core.cli import run_cli
from src.core.config import CONFIG_DIR
from src.tuning.search_space import DEFAULT_SPACE_DIR

COMMANDS = sorted(p.stem for p in (REPO / "src").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_showing_how_it_is_called(name, capsys):
    module = importlib.import_module(f"src.{name}")
    with pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0
    assert f"python -m src.{name}" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["train", "--fold", "0"],
    ["folds"],
    ["ensemble", "--tta", "hflip"],
    ["report"],
    ["probe"],
    ["tune", "--n-trials", "1"],
    ["kaggle_kernel", "build"],
    ["kaggle_kernel", "train"],
    ["pseudo", "--experiments", "x"],
])
def test_no_competition_configured_is_one_sentence_and_writes_nothing(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # base.yaml and the default recipe name no data.dir
    with pytest.raises(SystemExit) as e:
        run_cli(importlib.import_module(f"src.{argv[0]}").main, argv[1:])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert "no competition folder is configured" in err and "data.dir" in err
    assert "--config configs/demo.yaml" in err and "python -m src.demo" in err
    assert list(tmp_path.iterdir()) == []


def _interrupt_messages() -> dict[str, str]:
    """The `interrupted=` text each command's `if __name__ == "__main__"` block passes to run_cli."""
    found = {}
    for name in COMMANDS:
        tree = ast.parse((REPO / "src" / f"{name}.py").read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "run_cli"]
        assert len(calls) == 1, f"src/{name}.py must end in one run_cli(main)"
        kw = {k.arg: k.value for k in calls[0].keywords}
        found[name] = ast.literal_eval(kw["interrupted"]) if "interrupted" in kw else "interrupted"
    return found


def test_only_train_says_continue_with_resume_on_ctrl_c():
    messages = _interrupt_messages()
    assert "--resume" in messages["train"]
    assert [n for n, m in messages.items() if "--resume" in m] == ["train"]


def test_run_cli_exit_codes(capsys):
    def interrupted(argv):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as e:
        run_cli(interrupted, [], interrupted="interrupted: kept X")
    assert e.value.code == 130 and capsys.readouterr().err.strip() == "interrupted: kept X"

    def fails(argv):
        from src.core.utils import UserError

        raise UserError("fix the thing")

    with pytest.raises(SystemExit) as e:
        run_cli(fails, [])
    assert e.value.code == 2 and capsys.readouterr().err.strip() == "error: fix the thing"


def test_configs_are_the_repositorys_not_a_modules():
    assert CONFIG_DIR == REPO / "configs" and (CONFIG_DIR / "base.yaml").is_file()
    assert DEFAULT_SPACE_DIR == REPO / "configs" / "tune"


HEAVY = ("torch", "timm", "albumentations", "cv2", "sklearn", "scipy", "matplotlib", "optuna", "wandb", "nbclient")
COMMANDS = ("train", "ensemble", "tune", "folds", "score", "demo", "bench", "kaggle_kernel", "report", "probe", "ledger",
            "pseudo", "average", "init")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_parses_before_importing_anything_heavy(command):
    """`python -m src.<command> --help` answers from argparse alone (about a second, not 20-40 s on a
    busy 2-core machine): none of the heavy libraries is imported by the time the help is printed."""
    import subprocess
    import sys

    code = (f"import sys, src.{command} as m\n"
            "try:\n    m.main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            f"print(sorted(k for k in {HEAVY!r} if k in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout and proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout[-500:]


# Every command with a many-valued flag or positional (nargs '+' or '*'), those words, after which an override
# used to be swallowed as one more value (issue 31).
MANY_VALUED = {
    "ensemble --experiments": ["ensemble", "--experiments", "a", "b"],
    "ensemble --tta": ["ensemble", "--tta", "hflip", "d4"],
    "pseudo --experiments": ["pseudo", "--experiments", "a", "b"],
    "pseudo --tta": ["pseudo", "--tta", "hflip", "d4"],
    "report --compare": ["report", "--compare", "a", "b"],
    "bench --views": ["bench", "--steps", "1", "--views", "identity", "hflip"],
    "kaggle_kernel build --experiments": ["kaggle_kernel build", "--experiments", "a", "b"],
    "kaggle_kernel build --tta": ["kaggle_kernel build", "--tta", "hflip", "d4"],
    "kaggle_kernel build --from-kernels": ["kaggle_kernel build", "--from-kernels", "u/a", "u/b"],
    "kaggle_kernel train --folds": ["kaggle_kernel train", "--folds", "0", "1"],
    "kaggle_kernel rehearse-train --folds": ["kaggle_kernel rehearse-train", "--folds", "0", "1"],
    "kaggle_kernel pull KERNELS": ["kaggle_kernel pull", "u/a", "u/b"],
}


def test_every_many_valued_option_is_listed():
    """A new nargs '+'/'*' option in a command joins MANY_VALUED (the overrides after it are tested)."""
    import re

    listed = {w for words in MANY_VALUED.values() for w in words if w.startswith("--")} | {"KERNELS"}
    for name in COMMANDS:
        text = (REPO / "src" / f"{name}.py").read_text() + (REPO / "src/core/cli.py").read_text()
        for flag in re.findall(r"""add_argument\("([-\w]+)", nargs=["']?[+*]""", text):
            assert flag in listed or flag == "kernels" and "KERNELS" in listed, (name, flag)


@pytest.mark.parametrize("where", ["trailing", "before --config"])
@pytest.mark.parametrize("case", list(MANY_VALUED))
def test_overrides_after_a_many_valued_option_are_overrides_and_the_last_wins(case, where, tmp_path, monkeypatch,
                                                                              capsys):
    """`--experiments a b train.epochs=0`: the override is taken (an invalid value stops the command in
    one sentence naming it), and of two, the later one wins wherever they stand."""
    (module, *verb), words = MANY_VALUED[case][0].split(), MANY_VALUED[case][1:]
    demo = str(CONFIG_DIR / "demo.yaml")
    rest = (["--config", demo, *words, "train.epochs=0"] if where == "trailing"
            else [*words, "train.epochs=1", "--config", demo, "train.epochs=0"])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        run_cli(importlib.import_module(f"src.{module}").main, [*verb, *rest])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    assert "train.epochs" in err and "the command line" in err, err


def test_a_flag_of_one_value_keeps_a_value_that_looks_like_an_override():
    import argparse

    from src.core.cli import parse_args

    parser = argparse.ArgumentParser()
    parser.add_argument("--rehearse-overrides", default=None)
    parser.add_argument("--folds", nargs="+", default=None)
    args = parse_args(parser, ["--folds", "0", "a.b=1", "--rehearse-o", "train.epochs=1", "c.d=2"])
    assert args.folds == ["0"] and args.rehearse_overrides == "train.epochs=1" and args.overrides == ["a.b=1", "c.d=2"]
