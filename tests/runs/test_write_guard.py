"""The write guard (src/ensembling/write_guard.py) on the commands the bad-inputs table cannot run
(src.demo, src.bench), on folders laid out as runs leave them, and old ledgers without the sidecars
column. The guard reads paths only, never the task: the same check holds for every task kind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import src.bench as bench
import src.demo as demo
from src.core.cli import run_cli
from src.core.utils import UserError
from src.ensembling.ledger import append_row, free_submission_path, ledger_path, read_ledger, record_lb, sidecar_cell
from src.ensembling.write_guard import check_replaceable, check_writable

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def _fold(root: Path) -> Path:
    fold = root / "outputs" / "exp" / "fold0"
    fold.mkdir(parents=True)
    (fold / "done.json").write_text("{}")
    (fold / "oof.csv").write_text("id,fold\n")
    return fold


def _refused(capsys, main, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        run_cli(main, argv)
    err = capsys.readouterr().err.splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_demo_out_inside_a_run_folder_is_refused_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    fold = _fold(tmp_path)
    line = _refused(capsys, demo.main, ["--out", "outputs/exp/fold0/comp"])
    assert "--out outputs/exp/fold0/comp" in line and "the run folder" in line and "inputs/" in line
    assert sorted(p.name for p in fold.iterdir()) == ["done.json", "oof.csv"]


def test_bench_out_inside_a_run_folder_is_refused_before_benchmarking(tmp_path, monkeypatch, capsys, demo_dir):
    monkeypatch.chdir(tmp_path)
    _fold(tmp_path)
    line = _refused(capsys, bench.main, ["--config", str(DEMO_CONFIG), "--out", "outputs/exp/fold0/bench.jsonl", f"data.dir={demo_dir}",
                                         "experiment.output_dir=outputs", "runtime.device=cpu"])
    assert "--out outputs/exp/fold0/bench.jsonl" in line and "the run folder" in line and "outputs/bench/" in line
    assert not (tmp_path / "outputs/exp/fold0/bench.jsonl").exists()


def test_files_of_runs_bundles_and_records_are_refused_and_plain_files_are_not(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fold = _fold(tmp_path)
    (tmp_path / "build" / "dataset").mkdir(parents=True)
    (tmp_path / "build" / "dataset" / "MANIFEST.json").write_text("{}")
    (tmp_path / "w.pt").write_bytes(b"x")
    for path, what in [(fold / "x.csv", "the run folder"), (fold.parent / "x.csv", "the run folder"),
                       (tmp_path / "build" / "dataset" / "x.csv", "the Kaggle bundle"), (tmp_path / "w.pt", "checkpoint")]:
        with pytest.raises(UserError, match=what):
            check_writable(path, None, "--out", "submission")
    assert check_writable(tmp_path / "submissions" / "a.csv", None, "--out", "submission")
    # a build folder is replaced when it holds an earlier build only
    assert check_replaceable(tmp_path / "build", None, "--out", lambda n: n == "dataset", "kaggle_kernel/build")
    with pytest.raises(UserError, match="the run folder"):
        check_replaceable(fold.parent, None, "--out", lambda n: True, "kaggle_kernel/build")
    with pytest.raises(UserError, match="the working folder"):
        check_replaceable(tmp_path, None, "--out", lambda n: True, "kaggle_kernel/build")


def test_an_old_ledger_without_sidecars_loads_and_takes_scores(tmp_path):
    out = tmp_path / "submissions" / "a.csv"
    out.parent.mkdir()
    out.write_text("id,label\n1,3\n")
    (out.parent / "ledger.csv").write_text(f"time,file,cv,lb,sha1\n2024-01-01,{out},0.9,,\n")
    assert read_ledger(out.parent / "ledger.csv")["sidecars"].tolist() == [""]
    assert record_lb(out.parent / "ledger.csv", out, 0.8)["lb"] == "0.8"


def test_recorded_sidecars_are_compared_by_sha1(tmp_path):
    out = tmp_path / "submissions" / "a.csv"
    out.parent.mkdir()
    out.write_text("id,label\n1,3\n")
    texts = {"probs": "id,0,1\n1,0.2,0.8\n", "thresholds": json.dumps({"0": 0.5}), "blend": "{}"}
    append_row(ledger_path(out), {"file": str(out), "sha1": "0" * 40, "sidecars": sidecar_cell(out, texts)})
    assert free_submission_path(out, True, "0" * 40, sidecars=texts) == out  # the same files again
    for changed in ({**texts, "thresholds": json.dumps({"0": 0.3})}, {k: t for k, t in texts.items() if k != "thresholds"}):
        assert free_submission_path(out, False, "0" * 40, sidecars=changed) == out.with_name("a_v2.csv")
        with pytest.raises(UserError, match="a_thresholds.json"):
            free_submission_path(out, True, "0" * 40, sidecars=changed)
