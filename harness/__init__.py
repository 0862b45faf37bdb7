"""turnproof: a conformance and chaos harness for durable chat-turn stores.

The names below are the contract every implementation is written against.
"""

from harness.contract import (
    Adapter,
    InvalidArgument,
    Message,
    Run,
    RunAlreadyActive,
    TurnStore,
    Usage,
    UsageIn,
)

__all__ = [
    "Adapter",
    "InvalidArgument",
    "Message",
    "Run",
    "RunAlreadyActive",
    "TurnStore",
    "Usage",
    "UsageIn",
]
