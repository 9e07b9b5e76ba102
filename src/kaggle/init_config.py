"""The config src.init writes: the survey's keys that differ from the recipe, each with its evidence as
a comment, checked by loading it, reading both tables, drawing the folds in memory and decoding a few
images before the file is written (atomically: a check that fails leaves nothing)."""

from __future__ import annotations

import os
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from src.core.config import CONFIG_DIR, Config, load_config, parse_override
from src.core.utils import UserError
from src.kaggle.survey import Survey, survey

HEADER = "# Written by python -m src.init"
SECTIONS = list(Config.model_fields)  # the file's sections in the schema's order
# written even where the recipe agrees, with their evidence: the metric (the folder cannot say it, so its
# source is said) and the task (the reading of the labels most costly to get silently wrong)
ALWAYS = {"metric.name", "data.task"}
SHOWN_IMAGES = 3  # images of each folder decoded by the dry check


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _given(overrides: list[str], metric: str | None) -> dict[str, Any]:
    given: dict[str, Any] = {}
    for text in overrides:
        given.update(_flat(parse_override(text)))
    if metric:
        given["metric.name"] = metric
    return given


def _target(out: str | None, name: str, force: bool, chain: set[Path]) -> Path:
    """The file to write: new, or one src.init wrote before (with --force); never a hand-written config."""
    path = Path(out) if out else Path("configs") / f"{name}.yaml"
    if path.suffix != ".yaml":
        raise UserError(f"--out {path} is not a .yaml file; name the config to write, e.g. configs/{name}.yaml")
    if path.resolve() in chain:
        raise UserError(f"--out {path} is the recipe the config builds on; give another --name or --out")
    if path.exists():
        if not path.read_text().startswith(HEADER):
            raise UserError(f"{path} exists and was not written by src.init; give another --name or --out (a "
                            "hand-written config is never replaced)")
        if not force:
            raise UserError(f"{path} exists (src.init wrote it); pass --force to replace it, or give another --name")
    return path


def _value(v: Any) -> str:
    return yaml.safe_dump([v], default_flow_style=True, width=10_000).strip()[1:-1]


def render(keys: dict[str, tuple[Any, str]], base: str, command: str) -> str:
    """The config's text: base, then each section's keys with their evidence as a comment."""
    lines = [f"{HEADER} ({date.today().isoformat()}): {command}",
             "# Each key says what was seen in the folder. Change one here, or re-run with key=value and --force.",
             f"base: {base}", ""]
    for section in SECTIONS:
        mine = {k: v for k, v in keys.items() if k.split(".")[0] == section}
        if not mine:
            continue
        lines.append(f"{section}:")
        body = [(f"  {k.split('.', 1)[1]}: {_value(v)}", why) for k, (v, why) in mine.items()]
        width = max(len(b) for b, _ in body) + 2
        lines += [f"{b:<{width}}# {why}" if why else b for b, why in body]
        lines.append("")
    return "\n".join(lines)


def _changed(s: Survey, data_dir: str) -> dict[str, tuple[Any, str]]:
    """The survey's keys (and the given ones) whose value differs from the recipe's."""
    defaults = s.defaults
    keys = {"data.dir": (data_dir, f"the competition folder ({len(s.files):,} files)")}
    for k, v in s.given.items():
        s.keys.setdefault(k, (v, "given on the command line"))
    for k, (v, why) in s.keys.items():
        if k not in defaults:
            raise UserError(f"{k} is not a config key; see configs/base.yaml for the keys")
        same = defaults[k] == v or (isinstance(v, list) and defaults[k] == list(v))
        if not same or k in ALWAYS:
            keys[k] = (v, why)
    return keys


def dry_check(cfg: Config) -> list[str]:
    """Read everything a first run reads, write nothing; what a fold will train on, as lines."""
    from src.core.tasks import task_of
    from src.data.folds import load_or_create_folds
    from src.data.image_cache import cache_root
    from src.data.images import read_image
    from src.data.tables import load_test_table, sample_id_col
    from src.evaluation.metrics import check_metric_fits

    df, classes, _ = load_or_create_folds(cfg, write=False)
    task = task_of(cfg, classes)
    check_metric_fits(cfg.metric.name, len(classes), task)
    test, sample = load_test_table(cfg.data, cache_root(cfg))
    fmt = task.resolve_format(cfg.ensemble.format, sample, sample_id_col(cfg.data), cfg.metric.name)
    sizes = []
    for what, paths in (("training", df["path"]), ("test", test["path"])):
        shapes = []
        for p in list(paths[:SHOWN_IMAGES]):
            try:
                shapes.append("x".join(map(str, read_image(p, cfg.data.dicom_window).shape)))
            except (OSError, ValueError, UserError) as e:
                raise UserError(f"{p} cannot be decoded ({str(e).splitlines()[0]}); replace it, or check "
                                "data.image_exts") from None
        sizes.append(f"{what} images decode ({', '.join(shapes)})")
    per_fold = df.groupby("fold").size()
    return [task.label_summary(df["label"]),
            f"folds: {cfg.data.n_folds}; a fold trains on about {len(df) - int(per_fold.mean()):,} images and "
            f"validates on {int(per_fold.min()):,}-{int(per_fold.max()):,}"
            + (f", grouped by {cfg.data.group_col}" if cfg.data.group_col else ""),
            f"test: {len(test):,} images; the submission: ensemble.format auto -> {fmt}, scored by {cfg.metric.name}",
            *sizes]


def init_config(folder: Path, *, name: str | None, competition: str | None, metric: str | None, base: str,
                out: str | None, guess: bool, force: bool, overrides: list[str]) -> Path:
    """Survey `folder`, check the config, write it; returns its path."""
    slug = competition or folder.resolve().name
    name = name or folder.resolve().name
    where = Path(out).parent if out else Path("configs")
    # the recipe beside the config to write (a project's own configs/), else the repository's
    base_path = next((p for p in (where / base, CONFIG_DIR / base, Path(base)) if p.is_file()), None)
    if base_path is None:
        raise UserError(f"--base {base} is not a recipe; use base.yaml, demo.yaml or a file under configs/recipes/")
    base_cfg = load_config(base_path)
    chain = {p.resolve() for p in (base_path, where / "base.yaml", CONFIG_DIR / "base.yaml")}
    path = _target(out, name, force, chain)
    s = survey(folder, slug, _given(overrides, metric), guess, _flat(base_cfg.to_dict()))
    keys = _changed(s, folder.as_posix())
    rel_base = os.path.relpath(base_path.resolve(), path.resolve().parent)
    command = " ".join(["python -m src.init", folder.as_posix(), *(["--guess"] if guess else []), *overrides])
    text = render(keys, rel_base, command)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".yaml", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        cfg = load_config(tmp, [f"experiment.name={path.stem}"])
        lines = dry_check(cfg)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _say(s, keys, lines, path)
    return path


def _say(s: Survey, keys: dict, lines: list[str], path: Path) -> None:
    print(f"{s.root}: what was seen")
    for k, (v, why) in ({"data.dir": keys["data.dir"]} | s.keys).items():
        kept = "" if k in keys else ", as the recipe has it"
        print(f"  {k} = {_value(v)}   ({why}{kept})")
    for line in [*s.said, *lines]:
        print(f"  {line}")
    print(f"wrote {path}; next:\n  python -m src.folds --config {path}\n  python -m src.train --config {path} "
          f"--fold all\n  python -m src.ensemble --config {path} --tta")


