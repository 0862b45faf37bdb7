"""The numbered contract of shared TOXIPROXY.md, against our server in-process, or a
real Toxiproxy when TOXIPROXY_URL is set. Real sockets throughout."""

from __future__ import annotations

import os
import socket
import time

import psycopg
import pytest
from toxiproxy.api import APIConsumer
from toxiproxy.exceptions import NotFound, ProxyExists

from harness.proxy.client import toxiproxy_client

WAIT = 5.0

ATTRIBUTE_KEYS = {
    "latency": {"latency", "jitter"},
    "bandwidth": {"rate"},
    "slow_close": {"delay"},
    "timeout": {"timeout"},
    "reset_peer": {"timeout"},
    "slicer": {"average_size", "size_variation", "delay"},
    "limit_data": {"bytes"},
}


def port_of(proxy: dict) -> int:
    return int(proxy["listen"].rsplit(":", 1)[1])


def assert_error(response, status: int) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status
    assert isinstance(body["error"], str)
    assert body["error"]


# 1 -----------------------------------------------------------------------------------
def test_01_version(api):
    response = api.get("/version")
    assert response.status_code == 200
    assert isinstance(response.json()["version"], str)


# 2 -----------------------------------------------------------------------------------
def test_02_create_resolves_port_and_echoes(api, echo, net):
    proxy = api.create_proxy(echo.address)
    host, port = proxy["listen"].rsplit(":", 1)
    assert host == "127.0.0.1"
    assert int(port) > 0
    assert proxy["toxics"] == []
    assert proxy["enabled"] is True
    sock = net.connect(int(port))
    net.round_trip(sock, b"hello through the proxy")
    assert echo.next_connection().received == b"hello through the proxy"


def test_02_localhost_reported_as_loopback(api, echo):
    proxy = api.create_proxy(echo.address, listen="localhost:0")
    assert proxy["listen"].startswith("127.0.0.1:")
    assert port_of(proxy) > 0


# 3 -----------------------------------------------------------------------------------
def test_03_proxy_errors(api, echo):
    assert_error(api.post("/proxies", data=b"{not json"), 400)
    assert_error(api.post("/proxies", json={"upstream": echo.address}), 400)
    assert_error(api.post("/proxies", json={"name": api.name()}), 400)
    proxy = api.create_proxy(echo.address)
    assert_error(api.post("/proxies", json={"name": proxy["name"], "upstream": echo.address}), 409)
    for method in ("GET", "POST", "DELETE"):
        assert_error(api.request(method, "/proxies/no-such-proxy", json={}), 404)
    assert_error(api.post(f"/proxies/{proxy['name']}", data=b"[oops"), 400)
    assert api.get("/version").status_code == 200  # still serving


def test_03_listen_in_use_is_500(api, echo):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        body = {"name": api.name(), "upstream": echo.address, "listen": listen}
        assert_error(api.post("/proxies", json=body), 500)
    assert api.get(f"/proxies/{body['name']}").status_code == 404
    assert api.get("/version").status_code == 200


def test_03_toxic_errors(api, echo):
    proxy = api.create_proxy(echo.address)
    toxics = f"/proxies/{proxy['name']}/toxics"
    assert_error(api.get("/proxies/no-such-proxy/toxics"), 404)
    assert_error(api.post("/proxies/no-such-proxy/toxics", json={"type": "latency"}), 404)
    assert_error(api.post(toxics, data=b"{"), 400)
    assert_error(api.post(toxics, json={"type": "latency", "stream": "sideways"}), 400)
    assert_error(api.post(toxics, json={"type": "no_such_toxic"}), 400)
    api.add_toxic(proxy, type="latency", name="dup", stream="upstream")
    assert_error(api.post(toxics, json={"type": "latency", "name": "dup"}), 409)  # other stream
    assert_error(
        api.post(toxics, json={"type": "bandwidth", "name": "dup", "stream": "upstream"}), 409
    )
    for method in ("GET", "POST", "DELETE"):
        assert_error(api.request(method, f"{toxics}/no-such-toxic", json={}), 404)
    assert_error(api.post(f"{toxics}/dup", data=b"nope"), 400)
    assert api.get("/version").status_code == 200


