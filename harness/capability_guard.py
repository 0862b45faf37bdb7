"""Capability hygiene: a scenario may call only the operations of the capabilities it needs.

An adapter is certified on the capabilities it declares, and a scenario is skipped when the
adapter lacks one it needs. A scenario that quietly calls an operation of some other
capability (a USG-1 set-up using `append_step`, say) would score the adapter's missing
operation as a FAIL of a requirement it does implement. The guarded store makes that the
suite's bug instead: the call raises `CapabilityViolation`, a HarnessError (no verdict), naming
the scenario, the operation and the capability it belongs to.

    guard_store(store, allowed=frozenset({"turns", "usage"}), scenario="scenarios.x::test_y")

Which capability each operation belongs to is `harness.requirements.OPERATION_CAPABILITIES`.
Everything that is not a contract operation (`aclose`, and `kill`, `freeze`, `worker_pid` of
a store in a process of its own) is forwarded unchanged, so the harness can still close or
kill a guarded store.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

from harness.contract import TurnStore
from harness.errors import HarnessError
from harness.requirements import ARGUMENT_CAPABILITIES, OPERATION_CAPABILITIES


class CapabilityViolation(HarnessError):
    """A scenario called an operation outside the capabilities it requires: the suite's bug."""

    def __init__(
        self, scenario: str, operation: str, needs: frozenset[str], allowed: frozenset[str]
    ) -> None:
        self.scenario = scenario
        self.operation = operation
        self.needs = needs
        self.allowed = allowed
        super().__init__(
            f"{scenario} called {operation}, an operation of capability "
            f"{' or '.join(repr(c) for c in sorted(needs))}, but the scenario requires only "
            f"{', '.join(repr(c) for c in sorted(allowed)) or 'nothing'}: the suite's bug "
            "(declare the capability with @pytest.mark.capability or stop calling it), "
            "not the implementation's"
        )


class GuardedStore:
    """A TurnStore restricted to the operations of `allowed`; everything else forwarded."""

    def __init__(self, store: TurnStore, *, allowed: frozenset[str], scenario: str) -> None:
        self._store = store
        self._allowed = allowed
        self._scenario = scenario

    def __getattr__(self, name: str) -> Any:
        needs = OPERATION_CAPABILITIES.get(name)
        if needs is None:
            if name.startswith("__"):  # copy/pickle probing a half-built instance
                raise AttributeError(name)
            return getattr(self._store, name)
        if not needs & self._allowed:
            return self._refused(name, needs)
        target = getattr(self._store, name)
        arguments = {arg: cap for (op, arg), cap in ARGUMENT_CAPABILITIES.items() if op == name}
        return self._checking_arguments(name, target, arguments) if arguments else target

    def _violation(self, operation: str, needs: frozenset[str]) -> CapabilityViolation:
        return CapabilityViolation(self._scenario, operation, needs, self._allowed)

    def _refused(self, name: str, needs: frozenset[str]) -> Callable[..., Any]:
        """Raises at the call itself, so even an un-awaited call cannot go unnoticed."""

        def refused(*args: Any, **kwargs: Any) -> Any:
            raise self._violation(name, needs)

        return refused

    def _checking_arguments(
        self, name: str, target: Callable[..., Awaitable[Any]], arguments: dict[str, str]
    ) -> Callable[..., Awaitable[Any]]:
        def checked(*args: Any, **kwargs: Any) -> Awaitable[Any]:
            for argument, capability in arguments.items():
                if kwargs.get(argument) is not None and capability not in self._allowed:
                    raise self._violation(f"{name}({argument}=...)", frozenset({capability}))
            return target(*args, **kwargs)

        return checked

    def __repr__(self) -> str:
        return f"<guarded {self._store!r} for {self._scenario}: {sorted(self._allowed)}>"


def guard_store(store: TurnStore, *, allowed: frozenset[str], scenario: str) -> TurnStore:
    """`store`, restricted to the operations of the `allowed` capabilities."""
    return cast(TurnStore, GuardedStore(store, allowed=frozenset(allowed), scenario=scenario))
