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

Where else an interrupt went astray, and what the run's SIGINT handler (`_Interrupt`)
does instead:
- Raised inside a task (a race's task group, an async test's own task), it left
  anyio's runner spinning on the group's cancellation, or the test's call waiting with
  its wake-up queued, to raise again in the clean-up, out of the run. A press that
  lands while the event loop runs is raised from a callback of the loop, outside every
  task, which anyio recovers from; a KeyboardInterrupt a test raises inside its task
  has its call cancelled before the clean-up (`pytest_runtest_call`), and one inside a
  task group stops the run rather than failing the test.
- Raised where Python drops exceptions (a gc callback, a `__del__`), it vanished, and
  the run went on to the end. The handler remembers the press, and the test under way
  is the last one (`pytest_runtest_protocol`).

A sub-plugin of `harness.pytest_plugin`; in a run that selected scenarios it replaces
the default SIGINT handler, in the main thread, for the length of the session. It
also gives every frame of an interrupt's traceback a line number before pytest
reports it (see `pytest_keyboard_interrupt`).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import NoReturn

import pytest
from anyio import pytest_plugin as anyio_pytest_plugin

from harness.pytest_plugin.run import RUN_PLUGIN_NAME, TurnproofRun


class _Interrupt:
    """The run's SIGINT handler. Outside an event loop it raises KeyboardInterrupt where
    it lands, as the default one does, and remembers the press in case that exception is
    dropped. Inside the loop it raises from a callback of the loop instead: raised inside
    a task, or a task of a task group, the interrupt left anyio's runner waiting forever
    on that group's cancellation, or came back from the task in the clean-up. A second
    press raises at once (a task that never yields to the loop)."""

    def __init__(self) -> None:
        self.pressed = False
        self.delivered = False

    def __call__(self, _signum: int, _frame: FrameType | None) -> None:
        if not self.pressed:
            self.pressed = True
            with contextlib.suppress(RuntimeError):  # no loop runs in this thread
                asyncio.get_running_loop().call_soon_threadsafe(self.deliver)
                return
        self.deliver()

    def deliver(self) -> None:
        if not self.delivered:
            self.stop()

    def stop(self) -> NoReturn:
        """Raise the run's interrupt now, counted as pressed and delivered."""
        self.pressed = self.delivered = True
        raise KeyboardInterrupt


_HANDLER = pytest.StashKey[_Interrupt]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    handler = _handler(item.config)
    result = yield
    if handler is not None and handler.pressed:  # its KeyboardInterrupt was dropped
        handler.stop()
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    try:
        return (yield)
    except KeyboardInterrupt:
        _cancel_the_interrupted_call()
        raise
    except BaseExceptionGroup as group:
        pressed, _ = group.split(KeyboardInterrupt)
        if pressed is None:
            raise
        _cancel_the_interrupted_call()
        raise KeyboardInterrupt from group  # an interrupted task group: the run's, not a FAIL


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    handler = session.config.stash.get(_HANDLER, None)
    if handler is not None and signal.getsignal(signal.SIGINT) is handler:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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


def _handler(config: pytest.Config) -> _Interrupt | None:
    """The run's SIGINT handler, installed at its first test: only in a run that selected
    scenarios, in the main thread, in place of the default one."""
    handler = config.stash.get(_HANDLER, None)
    if handler is None:
        run = config.pluginmanager.get_plugin(RUN_PLUGIN_NAME)
        if (
            not isinstance(run, TurnproofRun)
            or not run.selected
            or threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        ):
            return None
        handler = config.stash[_HANDLER] = _Interrupt()
        signal.signal(signal.SIGINT, handler)
    return handler if signal.getsignal(signal.SIGINT) is handler else None


def _cancel_the_interrupted_call() -> None:
    """anyio's runner (4.16) runs each async test as a call in its runner task; a
    KeyboardInterrupt raised inside that task ends it, and the call's task is left
    waiting with its wake-up queued. The clean-up's next loop run would raise the
    interrupt from it again, out of the run, or find the ended runner task and fail on
    its closed stream. The call is cancelled here, and the runner starts a fresh task
    for the clean-up (agronholm/anyio#1060 covers a test interrupted while it waits)."""
    runner = getattr(anyio_pytest_plugin, "_current_runner", None)
    if runner is None:
        return
    runner_task = getattr(runner, "_runner_task", None)
    if isinstance(runner_task, asyncio.Task) and runner_task.done():
        runner_task.exception()  # retrieved: the interrupt is being reported
        runner._runner_task = None
    loop = runner.get_loop()
    calls = [
        task
        for task in asyncio.all_tasks(loop)
        if getattr(task.get_coro(), "__qualname__", "") == "TestRunner._call_in_runner_task"
    ]
    for task in calls:
        task.cancel()
    if calls:
        loop.run_until_complete(asyncio.gather(*calls, return_exceptions=True))


@contextmanager
def _held(config: pytest.Config) -> Iterator[None]:
    handler = _handler(config)
    if handler is None:
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
        signal.signal(signal.SIGINT, handler)
        if pressed:  # the user asked to stop: that outranks how the step itself ended
            handler.stop()
