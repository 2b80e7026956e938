"""The load tester's one exception."""
from __future__ import annotations


class LoadtestError(Exception):
    """A problem that stops the load test before or during the run, described in one sentence."""
