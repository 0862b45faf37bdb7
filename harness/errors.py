"""Errors that are the harness's own, never a verdict on the implementation under test."""

from __future__ import annotations


class HarnessError(Exception):
    """Something the harness could not do or could not prove; reported apart from failures."""


class ScenarioPremiseError(HarnessError):
    """A scenario's premise did not hold (a machine stall made a fresh row stale, say).

    Judging the implementation on a premise that did not hold would turn a slow
    machine into a wrong verdict, so the scenario stops here instead.
    """
