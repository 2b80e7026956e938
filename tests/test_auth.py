"""`serve --auth-token-file`: a DualVec call without a valid bearer token is UNAUTHENTICATED (before any work),
with one of the file's tokens it is answered; health and reflection stay open; no token reaches the log; the
file is re-read on SIGHUP in every server process (rotation), and a broken file keeps the old tokens."""
from __future__ import annotations

import json
import logging
import signal
import subprocess

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from access_helpers import DUALVEC, FLAT_BUNDLE, serve  # noqa: F401 - serve is a fixture
from dualvec import Client
from dualvec.client.client import ClientError
from dualvec.kernel.errors import DualvecError
from dualvec.server.app import ServerConfig, check_access, load_engines, start_server
from dualvec.server.auth import TokenAuth, bearer_tokens, read_tokens
from dualvec.v1 import dualvec_pb2 as pb
from dualvec.v1 import dualvec_pb2_grpc as pb_grpc

OLD, NEW, SPARE = "old-token-Zq81", "new-token-Jk27", "spare-token-Wb55"
WRONG = "wrong-token-Xx00"


def write_tokens(path, *tokens: str) -> None:
    path.write_text("# tokens of the test server\n\n" + "\n".join(tokens) + "\n", encoding="utf-8")


def code_of(address: str, token: str | None) -> grpc.StatusCode:
    """The status of one Search over a new connection (each connection may land on another server process)."""
    try:
        with Client(address, token=token, timeout=10) as client:
            client.search("the", k=3)
        return grpc.StatusCode.OK
    except ClientError as exc:
        return exc.code


@pytest.fixture
def token_server(tmp_path):
    path = tmp_path / "tokens"
    write_tokens(path, OLD, SPARE)
    cfg = ServerConfig(bundles=(str(FLAT_BUNDLE),), port=0, checksums=False, auth_token_file=str(path))
    running = start_server(load_engines(cfg), cfg)
    yield running, path
    running.stop(0)


def test_token_file_format(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("# comment\n\n  first  \n#second\nthird\n", encoding="utf-8")
    assert read_tokens(path) == ["first", "third"]
    path.write_text("# only a comment\n\n", encoding="utf-8")
    with pytest.raises(DualvecError, match="holds no token"):
        read_tokens(path)
    path.write_text("good\nhas space\n", encoding="utf-8")
    with pytest.raises(DualvecError, match=r"line 2: a token must be printable ASCII") as info:
        read_tokens(path)
    assert "has space" not in str(info.value)
    with pytest.raises(DualvecError, match="does not exist"):
        read_tokens(tmp_path / "missing")


def test_bearer_metadata_parsing():
    assert bearer_tokens([("authorization", "Bearer abc"), ("x", "Bearer no")]) == ["abc"]
    assert bearer_tokens([("authorization", "bearer  abc ")]) == ["abc"]
    assert bearer_tokens([("authorization", "Basic abc"), ("authorization", "Bearer")]) == []
    assert bearer_tokens(None) == []


def test_calls_need_a_token_of_the_file(token_server):
    running, _ = token_server
    assert code_of(running.address, None) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(running.address, WRONG) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(running.address, OLD[:-1]) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(running.address, OLD) == grpc.StatusCode.OK
    assert code_of(running.address, SPARE) == grpc.StatusCode.OK
    with pytest.raises(ClientError) as info:
        Client(running.address, token=WRONG).info()
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert WRONG not in str(info.value) and OLD not in str(info.value)
    # the raw metadata, as any gRPC client sends it
    with grpc.insecure_channel(running.address) as channel:
        stub = pb_grpc.DualVecStub(channel)
        reply = stub.GetInfo(pb.GetInfoRequest(), timeout=10, metadata=(("authorization", f"Bearer {OLD}"),))
        assert reply.vocab_size == 40
        with pytest.raises(grpc.RpcError) as err:
            stub.GetInfo(pb.GetInfoRequest(), timeout=10, metadata=(("authorization", OLD),))  # no scheme
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_refused_calls_do_no_work(token_server):
    """A refused call never reaches admission control (nor, behind it, the servicer)."""
    running, _ = token_server
    before = running.admission.stats().admitted
    for _ in range(5):
        assert code_of(running.address, WRONG) == grpc.StatusCode.UNAUTHENTICATED
    assert running.admission.stats().admitted == before
    assert code_of(running.address, OLD) == grpc.StatusCode.OK
    assert running.admission.stats().admitted == before + 1


def test_health_and_reflection_need_no_token(token_server):
    running, _ = token_server
    with grpc.insecure_channel(running.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
        assert "dualvec.v1.DualVec" in services
    assert Client(running.address).health() == "SERVING"


def test_reload_rotates_and_a_broken_file_keeps_the_old_tokens(token_server, caplog):
    running, path = token_server
    write_tokens(path, NEW)
    with caplog.at_level(logging.INFO, logger="dualvec.server.auth"):
        assert running.reload()
    assert code_of(running.address, OLD) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(running.address, NEW) == grpc.StatusCode.OK
    path.write_text("# emptied by mistake\n", encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="dualvec.server.auth"):
        assert not running.reload()
    assert code_of(running.address, NEW) == grpc.StatusCode.OK
    path.unlink()
    assert not running.reload()
    assert code_of(running.address, NEW) == grpc.StatusCode.OK
    assert any("not reloaded" in r.getMessage() for r in caplog.records)
    assert not any(t in r.getMessage() for r in caplog.records for t in (OLD, NEW, SPARE))


def test_token_auth_compares_every_token(tmp_path, monkeypatch):
    """The check compares the given token with every accepted one, found early or not (constant time)."""
    import dualvec.server.auth as auth

    path = tmp_path / "tokens"
    write_tokens(path, OLD, NEW, SPARE)
    checker = TokenAuth(path)
    calls = []
    real = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    assert checker.allows([("authorization", f"Bearer {OLD}")])
    assert len(calls) == 3
    assert not checker.allows([("authorization", f"Bearer {WRONG}")])
    assert len(calls) == 6


def test_binding_beyond_loopback_without_protection_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="dualvec.server"):
        check_access(ServerConfig(bundles=(), host="127.0.0.1"))
        check_access(ServerConfig(bundles=(), host="localhost"))
        check_access(ServerConfig(bundles=(), host="::1"))
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="dualvec.server"):
        check_access(ServerConfig(bundles=(), host="0.0.0.0"))
    assert len(caplog.records) == 1 and "without --auth-token-file or --tls-cert" in caplog.records[0].getMessage()


