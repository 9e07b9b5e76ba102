"""Progress in logs: plain lines, not a bar's carriage returns, when the output is not a terminal."""

from __future__ import annotations

import io

import src.core.progress as progress_module
from src.core.progress import progress


class _Clock:
    """time.time for the progress module, advanced by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_log_lines_are_spaced_and_the_last_one_is_printed(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(progress_module.time, "time", clock)
    out = io.StringIO()
    bar = progress(range(10), desc="validation", stream=out)
    for i in bar:
        clock.now += 7.0  # 7 s an item: lines after items 5 and 10 (30 s apart); the last is not repeated
        bar.set_postfix(loss=f"{i / 10:.2f}")
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0] == "validation: 5/10 (50%) in 35 s loss 0.40"
    assert lines[-1] == "validation: 10/10 (100%) in 70 s loss 0.90"
    assert len(lines) == 2


def test_the_closing_line_of_a_slow_pass(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(progress_module.time, "time", clock)
    out = io.StringIO()
    for _ in progress(range(4), desc="checking images", stream=out):
        clock.now += 2.0
    assert out.getvalue().splitlines() == ["checking images: 4/4 (100%) in 8 s"]


def test_a_quick_pass_prints_nothing(monkeypatch):
    out = io.StringIO()
    assert list(progress([1, 2, 3], desc="quick", stream=out)) == [1, 2, 3]
    assert out.getvalue() == ""


def test_a_terminal_gets_a_tqdm_bar():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    assert list(progress(range(3), desc="bar", stream=out)) == [0, 1, 2]
    assert "bar" in out.getvalue() and "\r" in out.getvalue()
