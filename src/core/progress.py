"""Progress of long passes: a tqdm bar on a terminal, plain lines in logs (Kaggle, cluster jobs),
where a bar prints nothing or one line per refresh."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator

from tqdm import tqdm

LINE_EVERY_S = 30.0  # at most one log line per this many seconds while a pass runs
END_LINE_AFTER_S = 5.0  # and a closing line for a pass that took at least this long


class _Lines:
    """tqdm's iterate-and-set_postfix interface, printed as a line now and then."""

    def __init__(self, iterable: Iterable, total: int | None, desc: str, stream):
        self.iterable, self.total, self.desc, self.stream = iterable, total, desc, stream
        self.postfix: dict[str, str] = {}

    def set_postfix(self, **kwargs) -> None:
        self.postfix = {k: str(v) for k, v in kwargs.items()}

    def _line(self, n: int, t0: float) -> None:
        share = f" ({100 * n / self.total:.0f}%)" if self.total else ""
        extra = "".join(f" {k} {v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {n}/{self.total or '?'}{share} in {time.time() - t0:.0f} s{extra}", file=self.stream,
              flush=True)

    def __iter__(self) -> Iterator:
        t0 = last = time.time()
        n = shown = 0
        for n, item in enumerate(self.iterable, 1):
            yield item
            if time.time() - last >= LINE_EVERY_S:
                self._line(n, t0)
                last, shown = time.time(), n
        if n and n != shown and time.time() - t0 >= END_LINE_AFTER_S:
            self._line(n, t0)


def progress(iterable: Iterable, total: int | None = None, desc: str = "", stream=None):
    """Iterate with a progress display on `stream` (default stderr): a bar when it is a terminal,
    otherwise a line at most every LINE_EVERY_S seconds, and one at the end of a pass that took
    END_LINE_AFTER_S or more."""
    stream = stream or sys.stderr
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if stream.isatty():
        return tqdm(iterable, total=total, desc=desc, leave=False, file=stream)
    return _Lines(iterable, total, desc, stream)
