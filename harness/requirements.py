"""The requirement catalog: every contract ID, its one-line text, its capability; and which
capability each store operation belongs to.

This is the one place the IDs live. Scenario tags are checked against it,
capability skips are decided from it and the conformance report is keyed by it.

A scenario may call only the operations of the capabilities it needs (its requirements'
capabilities plus its `capability(...)` markers; `capabilities_needed`), which
`harness.capability_guard` enforces: an adapter is judged only on what it declares, so a
scenario touching anything else would turn a missing capability into a false FAIL.

`OPERATION_CAPABILITIES` is the contract's capability table as data. An operation is allowed
when the scenario needs any one of its capabilities (`finalize` belongs to both `streaming`
and `usage`: a `turns` + `usage` store finalizes to write usage). `ARGUMENT_CAPABILITIES`
names the arguments that need a capability of their own when given (`finalize(usage=...)`
needs `usage`).

`workspaces` grants no operation. WS-1 is a property of every operation that takes a
workspace id (the contract's `workspaces` row), so a WS-1 scenario declares with
`@pytest.mark.capability(...)` the capabilities of the operations it uses (for example
`capability("turns", "runs")` to check `latest_run` across workspaces), and is skipped, never
failed, for an adapter lacking one. Likewise every scenario that sets up chats and turns
declares `turns`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Requirement:
    id: str
    text: str
    capability: str


CORE_CAPABILITIES: frozenset[str] = frozenset(
    {"turns", "streaming", "usage", "sweep", "runs", "workspaces"}
)
EXTRA_CAPABILITIES: frozenset[str] = frozenset({"network", "process", "coalescing"})
CAPABILITIES: frozenset[str] = CORE_CAPABILITIES | EXTRA_CAPABILITIES

CATALOG: tuple[Requirement, ...] = (
    Requirement(
        "MSG-1",
        "persist_user_turn is idempotent per (chat, turn_id, role); first text wins",
        "turns",
    ),
    Requirement("MSG-2", "an empty or missing turn_id returns None and writes nothing", "turns"),
    Requirement(
        "MSG-3",
        "persist_assistant_shell makes one empty streaming row per turn, idempotently",
        "turns",
    ),
    Requirement(
        "MSG-4",
        "append_step applies only while the row is streaming, decided in the same statement",
        "streaming",
    ),
    Requirement(
        "MSG-5",
        "every message write sets updated_at from the database clock, moving it forward",
        "streaming",
    ),
    Requirement(
        "MSG-6",
        "finalize is unguarded and always wins; an unknown status raises InvalidArgument",
        "streaming",
    ),
    Requirement(
        "MSG-7",
        "finalize with empty content and no parts stores the '(no text response)' part",
        "streaming",
    ),
    Requirement(
        "MSG-8",
        "finalize of a missing message returns False, never raises, writes no usage",
        "streaming",
    ),
    Requirement(
        "MSG-9", "persisting on a missing or foreign chat returns None and writes nothing", "turns"
    ),
    Requirement(
        "USG-1",
        "at most one usage row per message; the first committed usage is authoritative",
        "usage",
    ),
    Requirement(
        "SWP-1",
        "sweep_streaming aborts exactly the stale streaming rows, in every workspace",
        "sweep",
    ),
    Requirement(
        "SWP-2", "fresh streaming, terminal and legacy NULL-status rows are never swept", "sweep"
    ),
    Requirement(
        "SWP-3", "a second sweep right after the first changes nothing and returns 0", "sweep"
    ),
    Requirement(
        "SWP-4",
        "a sweep racing append_step ends fresh-and-streaming or aborted-without-the-step",
        "sweep",
    ),
    Requirement(
        "SWP-5",
        "staleness is judged by the database clock, whatever the replica's clock says",
        "sweep",
    ),
    Requirement(
        "RUN-1",
        "at most one active run per chat, enforced by the database under concurrency",
        "runs",
    ),
    Requirement(
        "RUN-2",
        "only the one-active-run conflict becomes RunAlreadyActive; nothing else leaks a run",
        "runs",
    ),
    Requirement(
        "RUN-3",
        "if the winning begin rolls back or dies before commit, a waiting begin succeeds",
        "runs",
    ),
    Requirement(
        "RUN-4", "finish_run ends an active run once; afterwards a new run can begin", "runs"
    ),
    Requirement(
        "RUN-5",
        "request_stop flags an active run without ending it; a disconnect ends nothing",
        "runs",
    ),
    Requirement(
        "RUN-6",
        "latest_run returns the newest run with its assistant message and step count",
        "runs",
    ),
    Requirement(
        "RUN-7", "sweep_runs aborts stale active runs only; record_step keeps a run fresh", "runs"
    ),
    Requirement(
        "WS-1",
        "no operation taking a workspace id reads or writes outside that workspace",
        "workspaces",
    ),
    Requirement(
        "DUR-1", "a step or finalize that returned True survives the writer's death", "process"
    ),
    Requirement("DUR-2", "a writer killed or cut mid-operation leaves no partial write", "process"),
    Requirement(
        "DUR-3",
        "after a writer dies mid-turn its steps stay readable and sweeps close the turn",
        "process",
    ),
    Requirement(
        "DUR-4", "an operation with an unknown outcome can be retried and converges", "process"
    ),
    Requirement("CW-1", "deltas within one debounce window become at most one write", "coalescing"),
    Requirement("CW-2", "structural changes flush before update returns", "coalescing"),
    Requirement("CW-3", "flush(id) returns only once the latest state is durable", "coalescing"),
    Requirement("CW-4", "flush_all covers every dirty or in-flight id", "coalescing"),
    Requirement("CW-5", "delete drops pending state; nothing writes the row back", "coalescing"),
    Requirement("CW-6", "the final row is the same with debounce as without", "coalescing"),
    Requirement("CW-7", "a debounced write after finalize never revives the row", "coalescing"),
)

REQUIREMENTS: dict[str, Requirement] = {r.id: r for r in CATALOG}

OPERATION_CAPABILITIES: dict[str, frozenset[str]] = {
    "create_chat": frozenset({"turns"}),
    "persist_user_turn": frozenset({"turns"}),
    "persist_assistant_shell": frozenset({"turns"}),
    "get_message": frozenset({"turns"}),
    "list_messages": frozenset({"turns"}),
    "append_step": frozenset({"streaming"}),
    "finalize": frozenset({"streaming", "usage"}),
    "insert_legacy_message": frozenset({"streaming"}),
    "usage_for": frozenset({"usage"}),
    "sweep_streaming": frozenset({"sweep"}),
    "begin_run": frozenset({"runs"}),
    "link_assistant": frozenset({"runs"}),
    "record_step": frozenset({"runs"}),
    "finish_run": frozenset({"runs"}),
    "request_stop": frozenset({"runs"}),
    "latest_run": frozenset({"runs"}),
    "sweep_runs": frozenset({"runs"}),
    "writer": frozenset({"coalescing"}),
}
"""Each store operation and the capabilities any one of which lets a scenario call it."""

ARGUMENT_CAPABILITIES: dict[tuple[str, str], str] = {("finalize", "usage"): "usage"}
"""(operation, argument) -> the capability a scenario needs to pass that argument not None."""

NOT_YET_COVERED: dict[str, str] = {}
"""IDs the suite has no scenario for yet, with why; the catalog test keeps this list exact."""


def requirement(requirement_id: str) -> Requirement:
    """Look an ID up, with an error that lists the known ones when it is misspelt."""
    try:
        return REQUIREMENTS[requirement_id]
    except KeyError:
        raise KeyError(
            f"unknown requirement ID {requirement_id!r}; known IDs: {', '.join(REQUIREMENTS)}"
        ) from None


def capabilities_needed(
    requirement_ids: tuple[str, ...], markers: tuple[str, ...]
) -> frozenset[str]:
    """What a scenario tagged with these IDs and `capability` markers needs, and may use."""
    return frozenset({requirement(i).capability for i in requirement_ids} | set(markers))
