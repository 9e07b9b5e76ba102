"""Optuna search over the training recipe, resumable, prunable, shareable across processes.

    python -m src.tune --config configs/demo.yaml                     # space: configs/tune/demo.yaml
    python -m src.tune --config configs/X.yaml --space configs/tune/X.yaml --n-trials 40
    python -m src.tune --config configs/X.yaml --storage postgresql://user@host/db   # many workers

--n-trials is the total wanted: a rerun resumes the study and adds trials up to it, and several
workers on one storage stop together at that total. Trial runs go to outputs/<study>/trial<N>/.
The config is checked with one dry run before the first trial. Running trials send heartbeats
(SQLite and RDB storages), so the trial of a worker killed with kill -9 is failed and replaced.
Writes outputs/<study>/best.yaml (a config src.train takes), history.png and importance.png.
"""

from __future__ import annotations

from src.core.cli import command_parser, parse_config, run_cli


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__)
    parser.add_argument("--space", default=None, help="search space YAML (default: configs/tune/<config stem>.yaml)")
    parser.add_argument("--n-trials", type=int, default=None, help="total finished trials wanted")
    parser.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    parser.add_argument("--study", default=None, help="study name (default: the space file's)")
    parser.add_argument("--storage", default=None, help="Optuna storage URL, or a *.log journal file")
    args, _ = parse_config(parser, argv)  # a config that cannot load stops here, before the study opens
    import optuna  # after parsing: --help imports nothing heavy

    from src.tuning.search import tune

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tune(args.config, args.overrides, args.space, args.n_trials, args.timeout, args.study, args.storage)


if __name__ == "__main__":
    run_cli(main, interrupted="interrupted: finished trials are kept in the study; run the same command again to continue it")
