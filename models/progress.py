"""Elapsed time and an estimate of the time left, for the log lines of long stages.

``Eta(total)`` is started when a stage starts; ``eta.step()`` after each of its ``total``
items returns e.g. ``"1 min 05 s elapsed, ~6 min 30 s left"`` (the mean time per item so far
times the items left).  Used by M's and K's training (per epoch) and the evaluation (per attack
vector); ``--no-progress`` leaves these estimates out, with the progress bars.
"""
from __future__ import annotations

import time


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return "%d s" % seconds
    if seconds < 3600:
        return "%d min %02d s" % divmod(seconds, 60)
    hours, rest = divmod(seconds, 3600)
    return "%d h %02d min" % (hours, rest // 60)


class Eta:
    """Progress of a stage of ``total`` items of about equal cost (``done`` already done)."""

    def __init__(self, total: int, done: int = 0, clock=time.time):
        if total < 0 or not 0 <= done <= total:
            raise ValueError("Eta needs 0 <= done <= total, got %r of %r" % (done, total))
        self.total, self.done, self._first, self._clock = int(total), int(done), int(done), clock
        self._start = clock()

    def step(self, n: int = 1) -> str:
        """Count ``n`` more items done; returns the elapsed time and the estimate."""
        self.done = min(self.total, self.done + int(n))
        elapsed = self._clock() - self._start
        finished = self.done - self._first
        if finished <= 0:
            return "%s elapsed" % format_seconds(elapsed)
        left = elapsed / finished * (self.total - self.done)
        return "%s elapsed, ~%s left" % (format_seconds(elapsed), format_seconds(left))
