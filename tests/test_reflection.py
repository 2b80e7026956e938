"""The service discovered by server reflection alone: a client process that cannot import dualvec (an import hook
refuses it) finds `dualvec.v1.DualVec` through grpc reflection, builds its messages from the descriptors it
received, and calls the methods by path. Its answers are checked here against numpy and gensim."""
from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from dualvec.server.app import ServerConfig, load_engines, start_server
from dualvec.kernel.spaces import ALL_PAIRS, Space

from test_search_core import ANALOGIES, PAIR_IDS, assert_neighbors, assert_same_ranking, reference_of

MAX_K, DIM = 50, 48
SPACE_NUMBER = {Space.IN: 1, Space.OUT: 2}

# The whole client: no generated code of dualvec, only grpc, protobuf and what reflection tells it.
REFLECTION_CLIENT = r'''
import json
import sys


class RefuseDualvec:
    def find_spec(self, name, path=None, target=None):
        if name == "dualvec" or name.startswith("dualvec."):
            raise ImportError(f"the reflection client may not import {name}")
        return None


sys.meta_path.insert(0, RefuseDualvec())

import grpc
from google.protobuf import descriptor_pool, json_format
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

address, calls_file = sys.argv[1], sys.argv[2]
with open(calls_file) as fh:
    calls = json.load(fh)
channel = grpc.insecure_channel(address)
database = ProtoReflectionDescriptorDatabase(channel)
services = list(database.get_services())
pool = descriptor_pool.DescriptorPool(database)
service = pool.FindServiceByName("dualvec.v1.DualVec")
out = {"services": services, "methods": [m.name for m in service.methods], "results": []}
for call in calls:
    method = service.FindMethodByName(call["method"])
    request_class = GetMessageClass(method.input_type)
    response_class = GetMessageClass(method.output_type)
    rpc = channel.unary_unary(f"/{service.full_name}/{method.name}",
                              request_serializer=request_class.SerializeToString,
                              response_deserializer=response_class.FromString)
    request = request_class(**call["request"])
    try:
        response = rpc(request, timeout=30)
        out["results"].append({"response": json_format.MessageToDict(
            response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)})
    except grpc.RpcError as exc:
        out["results"].append({"code": exc.code().name, "details": exc.details()})
out["dualvec_modules"] = sorted(m for m in sys.modules if m == "dualvec" or m.startswith("dualvec."))
print(json.dumps(out))
'''


def search_call(positive=(), negative=(), **fields) -> dict:
    return {"method": "Search", "request": {"positive": list(positive), "negative": list(negative), **fields}}


def build_calls(ref) -> dict[str, dict]:
    calls: dict[str, dict] = {}
    for q, t in ALL_PAIRS:
        for j, (pos, neg) in enumerate([(("police",), ()), (("sydney",), ()), (("king", "woman"), ("man",)),
                                        *ANALOGIES[1:4]]):
            calls[f"exact:{q.value}-{t.value}:{j}"] = search_call(
                pos, neg, query_space=SPACE_NUMBER[q], target_space=SPACE_NUMBER[t], k=(10, 25, 10, 5, 50, 1)[j],
                exact=True)
    raw = ref.raw[Space.OUT][ref.index["israel"]].tolist()
    calls["vector"] = {"method": "Search", "request": {"vector": raw, "target_space": 2, "k": 10, "exact": True}}
    for exact in (True, False):
        calls[f"analogy:{exact}"] = search_call(("king", "woman"), ("man",), k=10, exact=exact)
    batch = [search_call(("king", "woman"), ("man",), query_space=1, target_space=2, k=7)["request"],
             search_call(("police",), query_space=2, target_space=1, k=12, exact=True)["request"],
             {"vector": raw, "target_space": 2, "k": 3}]
    calls["batch"] = {"method": "BatchSearch", "request": {"requests": batch}}
    for i, r in enumerate(batch):
        calls[f"batch-alone:{i}"] = {"method": "Search", "request": r}
    calls["unknown-word"] = search_call(("king", "qqxyzzy"), ("zzwwq",))
    calls["huge-k"] = search_call(("king",), k=2 ** 32 - 1)
    calls["k-above-limit"] = search_call(("king",), k=MAX_K + 1)
    calls["vector-length"] = {"method": "Search", "request": {"vector": [0.5] * (DIM - 3)}}
    calls["vector-nan"] = {"method": "Search", "request": {"vector": [float("nan")] + [0.5] * (DIM - 1)}}
    calls["vector-inf"] = {"method": "Search", "request": {"vector": [0.5] * (DIM - 1) + [float("-inf")]}}
    calls["empty-query"] = search_call(k=5, target_space=2)
    calls["unknown-enum"] = search_call(("king",), query_space=7)
    calls["info"] = {"method": "GetInfo", "request": {}}
    return calls


