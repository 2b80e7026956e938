"""The typed Python client (dualvec.Client) and the `dualvec query` command against a running server: results as
dataclasses equal to numpy, errors carrying their status code; the CLI's table, --json, -word negatives, and one
clear stderr line (no traceback) with exit code 1 for an unknown word or an unreachable server."""
from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from dualvec import Client
from dualvec.client import ClientError
from dualvec.kernel.results import Neighbor, WordVector
from dualvec.server.app import ServerConfig, load_engines, start_server
from dualvec.kernel.spaces import ALL_PAIRS, Space

from test_search_core import PAIR_IDS, assert_neighbors, assert_same_ranking, reference_of

DUALVEC = str(Path(sys.executable).with_name("dualvec"))
ROW = re.compile(r"^\s*(\d+)\s+(\S+)\s+(-?\d+\.\d{4})\s+(\d+)$")


@pytest.fixture(scope="module")
def server(lee_bundle):
    cfg = ServerConfig(bundles=(str(lee_bundle),), port=0, max_k=100, checksums=False)
    running = start_server(load_engines(cfg), cfg)
    yield running
    running.stop(1.0)


@pytest.fixture(scope="module")
def client(server):
    with Client(server.address, timeout=10) as c:
        c.wait_ready(10)
        yield c


@pytest.fixture(scope="module")
def ref(lee_model):
    return reference_of(str(lee_model))


