"""A race's timeline in the terminal: one column per lane, one row per event, 100 wide.

Replaces the transcript's cut statement lines: every statement is shown whole, wrapped
inside its lane's column, so a reader follows who did what while another waited.
"""

from __future__ import annotations

import textwrap

from harness.report.timeline import (
    COMMIT,
    EXECUTING,
    FAULT,
    HELD,
    OPERATION,
    UNCOMMITTED,
    WAIT,
    Bar,
    Timeline,
)

WIDTH = 100
TIME_COLUMN = 10  # "   12.3ms " (milliseconds since the first event)


def render_lanes(timeline: Timeline, width: int = WIDTH) -> list[str]:
    """The timeline as aligned lines of at most `width` characters."""
    lanes = list(timeline.lanes)
    column = max(12, (width - TIME_COLUMN) // max(1, len(lanes)) - 1)
    lines = [_row("", [lane.upper() for lane in lanes], column)]
    lines.append(_row("", ["-" * column for _ in lanes], column))
    for at, lane, text in _events(timeline):
        cells = ["" for _ in lanes]
        for number, piece in enumerate(textwrap.wrap(text, column) or [""]):
            cells[lanes.index(lane)] = piece
            lines.append(_row(f"{at * 1000:7.1f}ms" if number == 0 else "", cells, column))
    if timeline.finding:
        lines.append("")
        lines.extend(textwrap.wrap(f"finding: {timeline.finding}", width))
    return lines


def _events(timeline: Timeline) -> list[tuple[float, str, str]]:
    """(time, lane, text) rows: an operation shows at its call and at its answer."""
    events = []
    for bar in timeline.bars:
        if bar.kind == OPERATION:
            events.append((bar.start, bar.lane, f"call {bar.detail}"))
            events.append(
                (
                    bar.end if bar.end is not None else bar.start,
                    bar.lane,
                    f"{bar.label} {bar.outcome}",
                )
            )
        elif text := _event_text(bar):
            events.append((bar.start, bar.lane, text))
    return sorted(events, key=lambda event: event[0])


def _event_text(bar: Bar) -> str:
    if bar.kind == UNCOMMITTED:
        return f"runs, its commit held: {bar.detail}"
    if bar.kind == EXECUTING:
        return f"runs: {bar.detail}"
    if bar.kind == COMMIT:
        return "COMMIT reaches PostgreSQL"
    if bar.kind == WAIT:
        ended = f" until {bar.end * 1000:.1f}ms" if bar.end is not None else ""
        return f"<waiting on {bar.blocked_by}>{ended}"
    if bar.kind == FAULT:
        return f"{bar.label}: {bar.detail}"
    if bar.kind == HELD:
        return ""  # the gate's hold is implicit in the gap before the statement runs
    return bar.label


def _row(stamp: str, cells: list[str], column: int) -> str:
    body = " ".join(cell.ljust(column) for cell in cells)
    return f"{stamp:<{TIME_COLUMN}}{body}".rstrip()
