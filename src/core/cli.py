"""What every command's main() shares: the parser, `--config` with overrides, and the exit.

A command builds its parser with `command_parser(__doc__)`, adds its own flags, and reads the
config with `parse_config(parser, argv)` (overrides taken wherever they stand: `parse_args`); `run_cli(main)` turns a UserError into one line and exit
code 2, and Ctrl-C into exit code 130 with what was kept (the command says what; only a command
that can resume says how)."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable

from src.core.config import Config, add_config_args, load_config, require_competition
from src.core.tasks import FORMATS
from src.core.utils import UserError, one_sentence


def command_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser whose --help shows the command's docstring as written (its example commands)."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def parse_config(parser: argparse.ArgumentParser, argv: list[str] | None,
                 prepare: Callable[[argparse.Namespace], object] | None = None) -> tuple[argparse.Namespace, Config]:
    """Add --config and the trailing `section.key=value` overrides, parse (parse_args), and load the
    config (base < experiment < command line). `prepare(args)` runs before the config is loaded.

    A config that names no competition folder (data.dir) ends here, in one sentence that says how
    to name one, before anything is built or written."""
    args = parse_args(parser, argv)
    if prepare is not None:
        prepare(args)
    cfg = load_config(args.config, args.overrides)
    require_competition(cfg.data, args.config)
    return args, cfg


# an override's word: no leading dash, and no path separator before its '=' (a file is no override)
OVERRIDE_WORD = re.compile(r"^[^-/=][^/=]*=")


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Add --config and the overrides to `parser` and parse `argv`; args.overrides holds every
    `section.key=value` word in its order, wherever it stands (split_overrides), so that a flag with
    many values (--experiments A B, --tta hflip d4, --folds 0 1, --compare A B) never swallows one."""
    add_config_args(parser)
    words, overrides = split_overrides(parser, list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_intermixed_args(words)
    args.overrides = overrides
    return args


def split_overrides(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], list[str]]:
    """(the words for argparse, the overrides): a `key=value` word is an override unless it is the
    value of a flag that takes a fixed number of values (--out, --config, --rehearse-overrides)."""
    words, overrides, owed = [], [], 0
    for w in argv:
        if owed:
            owed -= 1
            words.append(w)
        elif OVERRIDE_WORD.match(w):
            overrides.append(w)
        else:
            words.append(w)
            owed = _values_taken(parser, w)
    return words, overrides


def _values_taken(parser: argparse.ArgumentParser, word: str) -> int:
    """How many of the next words the flag `word` (or an unambiguous prefix of one) takes as its
    values whatever they look like: 1 or N for a fixed count, 0 for a switch, many values or no flag."""
    if not word.startswith("-") or "=" in word:
        return 0
    flags = parser._option_string_actions  # argparse keeps no public table of a parser's flags
    names = [word] if word in flags else [f for f in flags if f.startswith(word) and f.startswith("--")]
    if len(names) != 1:
        return 0
    nargs = flags[names[0]].nargs
    return 1 if nargs is None else (nargs if isinstance(nargs, int) else 0)


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None, *,
            interrupted: str = "interrupted") -> None:
    """Run an entry point: a UserError becomes one line on stderr and exit code 2; Ctrl-C prints
    `interrupted` (what was kept, and how to continue where the command can) and exits with 130."""
    try:
        main(argv)
    except UserError as e:
        print(f"error: {one_sentence(e)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        sys.exit(130)


# ---------------------------------------------------------------- the flags every command that blends takes


def parse_weights(text: str) -> str | list[float]:
    if text in ("equal", "auto"):
        return text
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--weights takes equal, auto or w1,w2,..., not '{text}'") from None


def add_blend_args(parser: argparse.ArgumentParser, fmt: bool = True) -> None:
    """The flags every command that blends takes (src.ensemble, src.kaggle_kernel; src.pseudo
    without --format)."""
    parser.add_argument("--experiments", nargs="+", default=None, help="member experiments (default: the config's)")
    tta = parser.add_mutually_exclusive_group()
    tta.add_argument("--tta", nargs="*", default=None,
                     help="TTA views (default, or without names: ensemble.tta); auto [CANDIDATES]: keep the views "
                          "that improve the OOF blend, greedily (candidates default to ensemble.tta)")
    tta.add_argument("--no-tta", action="store_true", help="identity view only")
    parser.add_argument("--weights", type=parse_weights, default=None, help="equal | auto | w1,w2,...")
    parser.add_argument("--voting", choices=["soft", "geometric", "logits", "hard", "rank"], default=None)
    if fmt:
        parser.add_argument("--format", dest="fmt", choices=["auto", *FORMATS], default=None)


def split_blend_args(args: argparse.Namespace) -> list[str] | None:
    """Set and return args.views, the views asked for: None for ensemble.tta, ['identity'] for --no-tta
    (an empty --tta, or --tta with only overrides after it, is ensemble.tta too)."""
    args.views = ["identity"] if args.no_tta else (args.tta or None)
    return args.views
