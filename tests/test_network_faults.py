"""The network-fault plugin and scenarios: they catch each bug class they exist for, and
they run against a real Toxiproxy (here our own server, started standalone and given by
URL, as a real one would be) with the gate scenarios skipped. That they pass on the
reference, none skipped, the main job proves (tests/test_turnproof_run.py).

Bugs no shipped variant has are defined here, each as the reference with one fault-only
flaw, and loaded through --adapter like any other adapter.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from harness.proxy.server import RunningProxyServer
from harness.pytest_plugin import USAGE_ERROR

# Until harness.pytest_plugin lists the plugin in `pytest_plugins`; harmless after that.
MODULE = "scenarios.test_network_faults"
GATE_SKIP_REASON = "needs the statement gate of the harness's own proxy"

GATE_SCENARIOS = {
    f"test_retry_after_the_answer_to_any_statement_was_lost_converges[{op}]"
    for op in ("persist_user_turn", "persist_assistant_shell", "finalize", "begin_run")
} | {
    f"test_proxy_down_mid_operation_lands_whole_or_not_at_all[{op}]"
    for op in ("finalize", "append_step")
}
PERSIST_OPS = ("persist_user_turn", "persist_assistant_shell")
TOXICS = ("reset_peer", "timeout", "limit_data")


def wire_cases(ops: tuple[str, ...], streams: tuple[str, ...]) -> set[str]:
    return {
        f"test_retry_after_a_lost_request_or_answer_converges[{op}-{toxic}-{stream}]"
        for op in ops
        for toxic in TOXICS
        for stream in streams
    }


def local(variant: str) -> str:
    """The --adapter spec of a fault-only variant in reference_impl.broken."""
    return f"reference_impl.broken:{variant}"


@pytest.fixture(autouse=True)
def _own_proxy_server_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner runs use the harness's own proxy unless a test gives a Toxiproxy URL, even
    when this session was started with TOXIPROXY_URL (for the proxy contract tests)."""
    monkeypatch.delenv("TOXIPROXY_URL", raising=False)


@pytest.fixture
def standalone_toxiproxy() -> Iterator[RunningProxyServer]:
    """Our proxy server on its own, reached only through its HTTP API, like a real one."""
    with RunningProxyServer.start() as server:
        yield server


def proxies_left(server: RunningProxyServer) -> list[str]:
    return sorted(server.call(lambda registry: registry.proxies()))


# Each scenario catches the bugs it exists for ---------------------------------------------

CAUGHT = [
    pytest.param(
        "reference_impl.broken:unguarded_step",
        {"test_late_step_held_in_transit_is_a_no_op"},
        id="unguarded_step",
    ),
    pytest.param(
        "reference_impl.broken:finalize_in_two_statements",
        {
            f"test_finalize_cut_on_the_wire_lands_whole_or_not_at_all[{toxic}-downstream]"
            for toxic in TOXICS
        }
        | {"test_proxy_down_mid_operation_lands_whole_or_not_at_all[finalize]"},
        id="finalize_in_two_statements",
    ),
    pytest.param(
        "reference_impl.broken:steps_in_memory",
        {
            "test_large_parts_arrive_intact_through_a_shaped_link[bandwidth]",
            "test_large_parts_arrive_intact_through_a_shaped_link[slicer]",
            "test_large_step_cut_midway_changes_nothing",
        },
        id="steps_in_memory",
    ),
    pytest.param(
        "reference_impl.broken:sweep_without_staleness",
        {"test_sweep_delayed_in_transit_is_judged_on_arrival"},
        id="sweep_without_staleness",
    ),
    pytest.param(
        local("insert_only_persist"),
        wire_cases(PERSIST_OPS, ("downstream",))
        | {
            f"test_retry_after_the_answer_to_any_statement_was_lost_converges[{op}]"
            for op in PERSIST_OPS
        },
        id="insert_only_persist",
    ),
    pytest.param(
        local("begin_leaks_conflict"),
        wire_cases(("begin_run",), ("downstream",))
        | {"test_retry_after_the_answer_to_any_statement_was_lost_converges[begin_run]"},
        id="begin_leaks_conflict",
    ),
    pytest.param(
        local("swallows_lost_connections"),
        wire_cases((*PERSIST_OPS, "finalize"), ("upstream", "downstream"))
        | {
            f"test_retry_after_the_answer_to_any_statement_was_lost_converges[{op}]"
            for op in (*PERSIST_OPS, "finalize")
        }
        | {
            f"test_finalize_cut_on_the_wire_lands_whole_or_not_at_all[{toxic}-downstream]"
            for toxic in TOXICS
        }
        | {
            f"test_proxy_down_mid_operation_lands_whole_or_not_at_all[{op}]"
            for op in ("finalize", "append_step")
        }
        | {
            "test_proxy_down_between_operations_keeps_the_turn_whole",
            "test_large_step_cut_midway_changes_nothing",
        },
        id="swallows_lost_connections",
    ),
    pytest.param(
        local("step_in_two_statements"),
        {
            "test_proxy_down_mid_operation_lands_whole_or_not_at_all[append_step]",
            "test_large_step_cut_midway_changes_nothing",
        },
        id="step_in_two_statements",
    ),
    pytest.param(
        local("sweep_cutoff_from_send_time"),
        {"test_sweep_delayed_in_transit_is_judged_on_arrival"},
        id="sweep_cutoff_from_send_time",
    ),
]