def query(server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([DUALVEC, "query", "--addr", server.address, *args], capture_output=True, text=True,
                          timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------------ client

@pytest.mark.parametrize("query_space,target_space", ALL_PAIRS, ids=PAIR_IDS)
def test_client_search_returns_neighbor_dataclasses_equal_to_numpy(client, ref, query_space, target_space):
    got = client.search(["king", "woman"], ["man"], query_space=query_space.value, target_space=target_space.value,
                        k=15, exact=True)
    assert all(isinstance(n, Neighbor) for n in got)
    assert_neighbors(got, ref.scores(("king", "woman"), ("man",), query_space, target_space), 15, ref.words)
    single = client.search("police", query_space=query_space.value.upper(), target_space=target_space.value,
                           exact=True)
    assert_neighbors(single, ref.scores(("police",), (), query_space, target_space), 10, ref.words)


def test_client_batch_vectors_similarity_and_info(client, ref):
    queries = [dict(positive=["king", "woman"], negative=["man"], k=5),
               dict(positive=["police"], query_space="out", target_space="in", k=3, exact=True)]
    assert client.batch_search(queries) == [client.search(**q) for q in queries]
    vectors = client.get_vectors(["king", "police"], "out", raw=True)
    assert all(isinstance(v, WordVector) for v in vectors)
    np.testing.assert_allclose(vectors[0].raw, ref.raw[Space.OUT][ref.index["king"]], atol=1e-5)
    assert vectors[1].count == ref.model.wv.get_vecattr("police", "count")
    assert client.get_vectors(["king"])[0].raw is None
    sims = client.similarity([(("king", "in"), ("queen", "out")), (("police", "out"), ("police", "out"))])
    expected = float(ref.unit[Space.IN][ref.index["king"]] @ ref.unit[Space.OUT][ref.index["queen"]])
    assert sims[0] == pytest.approx(expected, abs=1e-5) and sims[1] == pytest.approx(1.0, abs=1e-5)
    info = client.info()
    assert info["vocab_size"] == ref.n and info["dim"] == 48 and info["max_k"] == 100
    assert all(isinstance(ix["bytes"], int) and ix["bytes"] > 0 for ix in info["indexes"])
    assert {p["query_space"] + "-" + p["target_space"] for p in info["pairs"]} == {"IN-IN", "IN-OUT", "OUT-IN",
                                                                                   "OUT-OUT"}
    assert client.health() == "SERVING"


@pytest.mark.parametrize("call,code,words", [
    (lambda c: c.search(["king", "qqxyzzy"], ["zzwwq"]), grpc.StatusCode.NOT_FOUND, ["qqxyzzy", "zzwwq"]),
    (lambda c: c.search("king", k=101), grpc.StatusCode.INVALID_ARGUMENT, ["k", "101", "100"]),
    (lambda c: c.search(vector=[1.0] * 5), grpc.StatusCode.INVALID_ARGUMENT, ["vector", "5", "48"]),
    (lambda c: c.search(), grpc.StatusCode.INVALID_ARGUMENT, ["empty"]),
    (lambda c: c.get_vectors(["qqxyzzy"]), grpc.StatusCode.NOT_FOUND, ["qqxyzzy"]),
    (lambda c: c.search("king", model="nope"), grpc.StatusCode.NOT_FOUND, ["nope"]),
], ids=["unknown-words", "k", "vector", "empty", "vectors-unknown", "model"])
def test_client_errors_carry_the_status_code_and_message(client, call, code, words):
    with pytest.raises(ClientError) as err:
        call(client)
    assert err.value.code == code
    for w in words:
        assert w in err.value.details and w in str(err.value)


def test_client_rejects_an_unknown_space_name_before_calling(client):
    with pytest.raises(ValueError, match="sideways"):
        client.search("king", target_space="sideways")


def test_client_to_no_server_raises_unavailable():
    with Client(f"127.0.0.1:{free_port()}", timeout=2) as c:
        with pytest.raises(ClientError) as err:
            c.search("king")
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(ClientError) as err:
            c.wait_ready(0.5)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE


# --------------------------------------------------------------------------------------------------------- CLI

def test_query_prints_a_table_of_the_neighbours(server, client, ref):
    proc = query(server, "police", "--from", "in", "--to", "out", "-k", "7", "--exact")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert "police" in lines[0] and "IN -> OUT" in lines[0] and "exact" in lines[0]
    assert lines[1].split() == ["#", "word", "cosine", "id"]
    rows = [ROW.match(line) for line in lines[2:]]
    assert len(rows) == 7 and all(rows), lines
    expected = client.search("police", query_space="in", target_space="out", k=7, exact=True)
    assert [(int(r[1]), r[2], r[3], int(r[4])) for r in rows] == \
        [(rank, n.word, f"{n.score:.4f}", n.id) for rank, n in enumerate(expected, 1)]
    assert_neighbors(expected, ref.scores(("police",), (), Space.IN, Space.OUT), 7, ref.words)


def test_query_json_equals_the_client(server, client):
    proc = query(server, "sydney", "--from", "out", "--to", "in", "-k", "12", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["positive"] == ["sydney"] and out["negative"] == [] and (out["from"], out["to"]) == ("out", "in")
    assert out["k"] == 12 and out["exact"] is False
    expected = client.search("sydney", query_space="out", target_space="in", k=12)
    assert [(n["word"], n["id"], n["score"]) for n in out["neighbors"]] == [(n.word, n.id, n.score) for n in expected]


def test_query_minus_word_is_a_negative_word(server, ref):
    proc = query(server, "--json", "--exact", "--", "king", "-man", "woman")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["positive"] == ["king", "woman"] and out["negative"] == ["man"]
    expected = ref.model.wv.most_similar(positive=["king", "woman"], negative=["man"], topn=11)
    assert_same_ranking([(n["word"], n["score"]) for n in out["neighbors"]], expected)
    table = query(server, "--exact", "--", "king", "-man", "woman")
    assert table.returncode == 0 and "king woman -man" in table.stdout.splitlines()[0]


def test_query_minus_word_works_as_readme_writes_it(server):
    proc = query(server, "king", "-man", "woman", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["negative"] == ["man"]


def test_query_unknown_word_exits_1_with_one_line_naming_it(server):
    proc = query(server, "king", "qqxyzzy", "--", "-zzwwq")
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "qqxyzzy" in lines[0] and "zzwwq" in lines[0] and "NOT_FOUND" in lines[0]
    assert "Traceback" not in proc.stderr


def test_query_k_above_the_limit_exits_1_naming_k(server):
    proc = query(server, "king", "-k", "500")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "500" in lines[0] and "100" in lines[0] and "k" in lines[0], proc.stderr


def test_query_without_a_server_exits_1_with_one_line():
    proc = subprocess.run([DUALVEC, "query", "king", "--addr", f"127.0.0.1:{free_port()}", "--timeout", "2"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "UNAVAILABLE" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
