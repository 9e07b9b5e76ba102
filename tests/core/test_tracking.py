"""W&B tracking owned by the outermost command: src.tune's study run stays open for the whole
study while every trial fold gets its own run. Read back from W&B's real offline files."""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import pytest
import yaml
from wandb.proto import wandb_internal_pb2 as pb

from src.tuning.search import tune

_BLOCK = 32768  # W&B's transaction log is a LevelDB log: 32 KiB blocks of checksummed chunks


def wandb_records(path: Path):
    """Every protobuf Record in an offline run's run-<id>.wandb file."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, chunks = 7, b""
    while pos + 7 <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < 7:  # a block's tail too short for a chunk header is padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        body = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        chunks = body if kind in (1, 2) else chunks + body  # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(chunks)
            yield rec


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_run(path: Path) -> dict:
    """name, group, job type, history rows and final summary of one offline run."""
    run = {"history": [], "summary": {}, "exit": False}
    for rec in wandb_records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run.update(name=rec.run.display_name, group=rec.run.run_group, job_type=rec.run.job_type)
        elif kind == "history":
            run["history"].append({_key(i): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            run["summary"].update({_key(i): json.loads(i.value_json) for i in rec.summary.update})
        elif kind == "exit":
            run["exit"] = True
    return run


@pytest.fixture(scope="module")
def study_runs(demo_dir, overrides_for, tmp_path_factory):
    out = tmp_path_factory.mktemp("tracked")
    space = out / "space.yaml"
    space.write_text(yaml.safe_dump({
        "study": "tracked", "n_trials": 3, "timeout": None, "folds": [0, 1], "sampler_seed": 0, "pruner": "none",
        "pruner_startup_trials": 0, "pruner_warmup_epochs": 0,
        "params": {"optim.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
    }))
    overrides = overrides_for(demo_dir, out, "model.name=test_resnet", "train.epochs=1", "train.limit_batches=2",
                              "loader.num_workers=0", "data.check_images=false", "wandb.mode=offline")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study = tune("configs/demo.yaml", overrides, space)
    runs = [read_run(p) for p in sorted((out / "tracked" / "wandb").glob("offline-run-*/run-*.wandb"))]
    return study, runs, [str(w.message) for w in caught]


def test_tracking_never_failed(study_runs):
    _, _, caught = study_runs
    assert not [m for m in caught if "W&B" in m], caught


def test_the_study_run_logged_every_trial_and_its_result(study_runs):
    study, runs, _ = study_runs
    [study_run] = [r for r in runs if r["job_type"] == "tune"]
    assert study_run["name"] == "tracked-study" and study_run["group"] == "tracked" and study_run["exit"]
    logged = {row["trial"]: row for row in study_run["history"] if "trial" in row}
    assert sorted(logged) == [t.number for t in study.trials] == [0, 1, 2]
    for t in study.trials:
        assert logged[t.number]["state"] == t.state.name
        assert logged[t.number]["value"] == pytest.approx(t.value)
        assert logged[t.number]["optim.lr"] == pytest.approx(t.params["optim.lr"])
    summary = study_run["summary"]
    assert summary["n_trials"] == 3 and summary["n_complete"] == 3
    assert summary["best_trial"] == study.best_trial.number
    assert summary["best_value"] == pytest.approx(study.best_value)
    assert summary["trials/nrows"] == 3  # the trial table


def test_every_trial_fold_has_its_own_finished_run(study_runs):
    study, runs, _ = study_runs
    trial_runs = {r["name"]: r for r in runs if r["job_type"] == "trial"}
    assert sorted(trial_runs) == sorted(f"tracked-trial{t}-fold{k}" for t in range(3) for k in (0, 1))
    for r in trial_runs.values():
        assert r["group"] == "tracked" and r["exit"]
        assert len(r["history"]) >= 1 and "val_accuracy" in r["history"][0]
        assert "best_accuracy" in r["summary"]


def test_a_run_that_stops_in_its_start_checks_leaves_no_wandb_run(demo_dir, tiny_cfg, tmp_path):
    """Weights that are not there stop the fold while it is set up: the W&B run, opened only when
    something is logged, was never created; a fold that trains opens exactly one."""
    import src.train as train
    from src.core.utils import UserError

    cfg = tiny_cfg(demo_dir, tmp_path, "wandb.mode=offline", f"model.pretrained_path={tmp_path / 'nope.safetensors'}")
    with pytest.raises(UserError):
        train.run(cfg, 0)
    assert list(tmp_path.rglob("offline-run-*")) == []
    train.run(tiny_cfg(demo_dir, tmp_path, "wandb.mode=offline", "experiment.name=ok"), 0)
    assert len(list((tmp_path / "ok" / "wandb").glob("offline-run-*"))) == 1
