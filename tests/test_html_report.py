"""The HTML report, opened in a real browser: Debian's Chromium driven by Playwright.

The browser tests skip, saying why, where Chromium or Playwright is missing; `.ci/run`
installs both, so CI runs them.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from tests.turnproof_command import start_turnproof_run

BROKEN = "reference_impl.broken:read_then_write_step"
# The late step reads 'streaming', the finalize's UPDATE runs and keeps its lock, the step's
# UPDATE waits on that uncommitted row, the finalize commits, and the step clobbers the row.
WAITING_SCHEDULE = "step,step,finalize,step,finalize,step"
RACE = "scenarios.test_message_races::test_late_step_never_clobbers_a_finalized_row"


@pytest.fixture(scope="module")
def failing_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A real run of a broken variant's MSG-4 race, with --html and --json."""
    where = tmp_path_factory.mktemp("html")
    page, data = where / "report.html", where / "report.json"
    process = start_turnproof_run(
        "--adapter",
        BROKEN,
        "--requirement",
        "MSG-4",
        "--html",
        str(page),
        "--json",
        str(data),
        "--",
        "--race-schedule",
        WAITING_SCHEDULE,
        cwd=where,
    )
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 1, f"expected MSG-4 to fail (exit 1):\n{output}"
    assert page.exists(), f"no HTML report was written:\n{output}"
    return page, json.loads(data.read_text())


def test_report_is_self_contained(failing_report):
    page, _ = failing_report
    text = page.read_text()
    for outside in ("http://", "https://", "<link", "src="):
        assert outside not in text, f"the report refers to something outside it: {outside!r}"


def _browser():
    playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium on PATH (Debian: apt-get install chromium)")
    return playwright, chromium


def test_failing_race_in_a_browser(failing_report, tmp_path):
    sync_api, chromium = _browser()
    page_path, report = failing_report
    failing = [s for s in report["scenarios"] if s["outcome"] == "fail"]
    assert failing, f"the JSON report names no failing scenario: {report['verdict']}"
    rerun = failing[0]["rerun"]
    requests: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.set_offline(True)  # the page must not need the network
            page = context.new_page()
            page.on("request", lambda request: requests.append(request.url))
            page.goto(page_path.as_uri())

            rows = page.locator("#matrix tr.req")
            assert rows.count() == len(report["rows"]), "one matrix row per requirement"
            msg4 = page.locator("#matrix tr.req[data-id='MSG-4']")
            assert msg4.get_attribute("data-status") == "fail"

            failure = page.locator(f"#failures article[data-scenario='{failing[0]['nodeid']}']")
            lanes = failure.locator(".timeline .lane")
            assert [lanes.nth(i).get_attribute("data-lane") for i in range(lanes.count())][:2] == [
                "finalize",
                "step",
            ], "one lane per actor, in the race's order"
            waits = failure.locator(".lane[data-lane='step'] .bar.wait")
            assert waits.count() >= 1, "the step's wait on the finalize's row is drawn"
            assert "finalize" in (waits.first.get_attribute("data-blocked-by") or "")

            # The step's UPDATE waited on the finalize's uncommitted row, and its commit
            # (the clobbering write) came after the finalize's commit.
            finalize_commit = failure.locator(".lane[data-lane='finalize'] .bar.commit").last
            step_commit = failure.locator(".lane[data-lane='step'] .bar.commit").last
            update = failure.locator(".lane[data-lane='step'] .bar.uncommitted[title^='UPDATE']")
            assert update.count() == 1, "the step's UPDATE is drawn"
            assert _start(waits.first) >= _start(update), "the wait begins as the UPDATE runs"
            assert _start(step_commit) > _start(finalize_commit), (
                "the step's write commits after the finalize's"
            )

            assert failure.locator("button.copy").get_attribute("data-text") == rerun

            timing = page.evaluate(
                "JSON.stringify(performance.getEntriesByType('navigation')[0].duration)"
            )
            print(f"report opened in {float(timing):.1f} ms (navigation timing)")
            shot = tmp_path / "timeline.png"
            failure.locator(".timeline").screenshot(path=str(shot))
            box = failure.locator(".timeline").bounding_box()
        finally:
            browser.close()
    assert requests == [page_path.as_uri()], f"the page asked for more: {requests}"
    width, height = _png_size(shot)
    assert box is not None
    size = f"screenshot {width}x{height}, timeline {box['width']}x{box['height']}"
    assert abs(width - box["width"]) <= 1, size
    assert abs(height - box["height"]) <= 1, size


def _start(bar) -> float:
    return float(bar.get_attribute("data-start") or "nan")


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height
