"""The driver protocol's encoding, both directions, without processes: every operation's
arguments and result survive the trip exactly, and anything off-protocol is refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from harness.contract import STORE_OPERATIONS, Message, Run, Usage, UsageIn
from harness.driver import protocol
from harness.driver.protocol import ProtocolViolation

T0 = datetime(2025, 1, 31, 12, 0, 0, 123456, tzinfo=UTC)
T1 = datetime(2025, 1, 31, 17, 30, 0, 1, tzinfo=timezone(timedelta(hours=5, minutes=30)))
PARTS = [{"type": "text", "text": "héllo ✓"}, {"type": "tool-call", "args": {"n": [1, 2.5]}}]
USAGE_IN = UsageIn(
    prompt_tokens=1, completion_tokens=2, total_tokens=3, cost_micros=2**40, model="m"
)
MESSAGE = Message("m1", "c1", "w1", "assistant", None, None, "", PARTS, T0, T1)
RUN = Run("r1", "c1", "w1", "running", "user", None, 0, False, T0, T1)
USAGE = Usage("m1", 1, 2, 3, 4, "m", T0)

ARGS: dict[str, dict[str, Any]] = {
    "create_chat": {"workspace_id": "w1"},
    "insert_legacy_message": {"chat_id": "c1", "workspace_id": "w1", "content": "old"},
    "persist_user_turn": {"chat_id": "c1", "workspace_id": "w1", "turn_id": None, "text": "q"},
    "persist_assistant_shell": {"chat_id": "c1", "workspace_id": "w1", "turn_id": "t1"},
    "append_step": {"message_id": "m1", "workspace_id": "w1", "content": "a", "parts": PARTS},
    "finalize": {
        "message_id": "m1",
        "workspace_id": "w1",
        "status": "completed",
        "content": "a",
        "parts": [],
        "usage": USAGE_IN,
    },
    "get_message": {"message_id": "m1", "workspace_id": "w1"},
    "list_messages": {"chat_id": "c1", "workspace_id": "w1"},
    "usage_for": {"message_id": "m1"},
    "sweep_streaming": {"older_than": timedelta(seconds=1, microseconds=500)},
    "begin_run": {"chat_id": "c1", "workspace_id": "w1", "trigger": "schedule"},
    "link_assistant": {"run_id": "r1", "message_id": "m1"},
    "record_step": {"run_id": "r1"},
    "finish_run": {"run_id": "r1", "status": "succeeded"},
    "request_stop": {"run_id": "r1"},
    "latest_run": {"chat_id": "c1", "workspace_id": "w1"},
    "sweep_runs": {"older_than": timedelta(minutes=10)},
}
RESULTS: dict[str, list[Any]] = {
    "create_chat": ["c1"],
    "insert_legacy_message": ["m1"],
    "persist_user_turn": ["m1", None],
    "persist_assistant_shell": ["m1", None],
    "append_step": [True, False],
    "finalize": [True, False],
    "get_message": [MESSAGE, None],
    "list_messages": [[MESSAGE, MESSAGE], []],
    "usage_for": [[USAGE, Usage("m1", 1, 2, 3, 4, "m")], []],
    "sweep_streaming": [0, 3],
    "begin_run": [RUN, Run("r2", "c1", "w1", "failed", "user", "m1", 7, True, T0, T1, T1)],
    "link_assistant": [True],
    "record_step": [False],
    "finish_run": [True],
    "request_stop": [False],
    "latest_run": [RUN, None],
    "sweep_runs": [2],
}
WRITER_ARGS: dict[str, dict[str, Any]] = {
    "writer_open": {"debounce": timedelta(milliseconds=33), "virtual_time": True},
    "writer_update": {
        "writer": 1,
        "message_id": "m1",
        "workspace_id": "w1",
        "content": "a",
        "parts": PARTS,
    },
    "writer_flush": {"writer": 1, "message_id": "m1"},
    "writer_flush_all": {"writer": 1},
    "writer_delete": {"writer": 1, "message_id": "m1", "workspace_id": "w1"},
    "writer_close": {"writer": 2},
    "clock_advance": {"seconds": 0.033},
}
"""Protocol 2: the streaming writer by handle, and the driver's virtual clock."""


