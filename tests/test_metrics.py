"""`serve --metrics-port`: /metrics serves Prometheus text with the DualVec calls counted by method, status code,
space pair and bundle, latency histograms, batch sizes, bundle loads, the served bundle's content id and the
recall recorded at build, with one server process and with two (prometheus-client's multiprocess mode, its
directory removed at exit); `--log-format json` writes one JSON object per line."""
from __future__ import annotations

import glob
import json
import os
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from access_helpers import FLAT_BUNDLE, serve  # noqa: F401 - serve is a fixture
from dualvec import Client
from dualvec.client.client import ClientError
from dualvec.server.app import ServerConfig, load_engines, start_server
from dualvec.server.metrics import ServerMetrics

pytestmark = pytest.mark.slow  # starts server processes and signals them: .ci/run covers it, the fast loop does not

TOKEN = "metrics-token-Lm93"


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a /metrics page."""
    text = urllib.request.urlopen(url, timeout=10).read().decode("utf-8")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name: str, **labels) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


def calls(address: str, n: int, **credentials) -> None:
    """n Searches IN->OUT and one unknown word, each over a new connection (they spread over the processes)."""
    for _ in range(n):
        with Client(address, timeout=10, **credentials) as client:
            client.search("the", query_space="in", target_space="out", k=3)
    with Client(address, timeout=10, **credentials) as client, pytest.raises(ClientError) as info:
        client.search("no-such-word-here", k=3)
    assert info.value.code == grpc.StatusCode.NOT_FOUND


def multiprocess_dirs(root) -> set[str]:
    return set(glob.glob(os.path.join(str(root), "dualvec-metrics-*")))


@pytest.mark.parametrize("processes", [1, 2])
def test_metrics_count_search_calls(serve, tmp_path, processes, monkeypatch):
    # the server's temporary files go to a folder of this test's own: other servers on the machine cannot count
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n", encoding="utf-8")
    dirs_before = multiprocess_dirs(scratch)
    server = serve("--processes", str(processes), "--metrics-port", "0", "--auth-token-file", str(tokens))
    address, url = server.address(), server.metrics_url()
    if processes > 1:
        assert len(multiprocess_dirs(scratch) - dirs_before) == 1
    calls(address, 6, token=TOKEN)
    with pytest.raises(ClientError):
        Client(address, timeout=10).search("the")  # no token
    samples = scrape(url)

    search = {"rpc": "Search", "model": "flat"}
    assert value(samples, "dualvec_calls_total", code="OK", pair="in-out", **search) == 6
    assert value(samples, "dualvec_calls_total", code="NOT_FOUND", pair="in-in", **search) == 1
    assert value(samples, "dualvec_calls_total", rpc="Search", code="UNAUTHENTICATED") == 1
    assert value(samples, "dualvec_call_seconds_count", rpc="Search", pair="in-out") == 6
    assert value(samples, "dualvec_call_seconds_bucket", rpc="Search", pair="in-out", le="+Inf") == 6
    assert value(samples, "dualvec_calls_in_flight", rpc="Search") == 0
    assert value(samples, "dualvec_calls_refused_overloaded_total", rpc="Search") == 0
    assert value(samples, "dualvec_search_batch_size_count", model="flat") >= 6
    assert value(samples, "dualvec_bundle_loads_total", model="flat") == 1
    with Client(address, token=TOKEN, timeout=10) as client:
        served_id = client.info()["content_id"]  # the id GetInfo tells
    assert value(samples, "dualvec_bundle_info", model="flat", content_id=served_id) == 1
    recalls = {dict(lab)["pair"] for (n, lab), v in samples.items() if n == "dualvec_pair_recall" and v == 1.0}
    assert recalls == {"in-in", "in-out", "out-in", "out-out"}  # an exact bundle: recall 1 by construction

    calls(address, 2, token=TOKEN)
    assert value(scrape(url), "dualvec_calls_total", code="OK", pair="in-out", **search) == 8
    assert server.stop() == 0
    assert multiprocess_dirs(scratch) == dirs_before  # the multiprocess directory is gone
    assert TOKEN not in server.log()


def test_json_log_lines(serve):
    server = serve("--processes", "1", "--log-format", "json", "--metrics-port", "0")
    server.wait_for(r"metrics on http://")
    with Client(server.address(), timeout=10) as client:
        client.search("the", k=3)
    assert server.stop() == 0
    events = [json.loads(line) for line in server.log().splitlines()]  # every line is one JSON object
    messages = [e["message"] for e in events]
    assert any(m.startswith("serving flat on 127.0.0.1:") for m in messages)
    assert any(m.startswith("stopped serving on") for m in messages)
    assert all({"time", "level", "logger", "message", "pid"} <= set(e) for e in events)


def test_in_process_metrics_label_only_known_values():
    """A model name no bundle has, or a Space value the contract lacks, cannot make new series."""
    from dualvec.v1 import dualvec_pb2 as pb
    from dualvec.v1 import dualvec_pb2_grpc as pb_grpc

    metrics = ServerMetrics.create()
    cfg = ServerConfig(bundles=(str(FLAT_BUNDLE),), port=0, checksums=False)
    running = start_server(load_engines(cfg, metrics), cfg, metrics=metrics)
    try:
        with grpc.insecure_channel(running.address) as channel:
            stub = pb_grpc.DualVecStub(channel)
            for i in range(3):
                with pytest.raises(grpc.RpcError):
                    stub.Search(pb.SearchRequest(positive=["the"], model=f"made-up-{i}"), timeout=10)
                with pytest.raises(grpc.RpcError):
                    stub.Search(pb.SearchRequest(positive=["the"], query_space=7 + i), timeout=10)
            stub.BatchSearch(pb.BatchSearchRequest(requests=[
                pb.SearchRequest(positive=["the"], k=2), pb.SearchRequest(positive=["of"], target_space=pb.OUT)]),
                timeout=10)
        port = metrics.serve("127.0.0.1", 0)
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        running.stop(0)
        metrics.close()
    models = {dict(lab)["model"] for (n, lab) in samples if n == "dualvec_calls_total"}
    pairs = {dict(lab)["pair"] for (n, lab) in samples if n == "dualvec_calls_total"}
    assert models == {"unknown", "flat"}
    assert pairs == {"in-in", "invalid-in", "mixed"}
    assert value(samples, "dualvec_calls_total", model="unknown", code="NOT_FOUND") == 3
    assert value(samples, "dualvec_calls_total", rpc="BatchSearch", code="OK", pair="mixed") == 1
