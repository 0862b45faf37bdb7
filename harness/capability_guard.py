"""Capability hygiene: a scenario may call only the operations of the capabilities it needs.

STUB, to be implemented (helper H2). Fixed interface, used by the pytest plugin (open_store,
store) and by the race engine (its `store_wrapper`):

    guard_store(store, allowed=frozenset({"turns", "usage"}), scenario="scenarios.x::test_y")

returns a TurnStore that forwards every operation of a capability in `allowed` and raises
`CapabilityViolation` (a HarnessError: the suite's bug, no verdict) for any other.
"""

from __future__ import annotations

from harness.contract import TurnStore
from harness.errors import HarnessError


class CapabilityViolation(HarnessError):
    """A scenario called an operation outside the capabilities it requires: the suite's bug."""


def guard_store(store: TurnStore, *, allowed: frozenset[str], scenario: str) -> TurnStore:
    """`store`, restricted to the operations of the `allowed` capabilities."""
    return store
