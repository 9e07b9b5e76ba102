"""Optuna workers sharing one study on a real PostgreSQL server: the storage for workers on several
machines. A throwaway server (initdb + pg_ctl in a temporary folder, listening on a unix socket
only) is started when PostgreSQL's binaries are installed; the test skips itself, saying why, when
they or the driver (psycopg) are absent. (SQLite and the journal file: tests/tuning/test_tune.py.)
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import TRIAL

from src.core.utils import UserError
from src.tuning.study import COUNTED as FINISHED
from src.tuning.study import RUNNING, storage_for

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "demo.yaml"


def _pg_bin() -> Path | None:
    """The folder of initdb and pg_ctl: Debian keeps them in /usr/lib/postgresql/<version>/bin, off PATH."""
    found = [Path(p).parent for p in (shutil.which("initdb"),) if p]
    found += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name, reverse=True)
    return next((d for d in found if (d / "initdb").is_file() and (d / "pg_ctl").is_file()), None)


@pytest.fixture
def postgres() -> str:
    """A PostgreSQL server of its own for one test; its URL. Stopped and removed afterwards."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL's initdb and pg_ctl are not installed (Debian: apt-get install postgresql)")
    if importlib.util.find_spec("psycopg") is None:
        pytest.skip("the PostgreSQL driver psycopg is not installed (pip install -e '.[postgres]')")
    root = Path(tempfile.mkdtemp(prefix="pg-"))  # not under pytest's tmp dir, which only its owner may enter
    owner: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        owner = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    data, log = root / "data", root / "server.log"

    def pg(*args: str) -> None:
        subprocess.run([*owner, *args], check=True, capture_output=True, text=True, timeout=120)

    try:
        pg(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
        # A socket in the temporary folder, no TCP port: nothing to collide with; no fsync: throwaway.
        pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
           "-o", f"-k {root} -c listen_addresses='' -F", "start")
    except subprocess.CalledProcessError as e:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"the throwaway PostgreSQL server did not start: {e.stderr}\n"
                    f"{log.read_text() if log.is_file() else ''}")
    try:
        yield f"postgresql://postgres@/postgres?host={root}"
    finally:
        subprocess.run([*owner, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _space(path: Path) -> Path:
    body = {"study": "pg", "n_trials": 3, "folds": [0], "sampler_seed": 0, "pruner": "none",
            "pruner_startup_trials": 0, "pruner_warmup_epochs": 0, "heartbeat_interval": 2, "heartbeat_grace": 20,
            "params": {"optim.lr": {"type": "float", "low": 1e-3, "high": 2e-2, "log": True}}}
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


@pytest.mark.slow
def test_two_workers_on_postgresql_finish_exactly_the_requested_trials(postgres, demo_dir, tmp_path, overrides_for,
                                                                       tune_workers):
    out = tmp_path / "out"
    logs = [tmp_path / "w0.txt", tmp_path / "w1.txt"]
    codes = tune_workers(["--config", str(CONFIG), "--space", str(_space(tmp_path / "space.yaml")), "--n-trials", "3",
                          "--storage", postgres, *overrides_for(demo_dir, out, *TRIAL)], logs)
    assert codes == [0, 0], "\n\n".join(log.read_text()[-3000:] for log in logs)

    trials = optuna.load_study(study_name="pg", storage=storage_for(postgres, "pg", str(out))).get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == 3, [(t.number, t.state.name, t.user_attrs) for t in trials]
    assert not [t for t in trials if t.state == RUNNING]
    assert len({t.number for t in finished}) == 3
    assert len({tuple(sorted(t.params.items())) for t in finished}) == 3  # each trial drew its own values
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers took part
    for t in finished:
        assert (out / "pg" / f"trial{t.number}" / "fold0" / "done.json").is_file()


@pytest.mark.parametrize("url,says", [
    ("mysql://u@localhost/db", "needs the database driver"),
    ("nosuchdb://u@h/x", "knows no database 'nosuchdb'"),
    ("not-a-url", "neither a database URL nor a *.log journal file"),
])
def test_unusable_storage_urls_stop_with_one_sentence(url, says):
    with pytest.raises(UserError, match=rf"^--storage .*{re.escape(says)}"):
        storage_for(url, "s", "unused")


def test_a_password_is_not_repeated_in_the_error():
    with pytest.raises(UserError) as e:
        storage_for("mysql://user:secret@localhost/db", "s", "unused")
    assert "secret" not in str(e.value) and "user:***@localhost" in str(e.value)
