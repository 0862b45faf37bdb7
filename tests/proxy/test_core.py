"""Behaviour beyond the numbered contract: binding policy, live toxic changes, threads,
clean shutdown, the CLI and the toxiproxy-python wrapper."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests
from toxiproxy.api import APIConsumer

from harness.proxy import RunningProxyServer
from harness.proxy.cli import main as cli_main
from harness.proxy.client import toxiproxy_client

WAIT = 5.0


def port_of(proxy: dict) -> int:
    return int(proxy["listen"].rsplit(":", 1)[1])


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return sock.getsockname()[1]


def test_failed_upstream_dial_closes_client_at_once(api, net):
    proxy = api.create_proxy(f"127.0.0.1:{free_port()}")  # created: upstream not checked
    sock = net.connect(port_of(proxy))
    assert net.ending(sock) in ("eof", "reset")


def test_live_update_applies_and_keeps_held_bytes(api, echo, net):
    proxy = api.create_proxy(echo.address)
    sock = net.connect(port_of(proxy))
    net.round_trip(sock)
    api.add_toxic(proxy, type="latency", stream="upstream", attributes={"latency": 10_000})
    sock.sendall(b"held")
    assert net.ending(sock, timeout=0.2) == "open"  # bounded: nothing came back yet
    start = time.perf_counter()
    path = f"/proxies/{proxy['name']}/toxics/latency_upstream"
    assert api.patch(path, json={"attributes": {"latency": 0}}).status_code == 200
    assert net.recv_exactly(sock, 4) == b"held"
    assert time.perf_counter() - start < 1.0


def test_large_transfer_through_a_toxic_is_intact(api, echo, net):
    """More than the chain's buffer limit: reading pauses and resumes, nothing is lost."""
    proxy = api.create_proxy(echo.address)
    api.add_toxic(proxy, type="bandwidth", attributes={"rate": 40_000})  # 12 MB: 0.3 s
    api.add_toxic(proxy, type="slicer", stream="upstream", attributes={"average_size": 65536})
    sock = net.connect(port_of(proxy))
    payload = os.urandom(12 << 20)
    sender = threading.Thread(target=sock.sendall, args=(payload,))
    sender.start()
    assert net.recv_exactly(sock, len(payload)) == payload
    sender.join(WAIT)


def test_bandwidth_zero_stalls_until_removed(api, echo, net):
    proxy = api.create_proxy(echo.address)
    api.add_toxic(proxy, type="bandwidth", attributes={"rate": 0})
    sock = net.connect(port_of(proxy))
    sock.sendall(b"stalled")
    assert net.ending(sock, timeout=0.2) == "open"
    api.delete(f"/proxies/{proxy['name']}/toxics/bandwidth_downstream")
    assert net.recv_exactly(sock, 7) == b"stalled"


def test_limit_data_upstream_counts_per_connection(api, echo, net):
    proxy = api.create_proxy(echo.address)
    api.add_toxic(proxy, type="limit_data", stream="upstream", attributes={"bytes": 5})
    for _ in range(2):  # a fresh allowance for each connection
        sock = net.connect(port_of(proxy))
        upstream = echo.next_connection()
        sock.sendall(b"abc")
        assert net.recv_exactly(sock, 3) == b"abc"
        sock.sendall(b"defgh")
        assert upstream.ended.wait(WAIT)
        assert upstream.received == b"abcde"
        # closing the upstream fully may cut off the echo of "de": then the client's EOF
        assert net.recv_exactly(sock, 10) in (b"", b"d", b"de")


def test_toxicity_is_rolled_per_connection(api, echo, net):
    proxy = api.create_proxy(echo.address)
    api.add_toxic(proxy, type="limit_data", toxicity=0.5, attributes={"bytes": 0})
    outcomes = set()
    for _ in range(30):
        sock = net.connect(port_of(proxy))
        sock.sendall(b"?")
        outcomes.add(net.ending(sock))  # 'data' when spared, 'eof' when poisoned
        sock.close()
    assert outcomes == {"data", "eof"}


