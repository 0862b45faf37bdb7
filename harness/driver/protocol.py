"""The JSON-lines driver protocol (docs/driver-protocol.md), shared by both sides.

Everything that crosses the process boundary is encoded and checked here, from
the contract's own type hints: the argument names and types of each operation
come from `harness.contract.TurnStore`, so the protocol cannot drift from the
contract. Decoding is strict; anything that does not fit raises
`ProtocolViolation`, which each side turns into a clear error instead of a
guess or a hang.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import types
import typing
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from harness.contract import STORE_OPERATIONS, WRITER_OPERATIONS, StreamWriter, TurnStore

PROTOCOL_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
"""Version 2 adds the streaming writer and the driver's virtual clock; a version 1 driver
(no `coalescing`) is still served, and never sent a version 2 request."""

ERROR_KINDS = ("RunAlreadyActive", "InvalidArgument", "Other", "ProtocolError")
"""`Other`: the operation failed in any other way (`indefinite` says whether its outcome
is unknown); `ProtocolError`: the request itself was malformed, nothing was done."""

MAX_LINE_BYTES = 64 * 1024 * 1024
"""Longest line either side accepts (a list_messages answer can be large)."""


class ProtocolViolation(ValueError):
    """A message that breaks the protocol; `request_id` is its id when that much was readable."""

    def __init__(self, message: str, request_id: int | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


@dataclass(frozen=True)
class Signature:
    """One request type: its argument names and types, the defaults the contract gives
    some of them, and the type of its result."""

    args: dict[str, Any]
    result: Any
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)


def _contract_signature(name: str, owner: type = TurnStore) -> Signature:
    method = getattr(owner, name)
    hints = typing.get_type_hints(method)
    parameters = [p for p in inspect.signature(method).parameters.values() if p.name != "self"]
    defaults = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
    return Signature({p.name: hints[p.name] for p in parameters}, hints["return"], defaults)


def _writer_signature(name: str) -> Signature:
    """A StreamWriter operation, on the writer named by its handle."""
    operation = _contract_signature(name, StreamWriter)
    return Signature({"writer": int, **operation.args}, operation.result, operation.defaults)


LIFECYCLE: dict[str, Signature] = {
    "install": Signature({"dsn": str}, None),
    "connect": Signature({"dsn": str, "clock_offset": float | None}, None),
    "close": Signature({}, None),
}
OPERATIONS: dict[str, Signature] = {name: _contract_signature(name) for name in STORE_OPERATIONS}
WRITER_REQUESTS: dict[str, Signature] = {
    "writer_open": Signature({"debounce": timedelta, "virtual_time": bool}, int),
    **{f"writer_{name}": _writer_signature(name) for name in WRITER_OPERATIONS},
    "writer_close": Signature({"writer": int}, None),
    "clock_advance": Signature({"seconds": float}, None),
}
"""Version 2: a streaming writer by handle, and the driver's virtual clock (docs)."""
REQUESTS: dict[str, Signature] = {**LIFECYCLE, **OPERATIONS, **WRITER_REQUESTS}


# Values -------------------------------------------------------------------------------


