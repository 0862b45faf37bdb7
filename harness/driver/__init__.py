"""Implementations in other languages (or other processes): the JSON-lines driver protocol.

`DriverAdapter(command)` turns an executable speaking docs/driver-protocol.md into an
ordinary Adapter; `python -m harness.worker` puts any Python adapter behind it.
"""

from harness.driver.client import (
    DriverAdapter,
    DriverError,
    DriverExited,
    DriverIndefiniteError,
    DriverOperationError,
    DriverProtocolError,
    DriverStartError,
    DriverStore,
    DriverTimeout,
)
from harness.driver.protocol import PROTOCOL_VERSION

__all__ = [
    "PROTOCOL_VERSION",
    "DriverAdapter",
    "DriverError",
    "DriverExited",
    "DriverIndefiniteError",
    "DriverOperationError",
    "DriverProtocolError",
    "DriverStartError",
    "DriverStore",
    "DriverTimeout",
]
