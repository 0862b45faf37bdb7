"""The harness's one error tree: every exception the harness raises sits below TurnproofError.

Classification of a scenario's outcome follows the tree:

- `UsageError`: the user's set-up (bad option, unreachable server, an adapter that
  cannot even be installed): one line, exit 2, before any verdict;
- `HarnessError`: the harness could not do or prove something (proxy, gate, engine,
  PostgreSQL, a scenario's premise): no verdict, reported apart from failures;
- `ImplementationFailure`: the implementation under test broke the contract (it is an
  AssertionError too, so plain `assert`s in scenarios are the same branch).
"""

from __future__ import annotations

from collections.abc import Iterator


class TurnproofError(Exception):
    """Base of every exception the harness raises on purpose."""


class UsageError(TurnproofError):
    """The user's set-up is wrong: reported as one line, exit code 2."""


class HarnessError(TurnproofError):
    """Something the harness could not do or could not prove; reported apart from failures."""


class ScenarioPremiseError(HarnessError):
    """A scenario's premise did not hold (a machine stall made a fresh row stale, say).

    Judging the implementation on a premise that did not hold would turn a slow
    machine into a wrong verdict, so the scenario stops here instead.
    """


class ImplementationFailure(TurnproofError, AssertionError):
    """The implementation under test broke a requirement: the one branch that is a FAIL."""


class OperationTimeout(ImplementationFailure):
    """An in-process adapter's install(), connect() or store operation did not return within
    the run's bound: a hang is the implementation's failure, named by what was in flight."""


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside exception groups (a task group raises one), or `exc` itself."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner)
    else:
        yield exc