def test_remote_listen_needs_permission(api, ours):
    body = {"name": api.name(), "upstream": "127.0.0.1:1", "listen": "0.0.0.0:0"}
    response = api.post("/proxies", json=body)
    assert response.status_code == 400
    assert "allow_remote" in response.json()["error"]
    with pytest.raises(ValueError, match="non-loopback"):
        RunningProxyServer.start(host="0.0.0.0")
    with RunningProxyServer.start(allow_remote=True) as open_server:
        proxy = open_server.create_proxy("everywhere", "127.0.0.1:1", listen="0.0.0.0:0")
        assert proxy.listen.startswith("0.0.0.0:")
        assert proxy.port > 0


def test_stop_leaves_nothing_listening(echo, net):
    with RunningProxyServer.start() as srv:
        proxy = srv.create_proxy("p", echo.address)
        sock = net.connect(proxy.port)
        net.round_trip(sock)
        api_port, proxy_port = srv.port, proxy.port
    assert not srv._thread.is_alive()
    assert net.ending(sock) in ("eof", "reset")
    for port in (api_port, proxy_port):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()


def test_http_keep_alive_and_routing(ours):
    with socket.create_connection((ours.host, ours.port), timeout=WAIT) as sock:
        reader = sock.makefile("rb")
        for _ in range(2):  # two requests on one connection
            sock.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
            assert reader.readline().startswith(b"HTTP/1.1 200")
            length = 0
            while (line := reader.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            assert b'"version"' in reader.read(length)
        body = b'{"name": "chunky", "upstream": "127.0.0.1:1"}'
        sock.sendall(
            b"POST /proxies HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            + f"{len(body):x}\r\n".encode()
            + body
            + b"\r\n0\r\n\r\n"
        )
        assert reader.readline().startswith(b"HTTP/1.1 201")
    ours.registry.delete_proxy("chunky")
    assert requests.put(f"{ours.api_url}/proxies", timeout=WAIT).status_code == 405
    assert requests.get(f"{ours.api_url}/nowhere", timeout=WAIT).status_code == 404
    browser = {"User-Agent": "Mozilla/5.0"}
    assert requests.get(f"{ours.api_url}/version", headers=browser, timeout=WAIT).status_code == 403


def test_client_wrapper_never_mixes_servers(ours):
    APIConsumer.host, APIConsumer.port = "192.0.2.1", 1
    with RunningProxyServer.start() as other, toxiproxy_client(ours.api_url) as mine:
        mine.create(upstream="127.0.0.1:1", name="wrapper-mine")
        try:
            with toxiproxy_client(other.api_url) as theirs:
                assert theirs.get_proxy("wrapper-mine") is None
            assert mine.get_proxy("wrapper-mine") is not None
        finally:
            mine.get_proxy("wrapper-mine").destroy()
    assert (APIConsumer.host, APIConsumer.port) == ("192.0.2.1", 1)
    APIConsumer.host, APIConsumer.port = "127.0.0.1", 8474


def test_cli_refuses_non_loopback_without_permission(capsys):
    assert cli_main(["serve", "--host", "0.0.0.0"]) == 2
    assert "--allow-remote" in capsys.readouterr().err


def test_cli_serves_until_terminated():
    port = free_port()
    command = [sys.executable, "-m", "harness.proxy.cli", "serve", "--port", str(port)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=os.getcwd()) as process:
        try:
            assert process.stdout is not None
            banner = process.stdout.readline().strip()
            assert banner == f"turnproof proxy server: http://127.0.0.1:{port}"
            with toxiproxy_client(f"http://127.0.0.1:{port}") as client:
                assert client.version()
            process.send_signal(signal.SIGTERM)
            assert process.wait(WAIT) == 0
        finally:
            process.kill()
