"""`serve --tls-cert/--tls-key` (and `--tls-client-ca`, mutual TLS): a TLS server answers a TLS client and refuses a
plaintext one; with a client CA it refuses a client without a certificate, or with one another CA signed; a token
travels as call credentials over TLS; files that cannot be used are refused with one line naming them. The
certificates are made here (tests/access_helpers.make_certs)."""
from __future__ import annotations

import json
import subprocess

import grpc
import pytest

from access_helpers import DUALVEC, FLAT_BUNDLE, make_certs, serve  # noqa: F401 - serve is a fixture
from dualvec import Client
from dualvec.client.client import ClientError
from dualvec.kernel.errors import DualvecError
from dualvec.server.app import ServerConfig, check_access, load_engines, start_server

pytestmark = pytest.mark.slow  # starts server processes and signals them: .ci/run covers it, the fast loop does not

TOKEN = "tls-token-Qp42"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


def start(certs, **options):
    cfg = ServerConfig(bundles=(str(FLAT_BUNDLE),), port=0, checksums=False, tls_cert=str(certs.server_cert),
                       tls_key=str(certs.server_key), **options)
    return start_server(load_engines(cfg), cfg)


@pytest.fixture(scope="module")
def tls_server(certs):
    running = start(certs)
    yield running
    running.stop(0)


@pytest.fixture(scope="module")
def mtls_server(certs, tmp_path_factory):
    tokens = tmp_path_factory.mktemp("tokens") / "tokens"
    tokens.write_text(TOKEN + "\n", encoding="utf-8")
    running = start(certs, tls_client_ca=str(certs.ca), auth_token_file=str(tokens))
    yield running
    running.stop(0)


def search_code(address: str, **credentials) -> grpc.StatusCode:
    try:
        with Client(address, timeout=5, **credentials) as client:
            assert [n.word for n in client.search("the", k=3)]
        return grpc.StatusCode.OK
    except ClientError as exc:
        return exc.code


def test_tls_server_answers_a_tls_client_and_refuses_a_plaintext_one(tls_server, certs):
    assert search_code(tls_server.address, tls_ca=certs.ca) == grpc.StatusCode.OK
    assert search_code(tls_server.address, tls_ca=certs.ca.read_bytes()) == grpc.StatusCode.OK  # PEM bytes too
    assert search_code(tls_server.address) == grpc.StatusCode.UNAVAILABLE  # plaintext
    # a client that does not trust the server's CA (the system's CAs) refuses the server
    assert search_code(tls_server.address, tls_ca=certs.stranger_cert) == grpc.StatusCode.UNAVAILABLE
    with Client(tls_server.address, tls_ca=certs.ca) as client:
        assert client.health() == "SERVING"
        assert client.info()["vocab_size"] == 40


def test_mutual_tls_refuses_a_client_without_a_certificate_of_its_ca(mtls_server, certs):
    address = mtls_server.address
    mine = {"tls_ca": certs.ca, "tls_cert": certs.client_cert, "tls_key": certs.client_key}
    assert search_code(address, token=TOKEN, **mine) == grpc.StatusCode.OK
    assert search_code(address, token=TOKEN, tls_ca=certs.ca) == grpc.StatusCode.UNAVAILABLE  # no certificate
    assert search_code(address, token=TOKEN, tls_ca=certs.ca, tls_cert=certs.stranger_cert,
                       tls_key=certs.stranger_key) == grpc.StatusCode.UNAVAILABLE  # signed by another CA
    assert search_code(address, token=TOKEN) == grpc.StatusCode.UNAVAILABLE  # plaintext
    # a certificate is not a token: the call credentials are still asked for
    assert search_code(address, **mine) == grpc.StatusCode.UNAUTHENTICATED
    assert search_code(address, token="not-it", **mine) == grpc.StatusCode.UNAUTHENTICATED
    with Client(address, **mine) as client:
        assert client.health() == "SERVING"  # health stays open