def through_the_wire(message: dict[str, Any]) -> dict[str, Any]:
    line = protocol.encode_line(message)
    assert line.endswith(b"\n")
    assert b"\n" not in line[:-1]
    return protocol.decode_line(line[:-1])


def test_every_contract_operation_is_covered():
    assert set(ARGS) == set(STORE_OPERATIONS) == set(RESULTS)
    assert set(protocol.REQUESTS) == {
        "install",
        "connect",
        "close",
        *STORE_OPERATIONS,
        *WRITER_ARGS,
    }


@pytest.mark.parametrize("op", WRITER_ARGS)
def test_writer_requests_round_trip_exactly(op):
    args = protocol.encode_args(op, WRITER_ARGS[op])
    request = protocol.parse_request(through_the_wire(protocol.request_message(9, op, args)))
    assert (request.id, request.op, request.args) == (9, op, WRITER_ARGS[op])
    result = 4 if op == "writer_open" else None
    response = protocol.parse_response(through_the_wire(protocol.ok_message(9, op, result)))
    assert protocol.decode_result(op, response.ok) == result


def test_a_writer_handle_is_an_integer():
    message = protocol.request_message(5, "writer_flush_all", {"writer": "1"})
    with pytest.raises(
        ProtocolViolation, match="writer_flush_all\\(writer\\): expected an integer"
    ):
        protocol.parse_request(through_the_wire(message))


@pytest.mark.parametrize("op", STORE_OPERATIONS)
def test_arguments_round_trip_exactly(op):
    args = protocol.encode_args(op, ARGS[op])
    request = protocol.parse_request(through_the_wire(protocol.request_message(7, op, args)))
    assert (request.id, request.op, request.args) == (7, op, ARGS[op])


@pytest.mark.parametrize("op", STORE_OPERATIONS)
def test_results_round_trip_exactly(op):
    for result in RESULTS[op]:
        response = protocol.parse_response(through_the_wire(protocol.ok_message(3, op, result)))
        assert response.id == 3
        assert protocol.decode_result(op, response.ok) == result


def test_datetimes_keep_microseconds_and_offsets():
    encoded = protocol.encode_value(MESSAGE, Message)
    assert encoded["created_at"] == "2025-01-31T12:00:00.123456+00:00"
    assert encoded["updated_at"] == "2025-01-31T17:30:00.000001+05:30"
    decoded = protocol.decode_value(json.loads(json.dumps(encoded)), Message)
    assert decoded.updated_at == T1
    assert decoded.updated_at.utcoffset() == timedelta(hours=5, minutes=30)


@pytest.mark.parametrize("text", ["2025-01-31T12:00:00", "yesterday", "2025-01-31", 1738324800])
def test_datetimes_without_offset_are_refused(text):
    with pytest.raises(ProtocolViolation, match="with a UTC offset"):
        protocol.decode_value(text, datetime, "created_at")


def test_naive_datetimes_are_not_sent():
    with pytest.raises(ProtocolViolation, match="UTC offset"):
        protocol.encode_value(datetime(2025, 1, 1), datetime)


def test_defaults_are_filled_in_and_wrong_names_are_a_type_error():
    args = protocol.encode_args("begin_run", {"chat_id": "c", "workspace_id": "w"})
    assert args == {"chat_id": "c", "workspace_id": "w", "trigger": "user"}
    with pytest.raises(TypeError):
        protocol.encode_args("begin_run", {"chat_id": "c", "workspace": "w"})


@pytest.mark.parametrize(
    ("result", "op", "complaint"),
    [
        (1, "append_step", "expected a boolean"),
        (True, "sweep_runs", "expected an integer"),
        (1.0, "sweep_runs", "expected an integer"),
        ("3", "sweep_runs", "expected an integer"),
        (None, "create_chat", "expected a string"),
        ({"id": "r1"}, "begin_run", "missing"),
        ({**protocol.encode_value(RUN, Run), "seq": 1}, "begin_run", "unexpected \\['seq'\\]"),
        ([{"x": 1}], "list_messages", "list_messages result\\[0\\]"),
        ({"type": "text"}, "list_messages", "expected a list"),
    ],
)
def test_results_of_the_wrong_type_are_protocol_violations(result, op, complaint):
    with pytest.raises(ProtocolViolation, match=complaint):
        protocol.decode_result(op, result)


