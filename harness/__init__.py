"""turnproof: a conformance and chaos harness for durable chat-turn stores.

The names below are the contract every implementation is written against, and the
harness's error tree (harness.errors).
"""

from harness.contract import (
    Adapter,
    InvalidArgument,
    Message,
    Run,
    RunAlreadyActive,
    StreamWriter,
    Timers,
    TurnStore,
    Usage,
    UsageIn,
)
from harness.errors import (
    HarnessError,
    ImplementationFailure,
    OperationTimeout,
    TurnproofError,
    UsageError,
)

__all__ = [
    "Adapter",
    "HarnessError",
    "ImplementationFailure",
    "InvalidArgument",
    "Message",
    "OperationTimeout",
    "Run",
    "RunAlreadyActive",
    "StreamWriter",
    "Timers",
    "TurnStore",
    "TurnproofError",
    "Usage",
    "UsageError",
    "UsageIn",
]
