"""The Toxiproxy HTTP API (plus the statement-gate extension) over asyncio streams.

A deliberately small HTTP/1.1 server: keep-alive, Content-Length or chunked request
bodies, JSON answers. It runs on the registry's own loop, so handlers call the core
directly and a slow client never blocks another.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from harness.proxy.errors import BadRequest, ProxyError
from harness.proxy.registry import PopulateError, ProxyConfig, ProxyServer
from harness.proxy.statement_gate import DEFAULT_WAIT, StatementGate

log = logging.getLogger(__name__)

VERSION = "2.12.0-turnproof"
MAX_BODY = 16 << 20
MAX_HEADERS = 100

Reply = tuple[int, Any]  # (status, JSON payload or None for no body)
Handler = Callable[..., Awaitable[Reply]]


class HttpError(ProxyError):
    """A request we cannot even route (malformed HTTP); the connection is closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ApiServer:
    """Serves the API of one ProxyServer."""

    def __init__(self, registry: ProxyServer) -> None:
        self.registry = registry
        self._server: asyncio.Server | None = None
        self._clients: dict[asyncio.StreamWriter, asyncio.Task[Any]] = {}

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Bind and serve; returns the bound (host, port)."""
        self._server = await asyncio.start_server(self._serve_client, host, port)
        bound = self._server.sockets[0].getsockname()
        return bound[0], bound[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer, task in list(self._clients.items()):
            writer.close()
            task.cancel()  # also ends long-polling gate waits
        await asyncio.gather(*self._clients.values(), return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # -- HTTP --------------------------------------------------------------------------
    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients[writer] = task
        try:
            while True:
                try:
                    request = await _read_request(reader)
                except HttpError as exc:
                    writer.write(_response(exc.status, _error(str(exc), exc.status), False))
                    await writer.drain()
                    return
                if request is None:
                    return
                method, target, headers, body, keep_alive = request
                status, payload = await self._dispatch(method, target, headers, body)
                writer.write(_response(status, payload, keep_alive))
                await writer.drain()
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            return  # server shutdown; the task is top-level, nothing awaits its result
        finally:
            self._clients.pop(writer, None)
            writer.close()

    async def _dispatch(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> Reply:
        if headers.get("user-agent", "").startswith("Mozilla/"):
            return 403, _error("User agent not allowed", 403)  # as Toxiproxy: no browsers
        parts = [unquote(p) for p in target.split("?", 1)[0].split("/") if p]
        route, args = _route(parts)
        if route is None:
            return 404, _error("not found", 404)
        handler = self._routes().get((route, method))
        if handler is None:
            return 405, _error("method not allowed", 405)
        try:
            return await handler(*args, body=body)
        except PopulateError as exc:
            proxies = [proxy.to_json() for proxy in exc.applied]
            return exc.status, {**_error(exc.message, exc.status), "proxies": proxies}
        except ProxyError as exc:
            return exc.status, _error(exc.message, exc.status)
        except Exception as exc:
            log.exception("API handler failed: %s %s", method, target)
            return 500, _error(str(exc), 500)

    def _routes(self) -> dict[tuple[str, str], Handler]:
        return {
            ("version", "GET"): self._version,
            ("proxies", "GET"): self._proxy_index,
            ("proxies", "POST"): self._proxy_create,
            ("populate", "POST"): self._populate,
            ("reset", "POST"): self._reset,
            ("proxy", "GET"): self._proxy_show,
            ("proxy", "POST"): self._proxy_update,
            ("proxy", "PATCH"): self._proxy_update,
            ("proxy", "DELETE"): self._proxy_delete,
            ("toxics", "GET"): self._toxic_index,
            ("toxics", "POST"): self._toxic_create,
            ("toxic", "GET"): self._toxic_show,
            ("toxic", "POST"): self._toxic_update,
            ("toxic", "PATCH"): self._toxic_update,
            ("toxic", "DELETE"): self._toxic_delete,
            ("gate", "GET"): self._gate_show,
            ("gate", "POST"): self._gate_create,
            ("gate", "DELETE"): self._gate_delete,
            ("gate/events", "GET"): self._gate_events,
            ("gate/hold", "POST"): self._gate_hold,
            ("gate/release", "POST"): self._gate_release,
            ("gate/cut", "POST"): self._gate_cut,
            ("gate/wait", "POST"): self._gate_wait,
        }

    # -- Toxiproxy endpoints -----------------------------------------------------------
    async def _version(self, body: bytes) -> Reply:
        return 200, {"version": VERSION}

    async def _proxy_index(self, body: bytes) -> Reply:
        return 200, {name: p.to_json() for name, p in self.registry.proxies().items()}

    async def _proxy_create(self, body: bytes) -> Reply:
        data = _object(body)
        proxy = self.registry.create_proxy(
            _str(data, "name", ""),
            _str(data, "upstream", ""),
            _str(data, "listen", ""),
            _bool(data, "enabled", True),
        )
        return 201, proxy.to_json()

    async def _populate(self, body: bytes) -> Reply:
        data = _json(body)
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise BadRequest("bad request body: expected an array of proxies")
        configs = [
            ProxyConfig(
                _str(item, "name", ""),
                _str(item, "upstream", ""),
                _str(item, "listen", ""),
                _bool(item, "enabled", True),
            )
            for item in data
        ]
        proxies = self.registry.populate(configs)
        return 201, {"proxies": [proxy.to_json() for proxy in proxies]}

    async def _reset(self, body: bytes) -> Reply:
        self.registry.reset()
        return 204, None

    async def _proxy_show(self, name: str, body: bytes) -> Reply:
        return 200, self.registry.proxy(name).to_json()

    async def _proxy_update(self, name: str, body: bytes) -> Reply:
        proxy = self.registry.proxy(name)
        data = _object(body)
        proxy.update(
            listen=_str(data, "listen", None),
            upstream=_str(data, "upstream", None),
            enabled=_bool(data, "enabled", None),
        )
        return 200, proxy.to_json()

    async def _proxy_delete(self, name: str, body: bytes) -> Reply:
        self.registry.delete_proxy(name)
        return 204, None

    async def _toxic_index(self, name: str, body: bytes) -> Reply:
        return 200, [spec.to_json() for spec in self.registry.proxy(name).toxics()]

    async def _toxic_create(self, name: str, body: bytes) -> Reply:
        proxy = self.registry.proxy(name)
        data = _object(body)
        toxicity = _toxicity(data.get("toxicity", 1.0))
        spec = proxy.add_toxic(
            data.get("type"),  # type: ignore[arg-type]  # validated by the core
            name=_str(data, "name", None),
            stream=data.get("stream", "downstream"),
            toxicity=toxicity,
            attributes=data.get("attributes"),
        )
        return 200, spec.to_json()

    async def _toxic_show(self, name: str, toxic: str, body: bytes) -> Reply:
        return 200, self.registry.proxy(name).toxic(toxic).to_json()

    async def _toxic_update(self, name: str, toxic: str, body: bytes) -> Reply:
        proxy = self.registry.proxy(name)
        proxy.toxic(toxic)  # 404 before 400, as Toxiproxy
        data = _object(body)
        spec = proxy.update_toxic(
            toxic, attributes=data.get("attributes"), toxicity=_toxicity(data.get("toxicity"))
        )
        return 200, spec.to_json()

    async def _toxic_delete(self, name: str, toxic: str, body: bytes) -> Reply:
        self.registry.proxy(name).remove_toxic(toxic)
        return 204, None

    # -- statement gate extension ------------------------------------------------------
    def _gate(self, name: str) -> StatementGate:
        return self.registry.proxy(name).existing_gate()

    async def _gate_show(self, name: str, body: bytes) -> Reply:
        return 200, _gate_json(self._gate(name))

    async def _gate_create(self, name: str, body: bytes) -> Reply:
        data = _object(body, empty_ok=True)
        gate = self.registry.proxy(name).gate()
        for seq in _int_list(data, "hold_before"):
            gate.hold_before(seq)
        return 200, _gate_json(gate)

    async def _gate_delete(self, name: str, body: bytes) -> Reply:
        self.registry.proxy(name).existing_gate()
        self.registry.proxy(name).remove_gate()
        return 204, None

    async def _gate_events(self, name: str, body: bytes) -> Reply:
        return 200, [event.to_json() for event in self._gate(name).events]

    async def _gate_hold(self, name: str, body: bytes) -> Reply:
        gate, data = self._gate(name), _object(body, empty_ok=True)
        if "before" in data:
            gate.hold_before(_int(data, "before"))
        else:
            gate.hold_next()
        return 200, _gate_json(gate)

    async def _gate_release(self, name: str, body: bytes) -> Reply:
        gate, data = self._gate(name), _object(body, empty_ok=True)
        gate.release(_int(data, "statement") if "statement" in data else None)
        return 200, _gate_json(gate)

    async def _gate_cut(self, name: str, body: bytes) -> Reply:
        gate, data = self._gate(name), _object(body, empty_ok=True)
        after = data.get("after_send", False)
        if after is False:
            gate.cut()
        elif after is True:
            gate.cut_after_send()
        else:
            gate.cut_after_send(_int(data, "after_send"))
        return 200, _gate_json(gate)

    async def _gate_wait(self, name: str, body: bytes) -> Reply:
        gate, data = self._gate(name), _object(body, empty_ok=True)
        timeout = _int(data, "timeout_ms") / 1000 if "timeout_ms" in data else DEFAULT_WAIT
        what = _str(data, "for", "held")
        seq = _int(data, "statement") if "statement" in data else None
        if what == "held":
            event = await gate.wait_held(seq, timeout)
        elif what in ("sent", "completed") and seq is not None:
            wait = gate.wait_sent if what == "sent" else gate.wait_completed
            event = await wait(seq, timeout)
        else:
            raise BadRequest(
                '"for" must be held, sent or completed (the last two need "statement")'
            )
        return 200, event.to_json()


def _route(parts: list[str]) -> tuple[str | None, list[str]]:
    """Map path segments to (route name, path arguments)."""
    if len(parts) == 1 and parts[0] in ("version", "proxies", "populate", "reset"):
        return parts[0], []
    if len(parts) < 2 or parts[0] != "proxies":
        return None, []
    name, rest = parts[1], parts[2:]
    if not rest:
        return "proxy", [name]
    if rest == ["toxics"]:
        return "toxics", [name]
    if len(rest) == 2 and rest[0] == "toxics":
        return "toxic", [name, rest[1]]
    if rest == ["gate"]:
        return "gate", [name]
    if len(rest) == 2 and rest[0] == "gate":
        return f"gate/{rest[1]}", [name]
    return None, []


def _gate_json(gate: StatementGate) -> dict[str, Any]:
    return {
        "breakpoints": gate.breakpoints,
        "held": [event.to_json() for event in gate.held],
        "events": [event.to_json() for event in gate.events],
    }


def _error(message: str, status: int) -> dict[str, Any]:
    return {"error": message, "status": status}


def _json(body: bytes) -> Any:
    if not body.strip():
        raise BadRequest("bad request body: EOF")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"bad request body: {exc}") from None
    except RecursionError:
        raise BadRequest("bad request body: JSON nested too deeply") from None


def _toxicity(value: Any) -> Any:
    """Toxiproxy's toxicity is a probability: a number outside [0, 1] is refused (400)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and not 0 <= value <= 1:
        raise BadRequest(f"bad request body: toxicity must be between 0 and 1, got {value}")
    return value