FINALIZE_ARGS = protocol.encode_args("finalize", ARGS["finalize"])


@pytest.mark.parametrize(
    ("message", "request_id", "complaint"),
    [
        ({"op": "create_chat", "args": {}}, None, "id: expected a positive integer"),
        ({"id": 0, "op": "close", "args": {}}, None, "id: expected a positive integer"),
        ({"id": True, "op": "close", "args": {}}, None, "id: expected a positive integer"),
        ({"id": 1, "op": "drop_tables", "args": {}}, 1, "unknown op 'drop_tables'"),
        ({"id": 2, "op": "close"}, 2, "missing \\['args'\\]"),
        ({"id": 3, "op": "close", "args": {}, "x": 1}, 3, "unexpected \\['x'\\]"),
        ({"id": 4, "op": "record_step", "args": {}}, 4, "missing \\['run_id'\\]"),
        ({"id": 5, "op": "record_step", "args": {"run_id": "r", "n": 1}}, 5, "unexpected"),
        ({"id": 6, "op": "record_step", "args": {"run_id": 5}}, 6, "expected a string"),
        ({"id": 7, "op": "sweep_runs", "args": {"older_than": "1s"}}, 7, "number of seconds"),
        ({"id": 8, "op": "finalize", "args": {**FINALIZE_ARGS, "usage": {}}}, 8, "missing"),
    ],
)
def test_malformed_requests_are_refused_with_their_id(message, request_id, complaint):
    with pytest.raises(ProtocolViolation, match=complaint) as raised:
        protocol.parse_request(message)
    assert raised.value.request_id == request_id


@pytest.mark.parametrize(
    "line", [b"not json", b"[1, 2]", b'"hello"', b"\xff\xfe", b'{"id": 1, "ok": NaN}', b""]
)
def test_lines_that_are_not_json_objects_are_refused(line):
    with pytest.raises(ProtocolViolation):
        protocol.decode_line(line)


def test_nan_is_never_sent():
    with pytest.raises(ValueError):
        protocol.encode_line({"id": 1, "ok": float("nan")})


@pytest.mark.parametrize(
    ("message", "complaint"),
    [
        ({"id": 1, "ok": 1, "error": {}}, "unexpected \\['ok'\\]"),
        ({"id": 1}, "missing \\['ok'\\]"),
        ({"id": 1, "error": {"kind": "Oops", "message": "m"}}, "is not one of"),
        ({"id": 1, "error": {"kind": "Other"}}, "missing \\['message'\\]"),
        (
            {"id": 1, "error": {"kind": "InvalidArgument", "message": "m", "indefinite": True}},
            "only an error of kind Other",
        ),
        ({"id": "1", "ok": None}, "id: expected a positive integer"),
    ],
)
def test_malformed_answers_are_refused(message, complaint):
    with pytest.raises(ProtocolViolation, match=complaint):
        protocol.parse_response(message)


def test_errors_round_trip_with_their_kind():
    for error in (
        protocol.WireError("RunAlreadyActive", "busy"),
        protocol.WireError("Other", "connection lost", indefinite=True),
        protocol.WireError("ProtocolError", "what?"),
    ):
        response = protocol.parse_response(through_the_wire(protocol.error_message(4, error)))
        assert response == protocol.Response(4, error=error)
    unreadable = protocol.error_message(None, protocol.WireError("ProtocolError", "?"))
    assert protocol.parse_response(through_the_wire(unreadable)).id is None


def test_hello_round_trips_and_is_checked():
    hello = protocol.Hello(1, "impl", ("turns", "runs"))
    assert protocol.parse_hello(through_the_wire(hello.to_message())) == hello
    for bad in (
        {"hello": {"protocol": 1, "implementation": "", "capabilities": []}},
        {"hello": {"protocol": "1", "implementation": "x", "capabilities": []}},
        {"hello": {"protocol": 1, "implementation": "x"}},
        {"hello": 1},
        {"id": 1, "ok": None},
    ):
        with pytest.raises(ProtocolViolation):
            protocol.parse_hello(bad)