@pytest.fixture(scope="module")
def ref(lee_model):
    return reference_of(str(lee_model))


@pytest.fixture(scope="module")
def reflected(lee_bundle, ref, tmp_path_factory) -> dict:
    """Run the reflection client once against an in-process server; {name: result} plus what it discovered."""
    cfg = ServerConfig(bundles=(str(lee_bundle),), port=0, max_k=MAX_K, checksums=False)
    running = start_server(load_engines(cfg), cfg)
    try:
        calls = build_calls(ref)
        work = tmp_path_factory.mktemp("reflection")
        (work / "calls.json").write_text(json.dumps(list(calls.values())))
        (work / "client.py").write_text(REFLECTION_CLIENT)
        proc = subprocess.run([sys.executable, "-I", str(work / "client.py"), running.address,
                               str(work / "calls.json")], capture_output=True, text=True, timeout=120, cwd=work)
    finally:
        running.stop(1.0)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    out["by_name"] = dict(zip(calls, out["results"]))
    return out


def neighbors(result: dict) -> list[SimpleNamespace]:
    assert "response" in result, result
    return [SimpleNamespace(**n) for n in result["response"]["neighbors"]]


def test_client_discovered_the_services_without_dualvec_code(reflected):
    assert reflected["dualvec_modules"] == []
    assert {"dualvec.v1.DualVec", "grpc.health.v1.Health"} <= set(reflected["services"])
    assert any("ServerReflection" in s for s in reflected["services"])
    assert {"Search", "BatchSearch", "GetVectors", "Similarity", "ScoreDocuments", "GetInfo"} <= \
        set(reflected["methods"])


@pytest.mark.parametrize("query_space,target_space", ALL_PAIRS, ids=PAIR_IDS)
def test_exact_search_equals_numpy_on_every_pair(reflected, ref, query_space, target_space):
    calls = build_calls(ref)
    names = [name for name in calls if name.startswith(f"exact:{query_space.value}-{target_space.value}:")]
    assert len(names) == 6
    for name in names:
        r = calls[name]["request"]
        full = ref.scores(tuple(r["positive"]), tuple(r["negative"]), query_space, target_space)
        assert_neighbors(neighbors(reflected["by_name"][name]), full, r["k"], ref.words)


def test_vector_search_equals_numpy(reflected, ref):
    raw = ref.raw[Space.OUT][ref.index["israel"]]
    assert_neighbors(neighbors(reflected["by_name"]["vector"]), ref.scores(target_space=Space.OUT, vector=raw), 10,
                     ref.words)


@pytest.mark.parametrize("exact", [True, False])
def test_king_minus_man_plus_woman_equals_gensim(reflected, ref, exact):
    expected = ref.model.wv.most_similar(positive=["king", "woman"], negative=["man"], topn=11)
    got = neighbors(reflected["by_name"][f"analogy:{exact}"])
    assert_same_ranking([(n.word, n.score) for n in got], expected)


def test_batch_search_equals_search(reflected):
    batch = reflected["by_name"]["batch"]["response"]["responses"]
    assert len(batch) == 3
    for i, response in enumerate(batch):
        alone = neighbors(reflected["by_name"][f"batch-alone:{i}"])
        assert [(n["word"], n["id"], n["score"]) for n in response["neighbors"]] == \
            [(n.word, n.id, n.score) for n in alone]


@pytest.mark.parametrize("name,code,words", [
    ("unknown-word", "NOT_FOUND", ["qqxyzzy", "zzwwq"]),
    ("huge-k", "INVALID_ARGUMENT", ["k", str(2 ** 32 - 1), str(MAX_K)]),
    ("k-above-limit", "INVALID_ARGUMENT", ["k", str(MAX_K + 1), str(MAX_K)]),
    ("vector-length", "INVALID_ARGUMENT", ["vector", str(DIM - 3), str(DIM)]),
    ("vector-nan", "INVALID_ARGUMENT", ["vector", "NaN"]),
    ("vector-inf", "INVALID_ARGUMENT", ["vector", "infinite"]),
    ("empty-query", "INVALID_ARGUMENT", ["empty"]),
    ("unknown-enum", "INVALID_ARGUMENT", ["query_space", "7"]),
])
def test_bad_input_gets_its_status_and_names_the_problem(reflected, name, code, words):
    result = reflected["by_name"][name]
    assert result.get("code") == code, result
    for w in words:
        assert w in result["details"], result["details"]


def test_get_info_shows_the_vocabulary_size(reflected, ref):
    info = reflected["by_name"]["info"]["response"]
    assert int(info["vocab_size"]) == ref.n
    assert info["dim"] == DIM and info["spaces"] == ["IN", "OUT"] and info["max_k"] == MAX_K