def _object(body: bytes, empty_ok: bool = False) -> dict[str, Any]:
    if empty_ok and not body.strip():
        return {}
    data = _json(body)
    if not isinstance(data, dict):
        raise BadRequest("bad request body: expected a JSON object")
    return data


def _str(data: dict[str, Any], key: str, default: Any) -> Any:
    value = data.get(key, default)
    if value is not default and not isinstance(value, str):
        raise BadRequest(f"bad request body: {key} must be a string")
    return value


def _bool(data: dict[str, Any], key: str, default: Any) -> Any:
    value = data.get(key, default)
    if value is not default and not isinstance(value, bool):
        raise BadRequest(f"bad request body: {key} must be a boolean")
    return value


def _int(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"bad request body: {key} must be an integer")
    return value


def _int_list(data: dict[str, Any], key: str) -> list[int]:
    values = data.get(key, [])
    values = values if isinstance(values, list) else [values]
    return [_int({key: value}, key) for value in values]


async def _read_request(
    reader: asyncio.StreamReader,
) -> tuple[str, str, dict[str, str], bytes, bool] | None:
    """One request, or None when the client closed between requests."""
    try:
        line = await reader.readline()
    except (ValueError, asyncio.LimitOverrunError):
        raise HttpError(400, "request line too long") from None
    if not line.strip():
        return None
    try:
        method, target, version = line.decode("latin-1").split()
    except ValueError:
        raise HttpError(400, "malformed request line") from None
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        raw = await reader.readline()
        if raw in (b"\r\n", b"\n", b""):
            break
        key, sep, value = raw.decode("latin-1").partition(":")
        if not sep:
            raise HttpError(400, "malformed header")
        headers[key.strip().lower()] = value.strip()
    else:
        raise HttpError(431, "too many headers")
    body = await _read_body(reader, headers)
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    return method.upper(), target, headers, body, keep_alive


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = bytearray()
        while True:
            size_line = await reader.readline()
            try:
                size = int(size_line.split(b";")[0], 16)
            except ValueError:
                raise HttpError(400, "malformed chunk size") from None
            if size == 0:
                while (await reader.readline()).strip():
                    pass  # trailers
                return bytes(chunks)
            if len(chunks) + size > MAX_BODY:
                raise HttpError(413, "request body too large")
            chunks += await reader.readexactly(size)
            await reader.readline()
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise HttpError(400, "malformed Content-Length") from None
    if length < 0 or length > MAX_BODY:
        raise HttpError(413, "request body too large")
    return await reader.readexactly(length) if length else b""


def _response(status: int, payload: Any, keep_alive: bool) -> bytes:
    reason = HTTPStatus(status).phrase
    lines = [f"HTTP/1.1 {status} {reason}"]
    body = b""
    if status != 204:
        body = json.dumps(payload).encode() + b"\n"
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