def test_03_update_merges_and_populate(api, echo):
    proxy = api.create_proxy(echo.address)
    path = f"/proxies/{proxy['name']}"
    updated = api.patch(path, json={"enabled": False}).json()
    assert updated["enabled"] is False
    assert (updated["listen"], updated["upstream"]) == (proxy["listen"], proxy["upstream"])
    assert api.post(path, json={"enabled": True}).json()["enabled"] is True

    api.add_toxic(proxy, type="latency", attributes={"latency": 5})
    toxic = api.patch(f"{path}/toxics/latency_downstream", json={"attributes": {"jitter": 2}})
    assert toxic.status_code == 200
    assert toxic.json()["attributes"] == {"latency": 5, "jitter": 2}
    assert toxic.json()["toxicity"] == 1
    toxic = api.post(f"{path}/toxics/latency_downstream", json={"toxicity": 0.5})
    assert toxic.json()["toxicity"] == 0.5
    assert toxic.json()["attributes"]["latency"] == 5

    # populate: unchanged keeps its toxics; changed is replaced; a failure reports progress
    same = {"name": proxy["name"], "upstream": echo.address, "listen": proxy["listen"]}
    response = api.post("/populate", json=[same])
    assert response.status_code == 201
    assert [p["name"] for p in response.json()["proxies"]] == [proxy["name"]]
    assert len(api.get(f"{path}/toxics").json()) == 1
    moved = {**same, "upstream": f"127.0.0.1:{echo.port + 1 if echo.port < 65535 else 1}"}
    response = api.post("/populate", json=[moved])
    assert response.status_code == 201
    assert api.get(f"{path}/toxics").json() == []
    with socket.create_server(("127.0.0.1", 0)) as taken:
        clash = {
            "name": api.name(),
            "upstream": echo.address,
            "listen": f"127.0.0.1:{taken.getsockname()[1]}",
        }
        fresh = {"name": api.name(), "upstream": echo.address, "listen": "127.0.0.1:0"}
        response = api.post("/populate", json=[fresh, clash])
    assert response.status_code == 500
    assert [p["name"] for p in response.json()["proxies"]] == [fresh["name"]]
    assert_error(api.post("/populate", json={"not": "an array"}), 400)
    assert_error(api.post("/populate", json=[{"upstream": echo.address}]), 400)


# 4 -----------------------------------------------------------------------------------
@pytest.mark.parametrize("toxic_type", sorted(ATTRIBUTE_KEYS))
def test_04_toxic_defaults(api, echo, toxic_type):
    proxy = api.create_proxy(echo.address)
    response = api.post(f"/proxies/{proxy['name']}/toxics", json={"type": toxic_type})
    assert response.status_code == 200
    toxic = response.json()
    assert toxic["name"] == f"{toxic_type}_downstream"
    assert toxic["stream"] == "downstream"
    assert toxic["toxicity"] == 1
    assert set(toxic["attributes"]) == ATTRIBUTE_KEYS[toxic_type]
    assert set(toxic["attributes"].values()) == {0}
    assert api.get(f"/proxies/{proxy['name']}").json()["toxics"] == [toxic]


def test_04_toxic_list_order(api, echo):
    proxy = api.create_proxy(echo.address)
    for name, stream in (("d1", "downstream"), ("u1", "upstream"), ("d2", "downstream")):
        api.add_toxic(proxy, type="latency", name=name, stream=stream)
    names = [t["name"] for t in api.get(f"/proxies/{proxy['name']}/toxics").json()]
    assert names == ["u1", "d1", "d2"]


# 5 -----------------------------------------------------------------------------------
def test_05_latency(api, echo, net):
    proxy = api.create_proxy(echo.address)
    sock = net.connect(port_of(proxy))
    net.round_trip(sock)
    api.add_toxic(proxy, type="latency", name="up", stream="upstream", attributes={"latency": 100})
    assert 0.100 <= net.round_trip(sock) < 0.130
    api.add_toxic(proxy, type="latency", name="down", attributes={"latency": 100})
    assert net.round_trip(sock) >= 0.200
    api.delete(f"/proxies/{proxy['name']}/toxics/down")
    api.add_toxic(proxy, type="latency", name="up2", stream="upstream", attributes={"latency": 100})
    assert net.round_trip(sock) >= 0.200


