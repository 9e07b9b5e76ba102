"""Assign stratified folds once per competition, shared by every experiment and ensemble.

    python -m src.folds [--config configs/demo.yaml] [section.key=value ...]
    python -m src.folds --config configs/demo.yaml --relabel outputs/demo/suspect_labels.csv

The split is written to outputs/folds/<competition>_k<n>_s<seed>[_g<group>].csv with its class
list beside it (.json). A different fold count or seed is a different file; an existing file
whose ids no longer match train.csv stops the run instead of being rewritten.

--relabel takes a reviewed suspect_labels.csv (src.report; its `reviewed_label` column filled
where a label is wrong) or any id,label CSV, writes the labels that change to
outputs/folds/relabel/<competition>_<sha8>.csv and a split of their own beside the base split
(same folds and classes), and prints the `data.relabel=...` setting that trains on them.
"""

from __future__ import annotations

from pathlib import Path

from src.core.cli import command_parser, parse_config, run_cli
from src.core.config import Config
from src.core.utils import UserError


def relabel(cfg: Config, reviewed_file: str | Path) -> Config:
    """Write the reviewed labels (content-addressed) and their split; the config that trains on them."""
    from src.core.tasks import task_of
    from src.data.folds import load_or_create_folds
    from src.data.image_cache import cache_root
    from src.data.relabel import check_reviewed, check_reviewed_answers, read_reviewed, write_relabel
    from src.data.tables import load_train_table

    if cfg.data.relabel:
        raise UserError(f"data.relabel is already set ({cfg.data.relabel}); --relabel starts from train.csv's labels, "
                        "so set data.relabel=null and give one file with every reviewed label")
    reviewed = read_reviewed(reviewed_file)
    if reviewed.empty:  # said before the split is made: a failed --relabel writes nothing
        raise UserError(f"{reviewed_file} reviews no label; fill its reviewed_label column where a label is wrong "
                        "(empty keeps the label)")
    table = load_train_table(cfg.data, cache_root(cfg))
    check_reviewed_answers(reviewed, table, reviewed_file)  # before the split is made
    base, classes, base_path = load_or_create_folds(cfg, table=table)
    changed = check_reviewed(reviewed, base, task_of(cfg, classes), reviewed_file)
    if changed.empty:
        raise UserError(f"{reviewed_file} changes no label of train.csv; fill its reviewed_label column where a label "
                        "is wrong (empty keeps the label)")
    path = write_relabel(changed, base_path.parent / "relabel", Path(cfg.data.dir).resolve().name)
    print(f"{len(changed)} labels changed (of {len(base)}), written to {path}")
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"relabel": str(path)})})


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__)
    parser.add_argument("--relabel", metavar="FILE", default=None,
                        help="reviewed labels: suspect_labels.csv with reviewed_label filled, or an id,label CSV")
    args, cfg = parse_config(parser, argv)
    from src.core.tasks import task_of
    from src.data.folds import (  # after parsing: --help imports nothing heavy
        fold_counts,
        folds_path,
        load_or_create_folds,
    )

    if args.relabel:
        cfg = relabel(cfg, args.relabel)
    existed = folds_path(cfg).is_file()
    df, classes, path = load_or_create_folds(cfg)
    task = task_of(cfg, classes)
    print(f"{'kept existing' if existed else 'wrote'} {path}: {len(df)} images, {len(classes)} {task.noun}, "
          f"{cfg.data.n_folds} folds")
    print(fold_counts(df, classes, task).to_string())
    if args.relabel:
        print(f"train on the reviewed labels with data.relabel={cfg.data.relabel} (on the command line, or under "
              "data: in the experiment's YAML), under a new experiment.name to keep the old run to compare")


if __name__ == "__main__":
    run_cli(main)
