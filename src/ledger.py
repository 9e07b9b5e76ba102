"""The submission ledger: CV (OOF) against the public leaderboard.

    python -m src.ledger                                  # the table, CV and LB side by side
    python -m src.ledger --lb submissions/a+b_tta.csv 0.9412   # record what Kaggle returned
    python -m src.ledger --ledger other/ledger.csv

Every submission that python -m src.ensemble writes adds a row to ledger.csv beside it
(submissions/ledger.csv by default); see src/ensembling/ledger.py for its columns.
"""

from __future__ import annotations

from pathlib import Path

from src.core.cli import command_parser, run_cli
from src.core.utils import UserError
from src.ensembling.ledger import DEFAULT_LEDGER, record_lb, show
from src.ensembling.write_guard import check_writable


def run(ledger: Path = DEFAULT_LEDGER, lb: tuple[str, float] | None = None) -> str:
    """Record a leaderboard score when `lb` is (file, score), then return the printed table."""
    if lb is not None:
        check_writable(ledger, None, "--ledger", "ledger", safe=str(DEFAULT_LEDGER))
        file, score = lb
        row = record_lb(ledger, file, score)
        print(f"recorded LB {score} for {row['file']} (CV {row['cv'] or 'n/a'})")
    text = show(ledger)
    print(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__)
    parser.add_argument("--ledger", type=Path, default=DEFAULT_LEDGER, help="ledger file (default: %(default)s)")
    parser.add_argument("--lb", nargs=2, metavar=("FILE", "SCORE"), default=None,
                        help="record the public leaderboard score of a submission file")
    args = parser.parse_args(argv)
    lb = None
    if args.lb is not None:
        try:
            lb = (args.lb[0], float(args.lb[1]))
        except ValueError:
            raise UserError(f"--lb takes a file and a number; '{args.lb[1]}' is not a number") from None
    run(args.ledger, lb)


if __name__ == "__main__":
    run_cli(main)
