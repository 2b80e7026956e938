"""dualvec.client.wait_until_serving: readiness is learned from grpc.health.v1, never from a log line. It returns
once a real server answers SERVING (a `dualvec serve` process on a port picked free beforehand, and an in-process
server whose health turns SERVING later), and raises NotServingError naming the target and the last status heard
when nothing listens, when health stays NOT_SERVING, or as soon as the server's process exits."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dualvec.client import Client, NotServingError, pick_free_port, wait_until_serving
from dualvec.server.app import ServerConfig, load_engines, start_server

DUALVEC = str(Path(sys.executable).with_name("dualvec"))


@pytest.fixture(scope="module")
def engines(lee_bundle):
    return load_engines(ServerConfig(bundles=(str(lee_bundle),), checksums=False))


@pytest.mark.slow
def test_returns_once_a_served_process_answers_serving(lee_bundle):
    port = pick_free_port()
    target = f"127.0.0.1:{port}"
    proc = subprocess.Popen([DUALVEC, "serve", str(lee_bundle), "--port", str(port), "--skip-checksums"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_serving(target, timeout=60, process=proc)
        with grpc.insecure_channel(target) as channel:  # ready means ready: the very next calls are answered
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "dualvec.v1.DualVec"):
                assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status == \
                    health_pb2.HealthCheckResponse.SERVING
        with Client(target, timeout=10) as client:
            assert [n.word for n in client.search(["police"], k=3)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_waits_while_health_is_not_serving_and_returns_when_it_turns(engines):
    cfg = ServerConfig(bundles=("lee",), port=0)
    running = start_server(engines, cfg, serving=False)
    try:
        with pytest.raises(NotServingError) as err:
            wait_until_serving(running.address, timeout=0.5)
        assert err.value.last_status == "NOT_SERVING" and running.address in str(err.value)
        timer = threading.Timer(0.6, running.set_serving)
        began = time.monotonic()
        timer.start()
        wait_until_serving(running.address, timeout=20)
        assert time.monotonic() - began >= 0.55
        wait_until_serving(running.address, timeout=5, service="")
    finally:
        running.stop(1.0)


def test_a_server_shutting_down_is_not_serving(engines):
    running = start_server(engines, ServerConfig(bundles=("lee",), port=0))
    try:
        wait_until_serving(running.address, timeout=10)
        running.health.enter_graceful_shutdown()  # what stop() does first, before refusing calls
        with pytest.raises(NotServingError, match="last status: NOT_SERVING"):
            wait_until_serving(running.address, timeout=0.5)
    finally:
        running.stop(1.0)


def test_nothing_listening_raises_naming_the_target_within_the_timeout():
    target = f"127.0.0.1:{pick_free_port()}"
    began = time.monotonic()
    with pytest.raises(NotServingError) as err:
        wait_until_serving(target, timeout=1.5)
    elapsed = time.monotonic() - began
    assert 1.4 <= elapsed < 5.0, elapsed
    message = str(err.value)
    assert message.startswith(f"{target} did not answer SERVING within 1.5 s"), message
    assert err.value.target == target and err.value.last_status.startswith("UNAVAILABLE")
    assert f"last status: {err.value.last_status}" in message


def test_a_server_process_that_exits_ends_the_wait_at_once(tmp_path):
    port = pick_free_port()
    proc = subprocess.Popen([DUALVEC, "serve", str(tmp_path / "no.bundle"), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    began = time.monotonic()
    with pytest.raises(NotServingError) as err:
        wait_until_serving(f"127.0.0.1:{port}", timeout=120, process=proc)
    assert time.monotonic() - began < 60
    assert str(err.value).startswith(f"the server process exited with code 1 before 127.0.0.1:{port} answered")


def test_the_picked_port_is_free_to_bind():
    import socket

    port = pick_free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
