"""The proxy server's usage errors: its command line and its HTTP API refuse bad input with
a clear answer (one line and exit 2; a 400 with the reason), never a traceback or a 500."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
import requests

from harness.proxy.server import RunningProxyServer

TURNPROOF = [sys.executable, "-m", "harness.cli"]


def turnproof(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TURNPROOF, *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_proxy_help_works():
    result = turnproof("proxy", "--help")
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_port_out_of_range_is_one_line_exit_2(port):
    result = turnproof("proxy", "serve", "--port", port)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert f"argument --port: {port!r} is not a TCP port (0 to 65535)" in result.stderr


@pytest.fixture(scope="module")
def api() -> Iterator[str]:
    with RunningProxyServer.start() as server:
        yield server.api_url


@pytest.fixture
def proxy(api: str) -> Iterator[str]:
    name = f"usage-{uuid.uuid4().hex[:8]}"
    created = requests.post(
        f"{api}/proxies",
        json={"name": name, "upstream": "127.0.0.1:1", "listen": "127.0.0.1:0"},
        timeout=5,
    )
    assert created.status_code == 201, created.text
    yield name
    requests.delete(f"{api}/proxies/{name}", timeout=5)


@pytest.mark.parametrize("toxicity", [1.5, -0.1])
def test_toxicity_outside_zero_to_one_is_refused(api, proxy, toxicity):
    answer = requests.post(
        f"{api}/proxies/{proxy}/toxics",
        json={"type": "latency", "toxicity": toxicity, "attributes": {"latency": 1}},
        timeout=5,
    )
    assert answer.status_code == 400, answer.text
    assert "toxicity must be between 0 and 1" in answer.json()["error"]


def test_toxicity_update_outside_zero_to_one_is_refused(api, proxy):
    created = requests.post(
        f"{api}/proxies/{proxy}/toxics",
        json={"type": "latency", "name": "slow", "attributes": {"latency": 1}},
        timeout=5,
    )
    assert created.status_code == 200, created.text
    answer = requests.post(f"{api}/proxies/{proxy}/toxics/slow", json={"toxicity": 2}, timeout=5)
    assert answer.status_code == 400, answer.text
    assert "toxicity must be between 0 and 1" in answer.json()["error"]


def test_proxy_name_with_a_slash_is_refused(api):
    answer = requests.post(
        f"{api}/proxies",
        json={"name": "team/db", "upstream": "127.0.0.1:1", "listen": "127.0.0.1:0"},
        timeout=5,
    )
    assert answer.status_code == 400, answer.text
    assert "must not contain '/'" in answer.json()["error"]


def test_deeply_nested_json_is_a_400_not_a_500(api):
    body = "[" * 100_000 + "]" * 100_000
    answer = requests.post(
        f"{api}/proxies", data=body, headers={"Content-Type": "application/json"}, timeout=5
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "bad request body: JSON nested too deeply"