def test_query_command_over_mutual_tls_with_a_token_file(mtls_server, certs, tmp_path):
    token_file = tmp_path / "client-token"
    token_file.write_text(f"# the client's token\n{TOKEN}\n", encoding="utf-8")
    common = [DUALVEC, "query", "the", "-k", "3", "--json", "--addr", mtls_server.address, "--timeout", "10",
              "--tls-ca", str(certs.ca), "--tls-cert", str(certs.client_cert), "--tls-key", str(certs.client_key)]
    ok = subprocess.run(common + ["--token-file", str(token_file)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert len(json.loads(ok.stdout)["neighbors"]) == 3
    refused = subprocess.run(common + ["--token", "nope"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
    half = subprocess.run(common[:-4] + ["--tls-cert", str(certs.client_cert)], capture_output=True, text=True,
                          timeout=60)
    assert half.returncode == 1 and "--tls-cert and --tls-key go together" in half.stderr


def test_unusable_tls_files_are_named(certs, tmp_path):
    base = {"bundles": (), "tls_cert": str(certs.server_cert), "tls_key": str(certs.server_key)}
    check_access(ServerConfig(**base))
    check_access(ServerConfig(**base, tls_client_ca=str(certs.ca)))
    with pytest.raises(DualvecError, match=r"--tls-cert \S+missing.pem does not exist"):
        check_access(ServerConfig(**{**base, "tls_cert": str(tmp_path / "missing.pem")}))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n", encoding="utf-8")
    with pytest.raises(DualvecError, match=r"--tls-key \S+junk.pem is not a PEM file"):
        check_access(ServerConfig(**{**base, "tls_key": str(junk)}))
    with pytest.raises(DualvecError, match="not a certificate and its matching private key"):
        check_access(ServerConfig(**{**base, "tls_key": str(certs.client_key)}))  # another certificate's key
    with pytest.raises(DualvecError, match="go together"):
        check_access(ServerConfig(bundles=(), tls_cert=str(certs.server_cert)))
    with pytest.raises(DualvecError, match="--tls-client-ca asks"):
        check_access(ServerConfig(bundles=(), tls_client_ca=str(certs.ca)))


def test_serve_with_an_unreadable_certificate_fails_with_one_line(certs, tmp_path):
    result = subprocess.run([DUALVEC, "serve", str(FLAT_BUNDLE), "--port", "0", "--tls-cert",
                             str(tmp_path / "nope.pem"), "--tls-key", str(certs.server_key)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"dualvec serve: error: --tls-cert {tmp_path / 'nope.pem'} does not exist"]


def test_serve_process_over_tls(serve, certs):
    """The whole command: `dualvec serve --tls-cert --tls-key` with two processes answers TLS clients only."""
    server = serve("--processes", "2", "--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key))
    address = server.address(grpc.ssl_channel_credentials(certs.ca.read_bytes()))
    for _ in range(3):
        assert search_code(address, tls_ca=certs.ca) == grpc.StatusCode.OK
        assert search_code(address) == grpc.StatusCode.UNAVAILABLE
    assert server.stop() == 0


def test_loadtest_over_mutual_tls_with_a_token(mtls_server, certs, capsys):
    from dualvec.loadtest.cli import main as loadtest

    common = [mtls_server.address, "--concurrency", "2", "--duration", "0.5", "--warmup", "0", "--pool", "20",
              "--bundle", str(FLAT_BUNDLE), "--tls-ca", str(certs.ca)]
    assert loadtest(common + ["--tls-cert", str(certs.client_cert), "--tls-key", str(certs.client_key),
                              "--token", TOKEN, "--json", "--fail-on-errors"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["calls"]["ok"] > 0 and report["calls"]["failed"] == 0
    assert loadtest(common + ["--tls-cert", str(certs.client_cert), "--connect-timeout", "2"]) == 1
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err
