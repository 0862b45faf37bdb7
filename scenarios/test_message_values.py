"""MSG-10: what is written is what is read back, exactly (property-based, with Hypothesis).

Hypothesis generates contents and parts and each example is written through the store
(persist_user_turn, append_step, finalize) and read back through get_message AND
list_messages. One property per clause, each generating what that clause is about, so a
store that breaks one clause fails that clause's scenario only.

How values compare (the contract's JSON data model):

- objects compare as mappings: every key, in its exact case, with its value; key order is
  insignificant (jsonb does not keep it);
- a number is the decimal its JSON text denotes and compares by value, int or float alike:
  PostgreSQL's jsonb keeps the decimal exactly but prints `1.5e+300` as the integer
  `15` followed by 299 zeros, which reads back as a Python int; that is the same number.
  A Python float is generated as what it sends, the shortest decimal that reads back as
  it (`repr`), so an integer beyond 2^53 read back through a double is caught;
- booleans are not numbers (`true` must not come back as `1`), null is null, strings
  compare code point by code point (no Unicode normalisation).

Examples are drawn deterministically (`derandomize`, no example database) and not shrunk:
a failure names the path of the first value that came back different, which is what
shrinking would look for. Fixed examples (the `file_path`/`filePath` bug of a real ORM
plugin, 2^53 + 1, 1.5e300, astral characters) run first, every time.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from harness import InvalidArgument, Message, TurnStore

from .support import (
    RACE_WS,
    STORABLE_TEXT,
    existing_message,
    new_turn_id,
    new_workspace,
    raised_by,
    streaming_message,
    text_parts,
)

pytestmark = [pytest.mark.anyio, pytest.mark.capability("turns")]

VALUES = settings(
    max_examples=20,
    derandomize=True,
    database=None,
    deadline=None,
    phases=(Phase.explicit, Phase.generate),
    report_multiple_bugs=False,
    suppress_health_check=(
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ),
)
"""Every property's settings: deterministic, bounded (20 drawn examples after the fixed
ones, each a handful of operations, so it stays cheap through a driver too), no example
database."""

# --- strategies ------------------------------------------------------------------------------

TRICKY_STRINGS = (
    "",
    " ",
    "\U0001f600",  # an emoji: astral plane, a surrogate pair in UTF-16
    "\U0001d518\U0001d52b\U0001d526",  # mathematical letters, astral plane
    "e\u0301",  # decomposed: must not come back composed (NFC)
    "\u00e9",  # composed: must not come back decomposed (NFD)
    "\ufb01",  # a ligature NFKC would split
    "\u2028\u2029",  # JavaScript line separators
    '"\\/\b\f\n\r\t',  # every character JSON escapes
    "\x01\x1f\x7f",
    "\ufeff",  # a byte-order mark
    "\U0010ffff",  # the last code point
)

STRINGS = st.one_of(
    st.sampled_from(TRICKY_STRINGS),
    st.text(STORABLE_TEXT, max_size=12),
    st.text(st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF), min_size=1, max_size=6),
)

CASED_KEYS = (
    "file_path",
    "filePath",
    "FilePath",
    "FILE_PATH",
    "file-path",
    "toolCallId",
    "tool_call_id",
    "ToolCallID",
    "type",
    "Type",
    "TYPE",
    "id",
    "ID",
    "Id",
    "mime_type",
    "mimeType",
    "_private",
    "__proto__",
    "",
)
"""Keys an ORM or serialiser is tempted to rename: case variants of one name side by side."""

WORDS = st.lists(
    st.sampled_from(("file", "path", "tool", "call", "id", "mime", "type", "url", "x")),
    min_size=2,
    max_size=3,
)
KEYS = st.one_of(
    st.sampled_from(CASED_KEYS),
    st.builds("_".join, WORDS),  # snake_case
    st.builds(lambda words: words[0] + "".join(w.title() for w in words[1:]), WORDS),  # camelCase
    st.text(STORABLE_TEXT, max_size=6),
)

PLAIN_KEYS = st.sampled_from(("value", "values", "data", "item", "items", "n"))
"""Keys no casing rule changes, for the properties that are not about keys."""

PLAIN_LEAVES = st.one_of(
    st.integers(-1000, 1000), st.sampled_from(("a", "text", "/tmp/x.py")), st.none()
)
"""Leaves no number or string conversion changes, for the property about keys."""

BIG_INTEGERS = st.one_of(
    st.integers(min_value=2**53 + 1),
    st.integers(max_value=-(2**53) - 1),
    st.sampled_from((2**53 + 1, -(2**53 + 1), 2**63 - 1, -(2**63), 2**64 + 1, 10**30 + 7)),
)

NUMBERS = st.one_of(
    BIG_INTEGERS,
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from((0.1, -0.0, 1.5e300, 5e-324, 1e-7, 123456789.123456789, 2.0**53 + 2)),
    st.booleans(),
    st.none(),
)


def json_values(leaves: st.SearchStrategy[Any], keys: st.SearchStrategy[str]) -> Any:
    """JSON values of `leaves` nested in arrays and objects, up to a few levels deep."""
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
        max_leaves=12,
    )


def deeply_nested(inner: st.SearchStrategy[Any], keys: st.SearchStrategy[str]) -> Any:
    """`inner` wrapped in 8 to 40 levels of objects and arrays (a tool call's nested args)."""

    def wrap(value: Any, path: list[tuple[bool, str]]) -> Any:
        for is_object, key in path:
            value = {key: value} if is_object else [value]
        return value

    levels = st.lists(st.tuples(st.booleans(), keys), min_size=8, max_size=40)
    return st.builds(wrap, inner, levels)


def parts_of(values: st.SearchStrategy[Any], keys: st.SearchStrategy[str]) -> Any:
    """Parts: one to three objects with a `type` and other members of `values`."""
    part = st.builds(
        lambda kind, members: {**members, "type": kind},
        st.sampled_from(("text", "tool-call", "tool-result", "reasoning", "file")),
        st.dictionaries(keys, values, max_size=4),
    )
    return st.lists(part, min_size=1, max_size=3)


KEYED_PARTS = parts_of(
    st.one_of(json_values(PLAIN_LEAVES, KEYS), deeply_nested(PLAIN_LEAVES, KEYS)), KEYS
)
NUMBER_PARTS = parts_of(
    st.one_of(json_values(NUMBERS, PLAIN_KEYS), deeply_nested(NUMBERS, PLAIN_KEYS)), PLAIN_KEYS
)
STRING_PARTS = parts_of(json_values(STRINGS, PLAIN_KEYS), PLAIN_KEYS)

ORM_BUG_PARTS = [
    {
        "type": "tool-call",
        "toolCallId": "call-1",
        "args": {"file_path": "/src/app.ts", "filePath": "/src/other.ts", "FILE_PATH": ""},
        "result": {"nested": {"deeper": [{"old_name": 1, "oldName": 2}]}},
    }
]
NUMBER_EXAMPLE_PARTS = [
    {
        "type": "tool-result",
        "value": [2**53 + 1, -(2**53 + 1), 2**64 + 1, 1.5e300, 0.1, 5e-324],
        "data": {"n": True, "item": False, "items": None, "values": [0, 1, -1]},
    }
]
STRING_EXAMPLE = "\U0001f600 e\u0301 \u00e9 \U0010ffff"


# --- comparing -------------------------------------------------------------------------------


def value_difference(written: Any, read: Any, path: str = "") -> str | None:
    """Where `read` is not the JSON value `written` (see the module docstring), in words;
    None when it is the same value."""
    if isinstance(written, dict):
        if not isinstance(read, dict):
            return f"at {path or 'the top'}: wrote an object, read back {shown(read)}"
        if written.keys() != read.keys():
            return (
                f"at {path or 'the top'}: wrote keys {shown(sorted(written))}, read back keys "
                f"{shown(sorted(read))}"
            )
        for key, value in written.items():
            found = value_difference(value, read[key], f"{path}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(written, list):
        if not isinstance(read, list) or len(read) != len(written):
            return f"at {path or 'the top'}: wrote {shown(written)}, read back {shown(read)}"
        for index, (value, back) in enumerate(zip(written, read, strict=True)):
            found = value_difference(value, back, f"{path}[{index}]")
            if found:
                return found
        return None
    if json_scalar(written) != json_scalar(read):
        return f"at {path or 'the top'}: wrote {shown(written)}, read back {shown(read)}"
    return None


def shown(value: Any) -> str:
    """A value for a failure message, non-ASCII escaped: `'e\\u0301'` and `'\\xe9'` look
    the same printed, not escaped."""
    return ascii(value)


def json_scalar(value: Any) -> tuple[str, Any]:
    """A scalar as the JSON value it stands for: numbers by their decimal value."""
    if isinstance(value, bool) or value is None:
        return ("literal", value)
    if isinstance(value, int):
        return ("number", Decimal(value))
    if isinstance(value, float):
        return ("number", Decimal(repr(value)))
    return (type(value).__name__, value)


async def read_both_ways(store: TurnStore, chat_id: str, message_id: str) -> dict[str, Message]:
    """The message (in RACE_WS) as get_message and as list_messages return it."""
    listed = await store.list_messages(chat_id=chat_id, workspace_id=RACE_WS)
    found = [m for m in listed if m.id == message_id]
    assert len(found) == 1, (
        f"expected list_messages of chat {chat_id!r} to hold message {message_id!r} once, "
        f"found it {len(found)} times among {[m.id for m in listed]}"
    )
    return {
        "get_message": await existing_message(store, message_id, RACE_WS),
        "list_messages": found[0],
    }


async def assert_read_back(
    store: TurnStore, chat_id: str, message_id: str, written: str, content: str, parts: Any
) -> None:
    for read_by, message in (await read_both_ways(store, chat_id, message_id)).items():
        difference = value_difference(content, message.content, "content") or value_difference(
            parts, message.parts, "parts"
        )
        assert difference is None, (
            f"{written} then {read_by} did not read back what was written: {difference}"
        )


async def step_then_finalize(
    store: TurnStore, content: str, parts: list[dict[str, Any]], final: str
) -> None:
    """Write content and parts as a step, then as the final answer, reading each back."""
    shell = await streaming_message(store, None)
    chat_id, message_id = shell["chat_id"], shell["message_id"]
    where = {"message_id": message_id, "workspace_id": RACE_WS}
    assert await store.append_step(**where, content=content, parts=parts), (
        f"append_step on the live streaming row {message_id!r} returned False; expected True"
    )
    await assert_read_back(store, chat_id, message_id, "append_step", content, parts)
    finished = await store.finalize(
        **where, status="completed", content=final, parts=parts, usage=None
    )
    assert finished, f"finalize of the existing row {message_id!r} returned False"
    await assert_read_back(store, chat_id, message_id, "finalize", final, parts)


# --- MSG-10a .. MSG-10c: written values read back exactly -------------------------------------


@pytest.mark.requirement("MSG-10a")
@pytest.mark.capability("streaming")
@VALUES
@given(parts=KEYED_PARTS)
@example(parts=ORM_BUG_PARTS)
async def test_keys_their_case_and_nesting_read_back_exactly(store, parts):
    """snake_case and camelCase keys side by side, deeply nested, come back unrenamed."""
    await step_then_finalize(store, "step", parts, "final")


@pytest.mark.requirement("MSG-10b")
@pytest.mark.capability("streaming")
@VALUES
@given(parts=NUMBER_PARTS)
@example(parts=NUMBER_EXAMPLE_PARTS)
async def test_numbers_booleans_and_nulls_read_back_exactly(store, parts):
    """Integers beyond 2^53 (a double cannot hold them), decimals, booleans and nulls."""
    await step_then_finalize(store, "step", parts, "final")


@pytest.mark.requirement("MSG-10c")
@pytest.mark.capability("streaming")
@VALUES
@given(content=STRINGS, parts=STRING_PARTS, final=STRINGS)
@example(content="", parts=[{"type": "text", "text": ""}], final=STRING_EXAMPLE)
@example(content=STRING_EXAMPLE, parts=text_parts(STRING_EXAMPLE), final="")
async def test_strings_read_back_exactly(store, content, parts, final):
    """Contents and string values, empty or with any Unicode, come back code point for
    code point."""
    await step_then_finalize(store, content, parts, final)


@pytest.mark.requirement("MSG-10c")
@VALUES
@given(text=STRINGS)
@example(text="")
@example(text=STRING_EXAMPLE)
async def test_user_turn_text_reads_back_exactly(store, text):
    """The user's text is the user turn's content, exactly."""
    chat_id = await store.create_chat(workspace_id=RACE_WS)
    message_id = await store.persist_user_turn(
        chat_id=chat_id, workspace_id=RACE_WS, turn_id=new_turn_id(), text=text
    )
    assert message_id is not None, "persist_user_turn of a new turn returned None, not an id"
    for read_by, message in (await read_both_ways(store, chat_id, message_id)).items():
        difference = value_difference(text, message.content, "content")
        assert difference is None, (
            f"persist_user_turn then {read_by} did not read back the text written: {difference}"
        )


# --- MSG-10d: a NUL is refused, and nothing is written ----------------------------------------

NUL_STRINGS = st.builds(
    lambda before, after: f"{before}\x00{after}", st.text(STORABLE_TEXT, max_size=4), STRINGS
)


@st.composite
def with_a_nul(draw: st.DrawFn) -> tuple[str, str, list[dict[str, Any]]]:
    """(where, content, parts) with one NUL: in the content, a part's key, or a nested value."""
    where = draw(st.sampled_from(("content", "a part's key", "a nested value")))
    nul = draw(NUL_STRINGS)
    if where == "content":
        return where, nul, text_parts("fine")
    if where == "a part's key":
        return where, "fine", [{"type": "text", "text": "fine", nul: 1}]
    return where, "fine", [{"type": "tool-call", "args": {"path": ["ok", nul]}}]


@pytest.mark.requirement("MSG-10d")
@pytest.mark.capability("streaming")
@VALUES
@given(case=with_a_nul(), finalize=st.booleans())
async def test_a_nul_in_a_step_or_finalize_is_refused_and_writes_nothing(store, case, finalize):
    """PostgreSQL cannot keep NUL in text or jsonb: the store says so, it does not strip it."""
    where, content, parts = case
    shell = await streaming_message(store, None)
    before: Message = shell["before"]
    target = {"message_id": shell["message_id"], "workspace_id": RACE_WS}
    if finalize:
        what = f"finalize with a NUL in {where}"
        call = store.finalize(
            **target, status="completed", content=content, parts=parts, usage=None
        )
    else:
        what = f"append_step with a NUL in {where}"
        call = store.append_step(**target, content=content, parts=parts)
    await raised_by(InvalidArgument, call, what)
    after = await existing_message(store, shell["message_id"], RACE_WS)
    assert (after.status, after.content, after.parts) == (
        before.status,
        before.content,
        before.parts,
    ), (
        f"{what} raised, yet the row changed: status {after.status!r}, content "
        f"{after.content!r}, parts {after.parts!r}; expected it as it was before the call: "
        f"{before.status!r}, {before.content!r}, {before.parts!r}"
    )


@pytest.mark.requirement("MSG-10d")
@VALUES
@given(text=NUL_STRINGS)
async def test_a_nul_in_a_user_turn_is_refused_and_writes_nothing(store, text):
    """A user turn with a NUL is refused whole: no row with the text cut or stripped."""
    ws = new_workspace()
    chat = await store.create_chat(workspace_id=ws)
    await raised_by(
        InvalidArgument,
        store.persist_user_turn(chat_id=chat, workspace_id=ws, turn_id="turn-nul", text=text),
        "persist_user_turn with a NUL in its text",
    )
    rows = await store.list_messages(chat_id=chat, workspace_id=ws)
    assert rows == [], (
        f"persist_user_turn with a NUL raised, yet the chat holds "
        f"{[(m.role, m.content) for m in rows]}; expected no row"
    )
