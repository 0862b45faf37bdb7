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
handler, in the main thread, and only for the length of one step. It also gives every
frame of an interrupt's traceback a line number before pytest reports it (see
`pytest_keyboard_interrupt`).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType

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


@pytest.hookimpl(tryfirst=True)
def pytest_keyboard_interrupt(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    """Python 3.11 can interrupt a frame at an instruction that has no line number; the
    traceback then says None for its line, and pytest's report of the interrupt raises
    TypeError on it, which escapes the run as a traceback (exit 1, not 130). Each such
    frame is given the first line of its function instead, in the whole chain."""
    exception: BaseException | None = excinfo.value
    seen: set[int] = set()
    while exception is not None and id(exception) not in seen:
        seen.add(id(exception))
        if exception.__traceback__ is not None:
            exception.__traceback__ = _numbered(exception.__traceback__)
        exception = exception.__cause__ or exception.__context__
    if excinfo.value.__traceback__ is not None:
        excinfo.traceback = pytest.ExceptionInfo.from_exception(excinfo.value).traceback


def _numbered(traceback: TracebackType) -> TracebackType:
    entries: list[TracebackType] = []
    entry: TracebackType | None = traceback
    while entry is not None:
        entries.append(entry)
        entry = entry.tb_next
    if all(e.tb_lineno is not None for e in entries):
        return traceback
    rebuilt: TracebackType | None = None
    for e in reversed(entries):
        line = e.tb_lineno if e.tb_lineno is not None else e.tb_frame.f_code.co_firstlineno
        rebuilt = TracebackType(rebuilt, e.tb_frame, e.tb_lasti, line)
    assert rebuilt is not None
    return rebuilt


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
