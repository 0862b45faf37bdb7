"""Errors of the proxy core, each carrying the HTTP status the Toxiproxy API answers with.

The core raises them and the HTTP layer only translates, so that the in-process API and
the HTTP API can never disagree about what is an error.
"""

from __future__ import annotations

from harness.errors import HarnessError


class ProxyError(HarnessError):
    """Base class: `message` and the HTTP `status` of a failed request.

    A HarnessError: inside a scenario, a proxy that fails (a gate wait that runs out, a
    listener that cannot bind) leaves no verdict; it is never the implementation's FAIL.
    """

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ProxyError, ValueError):
    """Malformed or invalid input (400)."""

    status = 400


class NotFound(ProxyError, LookupError):
    """No such proxy, toxic or gate (404)."""

    status = 404


class Conflict(ProxyError):
    """A proxy or toxic of that name already exists (409)."""

    status = 409


class ListenError(ProxyError):
    """The listen address could not be bound, e.g. already in use (500)."""

    status = 500


class WaitTimeout(ProxyError, TimeoutError):
    """A gate wait ran out of time (408 over HTTP, TimeoutError-like in Python)."""

    status = 408
