"""The ensemble, the pseudo-labels and the Kaggle bundle write, byte for byte, what the code that
stored tests/fixtures/blend/ wrote from the same members (their finished folds and cached
predictions): on every demo task, the submission and its probabilities, the pseudo-label table
and its record, the bundle's fitted decisions and the submission its notebook writes with them.
A change to how a blend is fitted or decided shows here; regenerate the fixtures
(python tests/ensembling/blend_cases.py) only for a change meant to alter them, and say so."""

from __future__ import annotations

import re
import shutil

import pytest
from blend_cases import FIXTURES, blend_outputs
from conftest import TASKS


@pytest.mark.parametrize("task", TASKS)
def test_the_blends_write_what_they_wrote(task, task_competition, tmp_path, capsys):
    comp, config, overrides = task_competition(task)
    out = tmp_path / "outputs"
    shutil.copytree(FIXTURES / task / "outputs", out)
    got = blend_outputs(task, comp, config, overrides, out, tmp_path / "work")
    computed = re.findall(r"(\d+) computed", capsys.readouterr().out)
    assert computed and set(computed) == {"0"}  # every prediction read from the stored members
    expected = {p.name: p.read_bytes() for p in (FIXTURES / task / "expected").iterdir()}
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert got[name] == expected[name], f"{task}: {name} differs from the stored one"
