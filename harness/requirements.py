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

CLAUSE_LETTERS = "abcdefghijklmnopqrstuvwxyz"
"""A clause ID is its requirement's ID plus one of these (`MSG-1` + `d`)."""


@dataclass(frozen=True)
class Clause:
    """One sentence of a requirement: what one scenario checks and one broken variant breaks."""

    id: str
    text: str

    @property
    def requirement_id(self) -> str:
        return self.id.rstrip(CLAUSE_LETTERS)


@dataclass(frozen=True)
class Requirement:
    id: str
    text: str
    capability: str
    clauses: tuple[Clause, ...]


def _requirement(
    requirement_id: str, text: str, capability: str, *clauses: tuple[str, str]
) -> Requirement:
    return Requirement(
        requirement_id,
        text,
        capability,
        tuple(Clause(requirement_id + letter, clause) for letter, clause in clauses),
    )


CORE_CAPABILITIES: frozenset[str] = frozenset(
    {"turns", "streaming", "usage", "sweep", "runs", "workspaces"}
)
EXTRA_CAPABILITIES: frozenset[str] = frozenset({"network", "process", "coalescing"})
CAPABILITIES: frozenset[str] = CORE_CAPABILITIES | EXTRA_CAPABILITIES

CATALOG: tuple[Requirement, ...] = (
    _requirement(
        "MSG-1",
        "persist_user_turn is idempotent per (chat, turn_id, role); first text wins",
        "turns",
        ("a", "a repeated or concurrent persist returns the same id"),
        ("b", "repeats and concurrent duplicates leave exactly one row"),
        ("c", "the conflict never raises"),
        ("d", "the first text wins"),
        ("e", "another chat, turn id or role gets a row of its own"),
    ),
    _requirement(
        "MSG-2",
        "an empty or missing turn_id returns None and writes nothing",
        "turns",
        ("a", "both persist operations return None without a turn id"),
        ("b", "nothing is written without a turn id"),
    ),
    _requirement(
        "MSG-3",
        "persist_assistant_shell makes one empty streaming row per turn, idempotently",
        "turns",
        ("a", "the shell is an assistant row with no text"),
        ("b", "the shell is streaming where statuses are tracked"),
        ("c", "repeated or concurrent shells return the same id and leave one row"),
    ),
    _requirement(
        "MSG-4",
        "append_step applies only while the row is streaming, decided in the same statement",
        "streaming",
        ("a", "a step on a streaming row returns True and writes content and parts"),
        ("b", "a step on a terminal or legacy row returns False and changes nothing"),
        ("c", "the guard holds whatever the commit order of a concurrent finalize"),
    ),
    _requirement(
        "MSG-5",
        "every message write sets updated_at from the database clock, moving it forward",
        "streaming",
        ("a", "every message write takes updated_at from the database clock"),
        ("b", "append_step on a streaming row moves updated_at forward"),
    ),
    _requirement(
        "MSG-6",
        "finalize is unguarded and always wins; an unknown status raises InvalidArgument",
        "streaming",
        ("a", "finalize sets the terminal status, content and parts"),
        ("b", "finalize wins over a row a sweep aborted, also concurrently"),
        ("c", "a second finalize overwrites content and status"),
        ("d", "an unknown status raises InvalidArgument and writes nothing"),
    ),
    _requirement(
        "MSG-7",
        "finalize with empty content and no parts stores the '(no text response)' part",
        "streaming",
        ("a", "an empty finalize stores the '(no text response)' status part"),
        ("b", "the marker is stored only when there is no content and no part"),
    ),
    _requirement(
        "MSG-8",
        "finalize of a missing message returns False, never raises, writes no usage",
        "streaming",
        ("a", "finalize of a missing or foreign message returns False without raising"),
        ("b", "finalize of a missing or foreign message writes no usage"),
    ),
    _requirement(
        "MSG-9",
        "persisting on a missing or foreign chat returns None and writes nothing",
        "turns",
        ("a", "a persist on a chat that does not exist returns None and writes nothing"),
        ("b", "a persist on another workspace's chat returns None and writes nothing"),
    ),
    _requirement(
        "MSG-10",
        "what is written is what is read back, exactly; a value the store cannot keep is refused",
        "turns",
        ("a", "keys, key case and nesting come back exactly"),
        ("b", "numbers come back exactly: integers beyond 2^53, decimals, booleans, nulls"),
        ("c", "strings come back exactly: empty strings, any Unicode, astral-plane characters"),
        ("d", "a NUL raises InvalidArgument and writes nothing"),
    ),
    _requirement(
        "USG-1",
        "at most one usage row per message; the first committed usage is authoritative",
        "usage",
        ("a", "a later finalize leaves the first usage untouched, raising nothing"),
        ("b", "a concurrent second writer leaves one usage row, the first committed"),
        ("c", "usage is kept per message"),
    ),
    _requirement(
        "SWP-1",
        "sweep_streaming aborts exactly the stale streaming rows, in every workspace",
        "sweep",
        ("a", "stale streaming rows are aborted, in every workspace"),
        ("b", "the sweep returns how many rows it changed"),
    ),
    _requirement(
        "SWP-2",
        "fresh streaming, terminal and legacy NULL-status rows are never swept",
        "sweep",
        ("a", "a fresh streaming row is never swept, also during another replica's turn"),
        ("b", "terminal rows are never touched"),
        ("c", "legacy NULL-status rows are never touched"),
    ),
    _requirement(
        "SWP-3",
        "a second sweep right after the first changes nothing and returns 0",
        "sweep",
        ("a", "a second sweep right after the first changes nothing and returns 0"),
    ),
    _requirement(
        "SWP-4",
        "a sweep racing append_step ends fresh-and-streaming or aborted-without-the-step",
        "sweep",
        ("a", "a step after a sweep is rejected and the row stays aborted without it"),
        ("b", "a step before a sweep keeps the row fresh and streaming"),
        ("c", "a concurrent sweep and step end in one of the two states"),
    ),
    _requirement(
        "SWP-5",
        "staleness is judged by the database clock, whatever the replica's clock says",
        "sweep",
        ("a", "a replica clock ahead does not sweep fresh rows"),
        ("b", "a replica clock behind does not spare stale rows"),
    ),
    _requirement(
        "RUN-1",
        "at most one active run per chat, enforced by the database under concurrency",
        "runs",
        ("a", "begin_run starts an active run"),
        ("b", "a second begin on a chat with an active run raises RunAlreadyActive"),
        ("c", "concurrent begins: exactly one wins, the others raise, one active row"),
        ("d", "the rule is per chat"),
    ),
    _requirement(
        "RUN-2",
        "only the one-active-run conflict becomes RunAlreadyActive; nothing else leaks a run",
        "runs",
        ("a", "a missing or foreign chat raises, not RunAlreadyActive, and leaves no run"),
        ("b", "a winner that died is not reported as a conflict"),
    ),
    _requirement(
        "RUN-3",
        "if the winning begin rolls back or dies before commit, a waiting begin succeeds",
        "runs",
        ("a", "a waiting begin succeeds when the winner rolls back or dies"),
    ),
    _requirement(
        "RUN-4",
        "finish_run ends an active run once; afterwards a new run can begin",
        "runs",
        ("a", "finish_run ends an active run in the given status, returning True; unknown raises"),
        ("b", "finish_run on a terminal run returns False and changes nothing"),
        ("c", "after finish_run a new run can begin"),
    ),
    _requirement(
        "RUN-5",
        "request_stop flags an active run without ending it; a disconnect ends nothing",
        "runs",
        ("a", "request_stop flags an active run, returns True and leaves it active"),
        ("b", "request_stop on a terminal run returns False"),
        ("c", "a writer that disconnects or dies leaves its run active"),
        ("d", "the stop flag survives record_step, link_assistant and request_stop"),
    ),
    _requirement(
        "RUN-6",
        "latest_run returns the newest run with its assistant message and step count",
        "runs",
        ("a", "latest_run carries the linked assistant message and the step count"),
        ("b", "the latest run is the one begun last, by the database clock"),
        ("c", "a late write to an older run does not make it the latest"),
        ("d", "a chat without runs has no latest run"),
    ),
    _requirement(
        "RUN-7",
        "sweep_runs aborts stale active runs only; record_step keeps a run fresh",
        "runs",
        ("a", "stale active runs are aborted and counted; fresh and finished ones are not"),
        ("b", "record_step keeps a run fresh"),
        ("c", "run staleness is judged by the database clock"),
    ),
    _requirement(
        "WS-1",
        "no operation taking a workspace id reads or writes outside that workspace",
        "workspaces",
        ("a", "reads see nothing of another workspace"),
        ("b", "writes to another workspace return False or None and change nothing"),
    ),
    _requirement(
        "DUR-1",
        "a step or finalize that returned True survives the writer's death",
        "process",
        ("a", "the last step that returned True survives a kill right after it"),
        ("b", "a finalize that returned True survives a kill right after it"),
        ("c", "what returned True survives a server crash"),
    ),
    _requirement(
        "DUR-2",
        "a writer killed or cut mid-operation leaves no partial write",
        "process",
        ("a", "an operation killed or cut midway lands whole or not at all"),
    ),
    _requirement(
        "DUR-3",
        "after a writer dies mid-turn its steps stay readable and sweeps close the turn",
        "process",
        ("a", "the finished steps of a dead writer stay readable"),
        ("b", "sweeps close the dead writer's message and run"),
    ),
    _requirement(
        "DUR-4",
        "an operation with an unknown outcome can be retried and converges",
        "process",
        ("a", "a retried operation whose outcome was lost converges"),
    ),
    _requirement(
        "CW-1",
        "deltas within one debounce window become at most one write",
        "coalescing",
        ("a", "deltas within one debounce window become at most one write"),
    ),
    _requirement(
        "CW-2",
        "structural changes flush before update returns",
        "coalescing",
        ("a", "structural changes flush before update returns"),
    ),
    _requirement(
        "CW-3",
        "flush(id) returns only once the latest state is durable",
        "coalescing",
        ("a", "flush(id) returns only once the latest state is durable"),
    ),
    _requirement(
        "CW-4",
        "flush_all covers every dirty or in-flight id",
        "coalescing",
        ("a", "flush_all covers every dirty or in-flight id"),
    ),
    _requirement(
        "CW-5",
        "delete drops pending state; nothing writes the row back",
        "coalescing",
        ("a", "delete drops pending state"),
        ("b", "a write in flight during delete does not write the row back"),
    ),
    _requirement(
        "CW-6",
        "the final row is the same with debounce as without",
        "coalescing",
        ("a", "the final row is the same with debounce as without"),
    ),
    _requirement(
        "CW-7",
        "a debounced write after finalize never revives the row",
        "coalescing",
        ("a", "a debounced write after finalize never revives the row"),
    ),
)

REQUIREMENTS: dict[str, Requirement] = {r.id: r for r in CATALOG}
CLAUSES: dict[str, Clause] = {c.id: c for r in CATALOG for c in r.clauses}

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


def clause(clause_id: str) -> Clause:
    """Look a clause ID (`MSG-1d`) up, with an error naming its requirement's clauses."""
    try:
        return CLAUSES[clause_id]
    except KeyError:
        known = requirement(clause_id.rstrip(CLAUSE_LETTERS)).clauses
        raise KeyError(
            f"unknown clause {clause_id!r}; known: {', '.join(c.id for c in known)}"
        ) from None


def capabilities_needed(
    requirement_ids: tuple[str, ...], markers: tuple[str, ...]
) -> frozenset[str]:
    """What a scenario tagged with these IDs and `capability` markers needs, and may use."""
    return frozenset({requirement(i).capability for i in requirement_ids} | set(markers))