def test_05_latency_is_pipelined_not_reordered(api, echo, net):
    proxy = api.create_proxy(echo.address)
    sock = net.connect(port_of(proxy))
    api.add_toxic(
        proxy, type="latency", stream="upstream", attributes={"latency": 100, "jitter": 50}
    )
    start = time.perf_counter()
    payload = b"".join(bytes([i]) * 100 for i in range(20))
    for i in range(20):
        sock.sendall(payload[i * 100 : (i + 1) * 100])
    assert net.recv_exactly(sock, len(payload)) == payload
    assert time.perf_counter() - start < 0.5  # 20 chunks x 100 ms would be 2 s if serialised


# 6 -----------------------------------------------------------------------------------
def test_06_toxic_on_open_connection_and_removal_flushes(api, echo, net):
    proxy = api.create_proxy(echo.address)
    sock = net.connect(port_of(proxy))
    net.round_trip(sock)
    upstream = echo.next_connection()
    api.add_toxic(proxy, type="latency", stream="upstream", attributes={"latency": 10_000})
    upstream.got_data.clear()
    payload = bytes(range(256)) * 64
    sock.sendall(payload)
    assert not upstream.got_data.wait(0.3)  # held back by the new toxic (bounded wait)
    start = time.perf_counter()
    assert api.delete(f"/proxies/{proxy['name']}/toxics/latency_upstream").status_code == 204
    assert net.recv_exactly(sock, len(payload)) == payload
    assert time.perf_counter() - start < 1.0  # at once, not after the 10 s latency
    assert bytes(upstream.received[4:]) == payload


# 7 -----------------------------------------------------------------------------------
def test_07_down_and_up(api, echo, net):
    proxy = api.create_proxy(echo.address)
    port = port_of(proxy)
    live = net.connect(port)
    net.round_trip(live)
    api.add_toxic(proxy, type="latency", attributes={"latency": 1})
    response = api.post(f"/proxies/{proxy['name']}", json={"enabled": False})
    closed_at = time.perf_counter()
    assert response.json()["enabled"] is False
    assert net.ending(live, timeout=1.0) in ("eof", "reset")
    assert time.perf_counter() - closed_at < 0.100
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()
    response = api.post(f"/proxies/{proxy['name']}", json={"enabled": True})
    assert response.json()["listen"] == proxy["listen"]
    assert len(response.json()["toxics"]) == 1  # toxics kept
    net.round_trip(net.connect(port))


# 8 -----------------------------------------------------------------------------------
def test_08_timeout_zero_holds_then_removal_closes(api, echo, net):
    proxy = api.create_proxy(echo.address)
    api.add_toxic(proxy, type="timeout", stream="upstream", attributes={"timeout": 0})
    sock = net.connect(port_of(proxy))
    upstream = echo.next_connection()
    sock.sendall(b"dropped")
    assert not upstream.got_data.wait(0.3)
    assert net.ending(sock, timeout=0.2) == "open"
    assert api.delete(f"/proxies/{proxy['name']}/toxics/timeout_upstream").status_code == 204
    assert net.ending(sock) in ("eof", "reset")
    assert upstream.ended.wait(WAIT)
    assert upstream.received == b""


def test_08_timeout_closes_after_last_write(api, echo, net):
    proxy = api.create_proxy(echo.address)
    api.add_toxic(proxy, type="timeout", stream="upstream", attributes={"timeout": 200})
    sock = net.connect(port_of(proxy))
    sock.sendall(b"x")
    start = time.perf_counter()
    assert net.ending(sock) in ("eof", "reset")
    assert 0.18 <= time.perf_counter() - start < 0.35


# 9 -----------------------------------------------------------------------------------
def test_09_reset_peer(api, echo, net):
    proxy = api.create_proxy(echo.address)
    api.add_toxic(proxy, type="reset_peer", attributes={"timeout": 0})
    sock = net.connect(port_of(proxy))
    sock.sendall(b"hello")
    assert net.ending(sock) == "reset"


# 10 ----------------------------------------------------------------------------------
def test_10_bandwidth(api, echo, net):
    proxy = api.create_proxy(echo.address)
    sock = net.connect(port_of(proxy))
    net.round_trip(sock)
    api.add_toxic(proxy, type="bandwidth", attributes={"rate": 100})
    payload = os.urandom(100_000)
    start = time.perf_counter()
    sock.sendall(payload)
    assert net.recv_exactly(sock, len(payload)) == payload
    assert 0.9 <= time.perf_counter() - start <= 1.1