@pytest.mark.slow
def test_serve_with_a_missing_token_file_fails_with_one_line(tmp_path):
    result = subprocess.run([DUALVEC, "serve", str(FLAT_BUNDLE), "--port", "0", "--auth-token-file",
                             str(tmp_path / "nothing")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"dualvec serve: error: token file {tmp_path / 'nothing'} does not exist"]


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_sighup_rotates_tokens_in_every_process_and_no_token_is_logged(serve, tmp_path, processes):
    path = tmp_path / "tokens"
    write_tokens(path, OLD, SPARE)
    server = serve("--processes", str(processes), "--auth-token-file", str(path))
    address = server.address()
    for _ in range(4):  # new connections: with two processes, they spread over both
        assert code_of(address, None) == grpc.StatusCode.UNAUTHENTICATED
        assert code_of(address, WRONG) == grpc.StatusCode.UNAUTHENTICATED
        assert code_of(address, OLD) == grpc.StatusCode.OK
        assert code_of(address, SPARE) == grpc.StatusCode.OK
        assert code_of(address, NEW) == grpc.StatusCode.UNAUTHENTICATED

    write_tokens(path, NEW, SPARE)
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for(r"auth tokens reloaded from \S+: 2 token", count=processes)
    for _ in range(4):
        assert code_of(address, OLD) == grpc.StatusCode.UNAUTHENTICATED
        assert code_of(address, NEW) == grpc.StatusCode.OK
        assert code_of(address, SPARE) == grpc.StatusCode.OK
    assert Client(address).health() == "SERVING"  # and the server is still up

    assert server.stop() == 0
    log = server.log()
    assert "refused" in log and "without a valid bearer token" in log
    for token in (OLD, NEW, SPARE, WRONG):
        assert token not in log


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_loadtest_sends_the_token(token_server, capsys, processes):
    """`dualvec loadtest --token` (on a plaintext channel: metadata added to every call, from every generator
    process); without it the set-up's GetInfo is refused, one line on stderr."""
    from dualvec.loadtest.cli import main as loadtest

    running, _ = token_server
    common = [running.address, "--concurrency", "2", "--duration", "0.5", "--warmup", "0", "--pool", "20",
              "--bundle", str(FLAT_BUNDLE), "--processes", str(processes)]
    assert loadtest(common + ["--token", OLD, "--json", "--fail-on-errors"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == {} and report["calls"]["ok"] > 0 and report["calls"]["failed"] == 0
    assert loadtest(common) == 1
    assert "GetInfo failed: UNAUTHENTICATED" in capsys.readouterr().err
