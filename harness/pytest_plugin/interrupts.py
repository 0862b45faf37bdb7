"""Ctrl-C between a fixture's set-up or tear-down steps, never in the middle of one.

anyio's pytest runner runs every async fixture and test in one long-lived task. A
KeyboardInterrupt raised while the event loop is inside a fixture leaves that task
suspended there; the session's clean-up re-enters the loop, the task resumes the
interrupted fixture (a half-made connection, say), and its outcome escapes the run as
a traceback, with no report. anyio recovers from an interrupted test, not from an
interrupted fixture (agronholm/anyio#1060). So, in a run that selected scenarios,
SIGINT is held while a fixture is set up or while a test's fixtures are torn down,
each bounded by the operation timeout, and raised as soon as that step is over; a
second Ctrl-C is not held. Tests themselves are interrupted at once.

A sub-plugin of `harness.pytest_plugin`; it only ever replaces the default SIGINT
handler, in the main thread, and only for the length of one step.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from types import FrameType

import pytest

from harness.pytest_plugin.run import RUN_PLUGIN_NAME, TurnproofRun


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(request: pytest.FixtureRequest) -> Generator[None, object, object]:
    with _held(request.config):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, object, object]:
    with _held(item.config):
        return (yield)


@contextmanager
def _held(config: pytest.Config) -> Iterator[None]:
    run = config.pluginmanager.get_plugin(RUN_PLUGIN_NAME)
    if (
        not isinstance(run, TurnproofRun)
        or not run.selected
        or threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    pressed: list[bool] = []

    def hold(_signum: int, _frame: FrameType | None) -> None:
        if pressed:
            raise KeyboardInterrupt
        pressed.append(True)

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if pressed:  # the user asked to stop: that outranks how the step itself ended
            raise KeyboardInterrupt