# 11 ----------------------------------------------------------------------------------
def test_11_limit_data(api, echo, net):
    proxy = api.create_proxy(echo.address)
    api.add_toxic(proxy, type="limit_data", attributes={"bytes": 10})
    sock = net.connect(port_of(proxy))
    sock.sendall(b"0123456789abcdefghij" * 5)
    assert net.recv_exactly(sock, 100) == b"0123456789"  # short read: closed after 10
    assert net.ending(sock) in ("eof", "reset")


# 12 ----------------------------------------------------------------------------------
def test_12_slicer_keeps_bytes_intact(api, echo, net):
    proxy = api.create_proxy(echo.address)
    api.add_toxic(
        proxy, type="slicer", attributes={"average_size": 64, "size_variation": 32, "delay": 10}
    )
    sock = net.connect(port_of(proxy))
    payload = os.urandom(50_000)
    sock.sendall(payload)
    assert net.recv_exactly(sock, len(payload)) == payload


def test_12_slow_close(api, echo, net):
    proxy = api.create_proxy(echo.address)
    api.add_toxic(proxy, type="slow_close", attributes={"delay": 300})
    sock = net.connect(port_of(proxy))
    net.round_trip(sock)
    start = time.perf_counter()
    sock.shutdown(socket.SHUT_WR)
    assert net.ending(sock) == "eof"
    assert time.perf_counter() - start >= 0.300


# 13 ----------------------------------------------------------------------------------
def test_13_toxicity_zero(api, echo, net):
    proxy = api.create_proxy(echo.address)
    api.add_toxic(proxy, type="latency", toxicity=0, attributes={"latency": 1000})
    api.add_toxic(proxy, type="timeout", stream="upstream", toxicity=0.0)
    sock = net.connect(port_of(proxy))
    assert net.round_trip(sock) < 0.5


# 14 ----------------------------------------------------------------------------------
def test_14_reset_and_delete(api, echo, net):
    proxy = api.create_proxy(echo.address)
    api.add_toxic(proxy, type="latency")
    api.add_toxic(proxy, type="timeout", stream="upstream")
    api.post(f"/proxies/{proxy['name']}", json={"enabled": False})
    assert api.post("/reset").status_code == 204
    state = api.get(f"/proxies/{proxy['name']}").json()
    assert state["toxics"] == []
    assert state["enabled"] is True
    assert api.get(f"/proxies/{proxy['name']}/toxics").json() == []
    net.round_trip(net.connect(port_of(proxy)))

    response = api.delete(f"/proxies/{proxy['name']}")
    assert response.status_code == 204
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port_of(proxy)), timeout=WAIT).close()
    assert_error(api.get(f"/proxies/{proxy['name']}"), 404)


# 15 ----------------------------------------------------------------------------------
def test_15_toxiproxy_python_flow(server, echo, net):
    APIConsumer.host, APIConsumer.port = "192.0.2.1", 1  # must be restored afterwards
    name = f"tp-{os.getpid()}-{time.monotonic_ns()}"
    with toxiproxy_client(server.url) as toxiproxy:
        assert toxiproxy.version()
        proxy = toxiproxy.create(upstream=echo.address, name=name)
        try:
            port = int(proxy.listen.rsplit(":", 1)[1])
            assert port > 0
            with pytest.raises(ProxyExists):
                toxiproxy.create(upstream=echo.address, name=name)
            proxy.add_toxic(type="latency", attributes={"latency": 5})
            assert toxiproxy.get_proxy(name).toxics()["latency_downstream"].type == "latency"
            assert proxy.destroy_toxic("latency_downstream")
            assert proxy.toxics() == {}
            with proxy.down(), pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()
            net.round_trip(net.connect(port))
            proxy.add_toxic(type="timeout", stream="upstream")
            assert toxiproxy.reset()
            assert proxy.toxics() == {}
        finally:
            assert proxy.destroy()
        with pytest.raises(NotFound):
            proxy.destroy()
    assert (APIConsumer.host, APIConsumer.port) == ("192.0.2.1", 1)
    APIConsumer.host, APIConsumer.port = "127.0.0.1", 8474


# 16 ----------------------------------------------------------------------------------
def test_16_postgres_through_proxy(api, pg_upstream, dsn_through):
    proxy = api.create_proxy(pg_upstream)
    with psycopg.connect(dsn_through(port_of(proxy)), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        api.add_toxic(proxy, type="latency", attributes={"latency": 100})
        start = time.perf_counter()
        assert conn.execute("SELECT 2").fetchone() == (2,)
        assert 0.100 <= time.perf_counter() - start < 0.150