@pytest.mark.parametrize(("adapter_spec", "expected"), CAUGHT)
def test_each_bug_fails_exactly_the_scenarios_it_must(run_scenarios, adapter_spec, expected):
    run = run_scenarios(adapter_spec, target=MODULE)
    assert run.result.ret == pytest.ExitCode.TESTS_FAILED, run.result.stdout.str()
    assert run.errors() == 0, "a premise failed instead:\n" + run.result.stdout.str()
    assert run.failing() == expected, run.result.stdout.str()


@pytest.mark.parametrize(
    "variant", ["check_then_insert_persist", "check_then_act_begin", "read_then_write_step"]
)
def test_race_only_bugs_pass_the_network_scenarios(run_scenarios, variant):
    """Several-statement operations get no false failure and no premise error: the direction
    proof accepts a lost first answer, the retry checks accept any correct convergence."""
    run = run_scenarios(f"reference_impl.broken:{variant}", target=MODULE)
    assert run.result.ret == pytest.ExitCode.OK, run.result.stdout.str()


# Against a real Toxiproxy (our server, standalone, by URL) -------------------------------


def test_toxiproxy_url_runs_the_scenarios_and_skips_the_gate_ones(
    run_scenarios, standalone_toxiproxy
):
    run = run_scenarios(
        "reference",
        "--toxiproxy-url",
        standalone_toxiproxy.api_url,
        "-v",
        "-rs",
        target=MODULE,
    )
    stdout = run.result.stdout.str()
    assert run.result.ret == pytest.ExitCode.OK, stdout
    skipped = set(re.findall(r"::(test_\S+) SKIPPED", stdout))
    assert skipped == GATE_SCENARIOS, stdout
    assert f"{GATE_SKIP_REASON}; the real Toxiproxy at {standalone_toxiproxy.api_url}" in stdout
    assert run.result.parseoutcomes()["passed"] >= 33, stdout
    for requirement_id in ("MSG-4", "DUR-2", "DUR-4", "SWP-5"):
        assert run.status(requirement_id) == "pass", stdout
    assert proxies_left(standalone_toxiproxy) == [], "the run left proxies behind"


def test_toxiproxy_url_from_the_environment(run_scenarios, standalone_toxiproxy, monkeypatch):
    monkeypatch.setenv("TOXIPROXY_URL", standalone_toxiproxy.api_url)
    run = run_scenarios(
        "reference",
        "-k",
        "late_step or proxy_down",
        target=MODULE,
    )
    outcomes = run.result.parseoutcomes()
    assert outcomes == {"passed": 2, "skipped": 2, "deselected": outcomes["deselected"]}, (
        run.result.stdout.str()
    )
    assert proxies_left(standalone_toxiproxy) == []


def test_unreachable_toxiproxy_is_a_usage_error(run_scenarios):
    with RunningProxyServer.start() as server:
        url = server.api_url  # a port that was ours a moment ago and answers no more
    run = run_scenarios("reference", "--toxiproxy-url", url, "-k", "late_step", target=MODULE)
    assert run.result.ret == USAGE_ERROR
    assert f"--toxiproxy-url {url}" in run.result.stdout.str() + run.result.stderr.str()


FIXTURE_PROBE = """
import pytest

from harness.errors import HarnessError

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def test_replica_api(faulty_store):
    writer = await faulty_store(name="writer")
    assert "application_name=turnproof-writer" in writer.dsn
    ws = "ws"
    chat = await writer.store.create_chat(workspace_id=ws)
    assert await writer.last_statement_started() is not None
    with pytest.raises(HarnessError, match="already used"):
        await faulty_store(name="writer")
    toxic = writer.add_toxic("latency", stream="downstream", latency=1)
    writer.remove_toxic(toxic)
    writer.down()
    with pytest.raises(Exception):
        await writer.store.create_chat(workspace_id=ws)
    writer.up()
    store = await writer.reconnect()
    assert store is writer.store
    assert await store.persist_user_turn(chat_id=chat, workspace_id=ws, turn_id="t", text="x")
    writer.add_toxic("timeout", stream="upstream", timeout=0)  # left for teardown to remove


async def test_gate_without_the_mark(faulty_store):
    replica = await faulty_store(name="unmarked")
    assert replica.gate.events == []


def test_teardown_removed_every_proxy_of_the_own_server(pytestconfig):
    from harness.pytest_plugin import turnproof_run

    assert turnproof_run(pytestconfig).proxies().registry.proxies() == {}
"""


@pytest.mark.parametrize("toxiproxy", [False, True], ids=["own-server", "toxiproxy-url"])
def test_faulty_store_api_and_teardown(pytester, postgres_server, standalone_toxiproxy, toxiproxy):
    pytester.makepyfile(test_probe=FIXTURE_PROBE)
    url = ("--toxiproxy-url", standalone_toxiproxy.api_url) if toxiproxy else ()
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", "--pg-dsn", postgres_server.admin_dsn, *url
    )
    stdout = result.stdout.str()
    if toxiproxy:
        result.assert_outcomes(passed=2, failed=1)
        assert "a real Toxiproxy has no statement gate" in stdout, stdout
        assert "@pytest.mark.needs_gate" in stdout, stdout
    else:
        result.assert_outcomes(passed=3)
    assert proxies_left(standalone_toxiproxy) == []
