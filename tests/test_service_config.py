"""The client's service config (dualvec.client.service_config) and the server options made for replicas:
the default is the JSON docs/scaling.md shows; a bad one is refused with one sentence naming the field; a target
naming two servers gets its calls spread over both and skips one that is down; `--health-port` serves health
alone, in plaintext, beside a TLS port, and drains with it; `--max-connection-age` closes connections."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from access_helpers import make_certs
from dualvec.client import Client, pick_free_port
from dualvec.client.service_config import DEFAULT_SERVICE_CONFIG, channel_options, load_service_config
from dualvec.kernel.errors import DualvecError
from dualvec.server.app import ServerConfig, load_engines, start_server
from dualvec.v1 import dualvec_pb2 as pb
from dualvec.v1 import dualvec_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
SMALL_BUNDLE = str(ROOT / "tests" / "fixtures" / "bundle_v1" / "flat")
DUALVEC = str(Path(sys.executable).with_name("dualvec"))


def test_the_default_is_the_json_the_scaling_guide_shows():
    doc = (ROOT / "docs" / "scaling.md").read_text()
    shown = re.search(r"```json\n(.*?)```", doc, re.S).group(1)
    assert json.loads(shown) == json.loads(DEFAULT_SERVICE_CONFIG)
    config = json.loads(load_service_config(None))
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert "UNAVAILABLE" in config["methodConfig"][0]["retryPolicy"]["retryableStatusCodes"]


@pytest.mark.parametrize("text, message", [
    ("{", "service config is not valid JSON: Expecting property name enclosed in double quotes (line 1, column 2)"),
    ("[]", "service config: the top level must be a JSON object"),
    ('{"loadBalancingConfig": {"round_robin": {}}}', "service config: loadBalancingConfig must be a list"),
    ('{"methodConfig": [{"name": [{}], "retryPolicy": {"maxAttempts": 1}}]}',
     "service config: methodConfig[0].retryPolicy.maxAttempts must be an integer >= 2"),
    ('{"methodConfig": [{"name": [{}], "retryPolicy": {"maxAttempts": 3, "initialBackoff": "100ms"}}]}',
     "service config: methodConfig[0].retryPolicy.initialBackoff must be a positive duration"),
    ('{"methodConfig": [{"name": [{}], "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": '
     '"1s", "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAIL"]}}]}',
     "service config: methodConfig[0].retryPolicy.retryableStatusCodes holds unknown status names ['UNAVAIL']"),
    ('{"retryThrottling": {"maxTokens": 0, "tokenRatio": 0.1}}', "service config: retryThrottling.maxTokens"),
])
def test_a_bad_service_config_is_refused_naming_the_field(text, message):
    with pytest.raises(DualvecError) as err:
        load_service_config(text)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_service_config_comes_from_a_file_or_none(tmp_path):
    path = tmp_path / "sc.json"
    path.write_text('{"loadBalancingConfig": [{"pick_first": {}}]}')
    assert json.loads(load_service_config(str(path))) == {"loadBalancingConfig": [{"pick_first": {}}]}
    assert channel_options("none") == []
    with pytest.raises(DualvecError, match=r"cannot read service config .*missing\.json: No such file"):
        load_service_config(str(tmp_path / "missing.json"))


def test_query_names_a_bad_service_config_in_one_line(tmp_path):
    path = tmp_path / "sc.json"
    path.write_text('{"methodConfig": [{"name": [{}], "retryPolicy": {"maxAttempts": 9.5}}]}')
    run = subprocess.run([DUALVEC, "query", "the", "--addr", "127.0.0.1:1", "--service-config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        f"dualvec query: error: service config {path}: methodConfig[0].retryPolicy.maxAttempts must be an integer "
        ">= 2 (gRPC caps it at 5), got 9.5"]


@pytest.fixture(scope="module")
def engines():
    return load_engines(ServerConfig(bundles=(SMALL_BUNDLE,), checksums=False))


def test_calls_to_a_target_of_two_servers_are_spread_over_both_and_skip_one_that_is_down(engines):
    cfg = ServerConfig(bundles=(SMALL_BUNDLE,), port=0, checksums=False)
    servers = [start_server(engines, cfg) for _ in range(2)]
    down = pick_free_port()  # nothing listens there
    try:
        target = "ipv4:" + ",".join([s.address for s in servers] + [f"127.0.0.1:{down}"])
        with Client(target) as client:
            client.wait_ready()
            for _ in range(40):
                assert client.search(["the"], k=3)
        admitted = [s.admission.stats().admitted for s in servers]
        assert sum(admitted) == 40 and min(admitted) >= 10, admitted
        # gRPC's default (pick_first) sends every call to one server
        with Client(target, service_config="none") as client:
            for _ in range(20):
                client.search(["the"], k=3)
        grown = [s.admission.stats().admitted - a for s, a in zip(servers, admitted)]
        assert sorted(grown) == [0, 20], grown
    finally:
        for s in servers:
            s.stop(1.0)


def test_the_health_port_serves_health_alone_in_plaintext_beside_a_tls_port_and_drains_with_it(engines, tmp_path):
    certs = make_certs(tmp_path)
    cfg = ServerConfig(bundles=(SMALL_BUNDLE,), port=0, checksums=False, tls_cert=str(certs.server_cert),
                       tls_key=str(certs.server_key), health_port=0)
    running = start_server(engines, cfg)
    stopper = None
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.health_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as err:  # the search service is not there
                pb_grpc.DualVecStub(channel).Search(pb.SearchRequest(positive=["the"]), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
            with pytest.raises(grpc.RpcError):  # and the main port speaks TLS only
                with grpc.insecure_channel(running.address) as plain:
                    health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=2)
            stopper = threading.Thread(target=running.drain, args=(1.0, 1.0))
            stopper.start()
            time.sleep(0.3)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
                health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        if stopper is None:
            running.stop(0)
        else:
            stopper.join(timeout=10)


def test_connections_are_closed_after_max_connection_age(engines):
    cfg = ServerConfig(bundles=(SMALL_BUNDLE,), port=0, checksums=False, max_connection_age=0.5, grace_seconds=1.0)
    running = start_server(engines, cfg)
    states: list[grpc.ChannelConnectivity] = []
    channel = grpc.insecure_channel(running.address)
    channel.subscribe(states.append, try_to_connect=True)
    try:
        stub = pb_grpc.DualVecStub(channel)
        assert stub.Search(pb.SearchRequest(positive=["the"], k=3), timeout=5).neighbors
        deadline = time.monotonic() + 10
        while grpc.ChannelConnectivity.IDLE not in states[states.index(grpc.ChannelConnectivity.READY):] \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert grpc.ChannelConnectivity.IDLE in states[states.index(grpc.ChannelConnectivity.READY):], states
        assert stub.Search(pb.SearchRequest(positive=["the"], k=3), timeout=5).neighbors  # it connects again
    finally:
        channel.unsubscribe(states.append)
        channel.close()
        running.stop(0)