def encode_value(value: Any, hint: Any, where: str = "value") -> Any:
    """A Python value of type `hint` as JSON data; ProtocolViolation if it is not of that type."""
    if hint is Any:
        return value
    if hint is None or hint is type(None):
        if value is not None:
            raise ProtocolViolation(f"{where}: expected null, got {_show(value)}")
        return None
    inner = _optional(hint)
    if inner is not None:
        return None if value is None else encode_value(value, inner, where)
    if hint is datetime:
        if not isinstance(value, datetime) or value.utcoffset() is None:
            raise ProtocolViolation(
                f"{where}: expected a datetime with a UTC offset, got {_show(value)}"
            )
        return value.isoformat()
    if hint is timedelta:
        if not isinstance(value, timedelta):
            raise ProtocolViolation(f"{where}: expected a timedelta, got {_show(value)}")
        return value.total_seconds()
    if hint is float:
        return float(_decode_number(value, where))
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, hint):
            raise ProtocolViolation(f"{where}: expected {hint.__name__}, got {_show(value)}")
        return {
            name: encode_value(getattr(value, name), field_hint, f"{where}.{name}")
            for name, field_hint in _fields(hint).items()
        }
    origin = typing.get_origin(hint)
    if origin is list:
        if not isinstance(value, list):
            raise ProtocolViolation(f"{where}: expected a list, got {_show(value)}")
        (item,) = typing.get_args(hint)
        return [encode_value(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    _check_plain(value, hint, where)
    return value


def decode_value(data: Any, hint: Any, where: str = "value") -> Any:
    """JSON data as a Python value of type `hint`, strictly (1.0 is not an int, true not 1)."""
    if hint is Any:
        return data
    if hint is None or hint is type(None):
        if data is not None:
            raise ProtocolViolation(f"{where}: expected null, got {_show(data)}")
        return None
    inner = _optional(hint)
    if inner is not None:
        return None if data is None else decode_value(data, inner, where)
    if hint is datetime:
        return _decode_datetime(data, where)
    if hint is timedelta:
        return timedelta(seconds=_decode_number(data, where))
    if hint is float:
        return float(_decode_number(data, where))
    if dataclasses.is_dataclass(hint):
        if not isinstance(data, dict):
            raise ProtocolViolation(
                f"{where}: expected a {hint.__name__} object, got {_show(data)}"
            )
        hints = _fields(hint)
        _check_keys(data, list(hints), where)
        return hint(**{k: decode_value(data[k], hints[k], f"{where}.{k}") for k in hints})
    origin = typing.get_origin(hint)
    if origin is list:
        if not isinstance(data, list):
            raise ProtocolViolation(f"{where}: expected a list, got {_show(data)}")
        (item,) = typing.get_args(hint)
        return [decode_value(v, item, f"{where}[{i}]") for i, v in enumerate(data)]
    _check_plain(data, hint, where)
    return data


@functools.cache
def _fields(cls: type) -> dict[str, Any]:
    """A dataclass's field names and types, in order (resolved once: it is not cheap)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


@functools.cache
def _optional(hint: Any) -> Any:
    """X for `X | None`, else None."""
    if typing.get_origin(hint) not in (typing.Union, types.UnionType):
        return None
    rest = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(rest) != 1:
        raise TypeError(f"unsupported type {hint!r}")
    return rest[0]


def _check_plain(value: Any, hint: Any, where: str) -> None:
    """str, bool, int and JSON objects, by exact JSON type."""
    origin = typing.get_origin(hint) or hint
    if origin is bool:
        ok = isinstance(value, bool)
    elif origin is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif origin is str:
        ok = isinstance(value, str)
    elif origin is dict:
        ok = isinstance(value, dict) and all(isinstance(k, str) for k in value)
    else:
        raise TypeError(f"the protocol has no encoding for {hint!r}")
    if not ok:
        raise ProtocolViolation(f"{where}: expected {_type_name(hint)}, got {_show(value)}")


def _decode_datetime(data: Any, where: str) -> datetime:
    if isinstance(data, str):
        try:
            value = datetime.fromisoformat(data)
        except ValueError:
            pass
        else:
            if value.utcoffset() is not None:
                return value
    raise ProtocolViolation(
        f"{where}: expected an ISO 8601 date-time with a UTC offset "
        f"(e.g. '2025-01-31T12:00:00.123456+00:00'), got {_show(data)}"
    )


def _decode_number(data: Any, where: str) -> float:
    if isinstance(data, bool) or not isinstance(data, (int, float)) or not math.isfinite(data):
        raise ProtocolViolation(f"{where}: expected a number of seconds, got {_show(data)}")
    return data


def _check_keys(data: dict[str, Any], expected: list[str], where: str) -> None:
    missing = [k for k in expected if k not in data]
    extra = sorted(k for k in data if k not in expected)
    if missing or extra:
        problems = [f"missing {missing}"] * bool(missing) + [f"unexpected {extra}"] * bool(extra)
        raise ProtocolViolation(f"{where}: {' and '.join(problems)} (expected exactly {expected})")


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint) or hint
    return {bool: "a boolean", int: "an integer", str: "a string", dict: "an object"}.get(
        origin, repr(hint)
    )


def _show(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# Lines --------------------------------------------------------------------------------


def encode_line(message: dict[str, Any]) -> bytes:
    """One message as one line: compact UTF-8 JSON, no NaN or Infinity, ending in a newline."""
    return (
        json.dumps(message, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode(
            "utf-8"
        )
        + b"\n"
    )


def decode_line(line: bytes) -> dict[str, Any]:
    """One received line as a JSON object; ProtocolViolation for anything else."""
    try:
        message = json.loads(line.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolViolation(f"not a JSON line ({exc}): {_show(line)}") from None
    if not isinstance(message, dict):
        raise ProtocolViolation(f"a message must be a JSON object, got {_show(message)}")
    return message


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Handshake ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """The driver's first line: who it is, what it declares, which protocol it speaks."""

    protocol: int
    implementation: str
    capabilities: tuple[str, ...]

    def to_message(self) -> dict[str, Any]:
        return {"hello": dataclasses.asdict(self) | {"capabilities": list(self.capabilities)}}


def parse_hello(message: dict[str, Any]) -> Hello:
    """The hello, shape-checked; the caller checks the version and the capability names."""
    _check_keys(message, ["hello"], "hello line")
    body = message["hello"]
    if not isinstance(body, dict):
        raise ProtocolViolation(f"hello: expected an object, got {_show(body)}")
    _check_keys(body, ["protocol", "implementation", "capabilities"], "hello")
    protocol = decode_value(body["protocol"], int, "hello.protocol")
    implementation = decode_value(body["implementation"], str, "hello.implementation")
    capabilities = decode_value(body["capabilities"], list[str], "hello.capabilities")
    if not implementation:
        raise ProtocolViolation("hello.implementation: must not be empty")
    return Hello(protocol, implementation, tuple(capabilities))


# Requests -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    id: int
    op: str
    args: dict[str, Any]


def request_message(request_id: int, op: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"id": request_id, "op": op, "args": args}


def encode_args(op: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The operation's keyword arguments as JSON; every argument present (defaults filled
    in). A wrong or missing argument raises TypeError, as calling the method would."""
    signature = REQUESTS[op]
    unknown = sorted(kwargs.keys() - signature.args.keys())
    if unknown:
        raise TypeError(f"{op}() got an unexpected keyword argument {unknown[0]!r}")
    values = {**signature.defaults, **kwargs}
    missing = [name for name in signature.args if name not in values]
    if missing:
        raise TypeError(f"{op}() missing required keyword argument(s): {', '.join(missing)}")
    return {
        name: encode_value(values[name], hint, f"{op}({name})")
        for name, hint in signature.args.items()
    }


def parse_request(message: dict[str, Any]) -> Request:
    """A request as received by a driver: known op, exactly its arguments, each of its type."""
    request_id = message.get("id")
    if not _is_id(request_id):
        raise ProtocolViolation(f"id: expected a positive integer, got {_show(request_id)}")
    try:
        _check_keys(message, ["id", "op", "args"], "request")
        op, args = message["op"], message["args"]
        if op not in REQUESTS:
            raise ProtocolViolation(f"unknown op {_show(op)}; known: {', '.join(REQUESTS)}")
        if not isinstance(args, dict):
            raise ProtocolViolation(f"args: expected an object, got {_show(args)}")
        signature = REQUESTS[op]
        _check_keys(args, list(signature.args), f"{op} args")
        decoded = {k: decode_value(args[k], h, f"{op}({k})") for k, h in signature.args.items()}
    except ProtocolViolation as exc:
        raise ProtocolViolation(str(exc), request_id) from None
    return Request(request_id, op, decoded)


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


# Responses ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WireError:
    kind: str
    message: str
    indefinite: bool = False

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": self.kind, "message": self.message}
        if self.indefinite:
            body["indefinite"] = True
        return body


@dataclass(frozen=True)
class Response:
    """An answer: `id` None only for a ProtocolError about a line without a readable id."""

    id: int | None
    ok: Any = None
    error: WireError | None = None


def ok_message(request_id: int, op: str, result: Any) -> dict[str, Any]:
    return {"id": request_id, "ok": encode_value(result, REQUESTS[op].result, f"{op} result")}


def error_message(request_id: int | None, error: WireError) -> dict[str, Any]:
    return {"id": request_id, "error": error.to_json()}


def parse_response(message: dict[str, Any]) -> Response:
    """An answer's envelope; its result is decoded by `decode_result` once its op is known."""
    request_id = message.get("id")
    if "error" in message:
        _check_keys(message, ["id", "error"], "error answer")
        if request_id is not None and not _is_id(request_id):
            raise ProtocolViolation(f"id: expected a positive integer, got {_show(request_id)}")
        return Response(request_id, error=_parse_error(message["error"]))
    _check_keys(message, ["id", "ok"], "answer")
    if not _is_id(request_id):
        raise ProtocolViolation(f"id: expected a positive integer, got {_show(request_id)}")
    return Response(request_id, ok=message["ok"])


def _parse_error(body: Any) -> WireError:
    if not isinstance(body, dict):
        raise ProtocolViolation(f"error: expected an object, got {_show(body)}")
    keys = ["kind", "message", "indefinite"] if "indefinite" in body else ["kind", "message"]
    _check_keys(body, keys, "error")
    kind = decode_value(body["kind"], str, "error.kind")
    if kind not in ERROR_KINDS:
        raise ProtocolViolation(f"error.kind: {_show(kind)} is not one of {list(ERROR_KINDS)}")
    message = decode_value(body["message"], str, "error.message")
    indefinite = decode_value(body.get("indefinite", False), bool, "error.indefinite")
    if indefinite and kind != "Other":
        raise ProtocolViolation(f"error.indefinite: only an error of kind Other can be, not {kind}")
    return WireError(kind, message, indefinite)


def decode_result(op: str, data: Any) -> Any:
    return decode_value(data, REQUESTS[op].result, f"{op} result")


def parse_fatal(message: dict[str, Any]) -> str:
    _check_keys(message, ["fatal"], "fatal line")
    return decode_value(message["fatal"], str, "fatal")
