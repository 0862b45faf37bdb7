"""The HTML report: one self-contained file a CI job publishes and a reviewer opens.

Everything is inline (CSS, a few lines of script for the copy buttons), nothing is
fetched, so the page opens from an artifact store or an air-gapped machine. It is
drawn from the JSON report alone, so a merged or archived report draws the same page.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from harness.report.timeline import COMMIT, EXECUTING, FAULT, UNCOMMITTED, WAIT, Timeline

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse}td,th{padding:.2em .6em;text-align:left;vertical-align:top}
tr.req>td{border-top:1px solid #ddd}
.status{font-weight:600;text-transform:uppercase;font-size:.85em}
.pass{color:#17692b}.fail,.error{color:#b3261e}.skip,.not-declared,.not-run,.not-covered,
.not-reached{color:#777}
.verdict{padding:.5em .8em;border-radius:4px;background:#f3f3f3;display:inline-block}
.verdict.bad{background:#fde7e6}.verdict.good{background:#e6f4ea}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:.1em 1em;margin:.5em 0}
dl.meta dt{color:#666}dl.meta dd{margin:0}
pre{white-space:pre-wrap;word-break:break-word;background:#f7f7f7;padding:.5em;margin:.3em 0}
.rerun{display:flex;gap:.5em;align-items:flex-start}.rerun code{flex:1}
.timeline{position:relative;margin:.6em 0;border-left:1px solid #ccc}
.lane{position:relative;height:34px;border-bottom:1px dashed #e2e2e2}
.lane-name{position:absolute;left:-9.5em;width:9em;text-align:right;top:6px;color:#444;
font-size:.85em;overflow:hidden}
.lanes{margin-left:9.5em}
.bar{position:absolute;height:14px;top:8px;border-radius:2px;min-width:2px;cursor:help;
font-size:10px;line-height:14px;color:#fff;overflow:hidden;white-space:nowrap;padding:0 2px;
box-sizing:border-box}
.legend span{display:inline-block;margin-right:1em;font-size:.85em}
.legend i{display:inline-block;width:1.2em;height:.8em;margin-right:.3em;vertical-align:middle}
.bar.operation{top:2px;height:4px;background:#9aa7b8}
.bar.held,.legend i.held{background:repeating-linear-gradient(45deg,#ccc,#ccc 3px,#fff 3px,
#fff 6px);color:#555}
.bar.executing,.legend i.executing{background:#4a78c2}
.bar.uncommitted,.legend i.uncommitted{background:#d48a1c}
.bar.wait{top:22px;height:8px;font-size:0}
.bar.wait,.legend i.wait{background:#b3261e}
.legend i.commit{background:#17692b;width:3px}.legend i.operation{background:#9aa7b8;height:4px}
.bar.commit,.bar.fault{width:3px;top:2px;height:30px;padding:0}
.bar.commit{background:#17692b}.bar.fault{background:#000}
table.events td{font-size:.85em}table.events td.sql{font-family:monospace}
.finding{border-left:3px solid #b3261e;padding-left:.6em}
"""

_SCRIPT = """
document.querySelectorAll('button.copy').forEach(function(b){b.addEventListener('click',
function(){var t=b.getAttribute('data-text');if(navigator.clipboard){
navigator.clipboard.writeText(t).catch(function(){});}b.textContent='copied';});});
"""


_LEGEND = (
    "<div class='legend'><span><i class='operation'></i>operation, call to answer</span>"
    "<span><i class='held'></i>held at the gate</span>"
    "<span><i class='executing'></i>executing</span>"
    "<span><i class='uncommitted'></i>executed, commit held (locks held)</span>"
    "<span><i class='commit'></i>commit</span>"
    "<span><i class='wait'></i>waiting on another's lock</span></div>"
)


def write_html(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(report), encoding="utf-8")


def render_html(report: dict[str, Any]) -> str:
    """The whole page, from the JSON report (`ConformanceReport.to_json()`)."""
    scenarios = report.get("scenarios", [])
    failing = [s for s in scenarios if s.get("outcome") in ("fail", "error")]
    races = [s for s in scenarios if s.get("timeline") and s.get("outcome") == "pass"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width,initial-scale=1'>",
        f"<title>turnproof: {_e(report.get('adapter_name', ''))}</title>",
        f"<style>{_CSS}</style></head><body>",
        _header(report),
        _matrix(report, scenarios),
        "<section id='failures'><h2>Failures</h2>",
        "".join(_failure(s) for s in failing) or "<p>None.</p>",
        "</section><section id='races'><h2>Races that passed</h2>",
        "".join(_passing_race(s) for s in races) or "<p>None ran.</p>",
        "</section>",
        f"<script>{_SCRIPT}</script></body></html>",
    ]
    return "".join(parts)


def _header(report: dict[str, Any]) -> str:
    verdict = report.get("verdict", {})
    run = report.get("run", {})
    good = verdict.get("ok", False)
    rows = [
        ("adapter", f"{report.get('adapter_name', '')} ({report.get('adapter_spec', '')})"),
        ("capabilities", ", ".join(report.get("capabilities", []))),
        ("PostgreSQL", report.get("postgres", "")),
        ("exit status", str(run.get("exit_status", ""))),
        ("run time", f"{run['seconds']:.1f} s" if "seconds" in run else ""),
        ("turnproof", run.get("version", "")),
    ]
    meta = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows if v)
    return (
        "<header><h1>turnproof conformance report</h1>"
        f"<div class='verdict {'good' if good else 'bad'}' id='verdict'>"
        f"{_e(verdict.get('line', ''))}</div><dl class='meta'>{meta}</dl></header>"
    )


def _matrix(report: dict[str, Any], scenarios: list[dict[str, Any]]) -> str:
    by_requirement: dict[str, list[dict[str, Any]]] = {}
    for scenario in scenarios:
        for requirement_id in scenario.get("requirement_ids", []):
            by_requirement.setdefault(requirement_id, []).append(scenario)
    rows = []
    for row in report.get("rows", []):
        status = row.get("status", "")
        mine = by_requirement.get(row["id"], [])
        listed = "".join(
            f"<tr class='scenario'><td class='status {_css(s.get('outcome', ''))}'>"
            f"{_e(s.get('outcome', ''))}</td><td>{_e(s.get('nodeid', ''))}</td>"
            f"<td>{_duration(s)}</td></tr>"
            for s in mine
        )
        details = (
            f"<details><summary>{len(mine)} scenarios</summary><table>{listed}</table></details>"
            if mine
            else _e(row.get("reason", ""))
        )
        rows.append(
            f"<tr class='req' data-id='{_e(row['id'])}' data-status='{_e(status)}'>"
            f"<td>{_e(row['id'])}</td><td class='status {_css(status)}'>{_e(status)}</td>"
            f"<td>{_e(row.get('text', ''))}{_clauses(row)}</td><td>{details}</td></tr>"
        )
    return (
        "<section id='matrix'><h2>Requirement matrix</h2><table>"
        "<tr><th>ID</th><th>result</th><th>requirement</th><th>scenarios</th></tr>"
        + "".join(rows)
        + "</table></section>"
    )


def _clauses(row: dict[str, Any]) -> str:
    clauses = row.get("clauses") or []
    if not clauses:
        return ""
    items = "".join(
        f"<li>{_e(c.get('id', ''))} <span class='status {_css(c.get('status', ''))}'>"
        f"{_e(c.get('status', ''))}</span> {_e(c.get('text', ''))}</li>"
        for c in clauses
    )
    return f"<ul class='clauses'>{items}</ul>"


def _failure(scenario: dict[str, Any]) -> str:
    parts = [
        f"<article class='failure' data-scenario='{_e(scenario.get('nodeid', ''))}'>",
        f"<h3><span class='status {_css(scenario.get('outcome', ''))}'>"
        f"{_e(scenario.get('outcome', ''))}</span> {_e(scenario.get('nodeid', ''))}</h3>",
        f"<pre class='message'>{_e(scenario.get('reason', ''))}</pre>",
    ]
    if scenario.get("rerun"):
        parts.append(_rerun(scenario["rerun"]))
    if scenario.get("timeline"):
        parts.append(_timeline(Timeline.from_json(scenario["timeline"])))
    parts.append("</article>")
    return "".join(parts)


def _passing_race(scenario: dict[str, Any]) -> str:
    timeline = Timeline.from_json(scenario["timeline"])
    explored = scenario.get("explored", "")
    return (
        f"<details class='race' data-scenario='{_e(scenario.get('nodeid', ''))}'><summary>"
        f"{_e(scenario.get('nodeid', ''))} <small>{_e(explored)}</small></summary>"
        f"<p>Last interleaving explored: {_e(', '.join(timeline.schedule))}</p>"
        f"{_timeline(timeline)}</details>"
    )


def _rerun(line: str) -> str:
    return (
        f"<div class='rerun'><code>{_e(line)}</code>"
        f"<button class='copy' type='button' data-text='{_e(line)}'>copy</button></div>"
    )


def _timeline(timeline: Timeline) -> str:
    span = timeline.duration or 1.0
    lanes = []
    for lane in timeline.lanes:
        bars = "".join(_bar(b, span) for b in timeline.bars if b.lane == lane)
        lanes.append(
            f"<div class='lane' data-lane='{_e(lane)}'><span class='lane-name'>{_e(lane)}</span>"
            f"{bars}</div>"
        )
    events = "".join(
        f"<tr data-kind='{_e(b.kind)}'><td>{b.start * 1000:.1f} ms</td><td>{_e(b.lane)}</td>"
        f"<td>{_e(b.kind)}</td><td class='sql'>{_e(b.detail or b.label)}</td></tr>"
        for b in timeline.bars
    )
    finding = f"<p class='finding'>{_e(timeline.finding)}</p>" if timeline.finding else ""
    return (
        f"{_LEGEND}<div class='timeline' data-race='{_e(timeline.race)}'><div class='lanes'>"
        f"{''.join(lanes)}</div></div>{finding}"
        f"<details><summary>every event, in full</summary><table class='events'>{events}"
        "</table></details>"
    )


def _bar(bar: Any, span: float) -> str:
    left = 100 * bar.start / span
    if bar.kind in (COMMIT, FAULT) or bar.end is None:
        width = 0.0
    else:
        width = max(0.0, 100 * (bar.end - bar.start) / span)
    title = bar.detail or bar.label
    label = bar.label if bar.kind in (EXECUTING, UNCOMMITTED) else ""
    if bar.kind == WAIT:
        title = f"waits on {bar.blocked_by}"
    return (
        f"<div class='bar {_e(bar.kind)}' data-kind='{_e(bar.kind)}' "
        f"data-blocked-by='{_e(bar.blocked_by)}' data-start='{bar.start:.6f}' "
        f"style='left:{left:.3f}%;width:{width:.3f}%' title='{_e(title)}'>{_e(label)}</div>"
    )


def _duration(scenario: dict[str, Any]) -> str:
    seconds = scenario.get("duration")
    return f"{seconds:.2f} s" if isinstance(seconds, (int, float)) else ""


def _css(status: str) -> str:
    return status.replace(" ", "-")


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)
