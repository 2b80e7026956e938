"""The gRPC server in-process on an ephemeral port, called through real channels: exact answers equal numpy on
all four pairs, the analogy equals gensim, BatchSearch equals Search, GetVectors / Similarity / GetInfo / health,
every bad input's status code and message, no bad input changes a later answer, and 32 concurrent clients get
exactly what one idle client gets."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dualvec.indexer.build import BuildConfig, build_bundle
from dualvec.indexer.model_readers import read_model
from dualvec.server.app import ServerConfig, load_engines, start_server
from dualvec.kernel.spaces import ALL_PAIRS, Space
from dualvec.v1 import dualvec_pb2 as pb
from dualvec.v1 import dualvec_pb2_grpc as pb_grpc

from test_search_core import (ANALOGIES, PAIR_IDS, TOL, assert_neighbors, assert_same_ranking, recall_at,
                              reference_of)

PB_SPACE = {Space.IN: pb.IN, Space.OUT: pb.OUT}
MAX_K, MAX_BATCH = 50, 8
IN_ONLY = "lee-in-only.bundle"
IVF = "lee-ivf.bundle"
DIM = 48


# ------------------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def in_only_bundle(lee_model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("grpc") / IN_ONLY
    build_bundle(read_model(lee_model, in_only=True), path, BuildConfig(index="flat", in_only=True, quiet=True))
    return path


@pytest.fixture(scope="module")
def server(lee_bundle, lee_ivf_bundle, in_only_bundle):
    """lee.bundle (the default), the IVF bundle and the IN-only bundle, served on a free port."""
    assert Path(lee_ivf_bundle).name == IVF
    cfg = ServerConfig(bundles=(str(lee_bundle), str(lee_ivf_bundle), str(in_only_bundle)), port=0,
                       max_k=MAX_K, max_batch=MAX_BATCH, workers=8, checksums=False)
    running = start_server(load_engines(cfg), cfg)
    yield running
    running.stop(1.0)


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.address) as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return pb_grpc.DualVecStub(channel)


@pytest.fixture(scope="module")
def ref(lee_model):
    return reference_of(str(lee_model))


def search(stub, **fields) -> pb.SearchResponse:
    return stub.Search(pb.SearchRequest(**fields), timeout=10)


def rpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=10)
    return err.value


# ---------------------------------------------------------------------------------------------------- answers

def test_health_is_serving(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "dualvec.v1.DualVec"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("query_space,target_space", ALL_PAIRS, ids=PAIR_IDS)
def test_exact_search_equals_numpy_on_every_pair(stub, ref, query_space, target_space):
    queries = [((w,), ()) for w in ("the", "police", "sydney", "king", ref.words[2222], ref.words[-1])] + ANALOGIES
    for j, (pos, neg) in enumerate(queries):
        k = (10, 1, 25, 50, 7)[j % 5]
        resp = search(stub, positive=pos, negative=neg, query_space=PB_SPACE[query_space],
                      target_space=PB_SPACE[target_space], k=k, exact=True)
        assert_neighbors(resp.neighbors, ref.scores(pos, neg, query_space, target_space), k, ref.words)


def test_unspecified_space_and_zero_k_mean_in_and_10(stub, ref):
    resp = search(stub, positive=["police"], exact=True)
    assert_neighbors(resp.neighbors, ref.scores(("police",)), 10, ref.words)


def test_vector_restrict_vocab_and_include_query_words_over_grpc(stub, ref):
    raw = ref.raw[Space.OUT][ref.index["israel"]]
    resp = search(stub, vector=raw.tolist(), target_space=pb.OUT, k=12, exact=True)
    assert_neighbors(resp.neighbors, ref.scores(target_space=Space.OUT, vector=raw), 12, ref.words)
    assert resp.neighbors[0].word == "israel"
    resp = search(stub, positive=["king"], negative=["man"], query_space=pb.OUT, target_space=pb.IN, k=20,
                  restrict_vocab=300, include_query_words=True, exact=True)
    assert all(n.id < 300 for n in resp.neighbors)
    full = ref.scores(("king",), ("man",), Space.OUT, Space.IN, include_query_words=True, restrict_vocab=300)
    assert_neighbors(resp.neighbors, full, 20, ref.words)


@pytest.mark.parametrize("exact,model", [(True, ""), (False, ""), (True, IVF)])
def test_king_minus_man_plus_woman_equals_gensim(stub, ref, exact, model):
    for pos, neg in ANALOGIES:
        expected = ref.model.wv.most_similar(positive=list(pos), negative=list(neg), topn=11)
        resp = search(stub, positive=pos, negative=neg, k=10, exact=exact, model=model)
        assert_same_ranking([(n.word, n.score) for n in resp.neighbors], expected)


def test_ivf_model_answers_at_recall_0_9_on_every_pair(stub, ref):
    for q, t in ALL_PAIRS:
        recalls = []
        for i in range(0, ref.n, 97):
            resp = search(stub, positive=[ref.words[i]], query_space=PB_SPACE[q], target_space=PB_SPACE[t],
                          model=IVF)
            recalls.append(recall_at([n.id for n in resp.neighbors], ref.scores((ref.words[i],), (), q, t)))
        assert np.mean(recalls) >= 0.9, (q, t, np.mean(recalls))


def mixed_requests(ref, n: int, seed: int) -> list[pb.SearchRequest]:
    """Search requests over every pair, k, exactness, model and query form."""
    rng = np.random.default_rng(seed)
    reqs = []
    for j in range(n):
        q, t = ALL_PAIRS[int(rng.integers(4))]
        fields = dict(query_space=PB_SPACE[q], target_space=PB_SPACE[t], k=int(rng.integers(0, MAX_K + 1)),
                      exact=bool(rng.integers(2)), model=("", IVF)[int(rng.integers(2))])
        form = j % 5
        if form == 0:
            pos, neg = ANALOGIES[int(rng.integers(len(ANALOGIES)))]
            fields.update(positive=pos, negative=neg)
        elif form == 1:
            fields["vector"] = rng.standard_normal(DIM).astype(np.float32).tolist()
        elif form == 2:
            fields.update(positive=[ref.words[int(rng.integers(ref.n))]], restrict_vocab=int(rng.integers(1, 900)))
        else:
            fields.update(positive=[ref.words[int(rng.integers(ref.n))] for _ in range(int(rng.integers(1, 3)))],
                          include_query_words=bool(form == 4))
        reqs.append(pb.SearchRequest(**fields))
    return reqs


def test_batch_search_equals_search(stub, ref):
    reqs = mixed_requests(ref, 40, seed=3)
    for start in range(0, len(reqs), MAX_BATCH):
        chunk = reqs[start:start + MAX_BATCH]
        batch = stub.BatchSearch(pb.BatchSearchRequest(requests=chunk), timeout=10)
        assert len(batch.responses) == len(chunk)
        for req, got in zip(chunk, batch.responses):
            alone = stub.Search(req, timeout=10)
            assert_same_ranking([(n.word, n.score) for n in got.neighbors],
                                [(n.word, n.score) for n in alone.neighbors], tol=1e-6)
            assert len(got.neighbors) == len(alone.neighbors) <= (req.k or 10)
            if not req.restrict_vocab:
                assert len(got.neighbors) == (req.k or 10)


@pytest.mark.parametrize("space", [Space.IN, Space.OUT])
def test_get_vectors_normalized_raw_norms_counts(stub, ref, space):
    words = ["king", "the", ref.words[-1], "police", "king"]
    resp = stub.GetVectors(pb.GetVectorsRequest(words=words, space=PB_SPACE[space], raw=True), timeout=10)
    assert [v.word for v in resp.vectors] == words
    for v in resp.vectors:
        i = ref.index[v.word]
        raw = ref.raw[space][i]
        assert v.id == i
        assert v.count == ref.model.wv.get_vecattr(v.word, "count")
        assert v.norm == pytest.approx(np.linalg.norm(raw), rel=1e-6)
        np.testing.assert_allclose(v.vector, ref.unit[space][i], atol=1e-6)
        np.testing.assert_allclose(v.raw_vector, raw, atol=1e-5)
        assert np.linalg.norm(v.vector) == pytest.approx(1.0, abs=1e-6)
    plain = stub.GetVectors(pb.GetVectorsRequest(words=["king"], space=PB_SPACE[space]), timeout=10)
    assert len(plain.vectors[0].raw_vector) == 0
    assert list(plain.vectors[0].vector) == list(resp.vectors[0].vector)


def test_similarity_equals_numpy_cosine(stub, ref):
    combos = [("king", Space.IN, "queen", Space.IN), ("king", Space.IN, "queen", Space.OUT),
              ("police", Space.OUT, "arrested", Space.IN), ("sydney", Space.OUT, "melbourne", Space.OUT),
              ("the", Space.IN, "the", Space.OUT), ("israel", Space.IN, "israel", Space.IN)]
    pairs = [pb.WordPair(a=pb.SpacedWord(word=a, space=PB_SPACE[sa]), b=pb.SpacedWord(word=b, space=PB_SPACE[sb]))
             for a, sa, b, sb in combos]
    pairs.append(pb.WordPair(a=pb.SpacedWord(word="king"), b=pb.SpacedWord(word="queen")))  # UNSPECIFIED = IN
    combos.append(("king", Space.IN, "queen", Space.IN))
    resp = stub.Similarity(pb.SimilarityRequest(pairs=pairs), timeout=10)
    expected = [float(ref.unit[sa][ref.index[a]] @ ref.unit[sb][ref.index[b]]) for a, sa, b, sb in combos]
    np.testing.assert_allclose(resp.similarities, expected, atol=TOL)
    assert resp.similarities[5] == pytest.approx(1.0, abs=TOL)


def test_get_info_shows_vocabulary_dim_spaces_recall_and_limits(stub, ref, lee_model):
    info = stub.GetInfo(pb.GetInfoRequest(), timeout=10)
    assert info.model == "lee.bundle"
    assert info.vocab_size == ref.n and info.dim == DIM
    assert list(info.spaces) == [pb.IN, pb.OUT]
    assert [(x.space, x.kind) for x in info.indexes] == [(pb.IN, "flat"), (pb.OUT, "flat")]
    assert {(p.query_space, p.target_space) for p in info.pairs} == {(PB_SPACE[q], PB_SPACE[t]) for q, t in ALL_PAIRS}
    assert all(p.recall_uniform == 1.0 and p.recall_frequency == 1.0 for p in info.pairs)
    assert (info.max_k, info.max_batch) == (MAX_K, MAX_BATCH)
    assert list(info.models) == ["lee.bundle", IVF, IN_ONLY]
    assert info.format_version >= 1 and info.dualvec_version
    assert str(lee_model) in info.source and len(info.source_sha256) == 64
    assert json.loads(info.tokenizer)

    ivf = stub.GetInfo(pb.GetInfoRequest(model=IVF), timeout=10)
    assert ivf.model == IVF and ivf.vocab_size == ref.n
    assert {x.kind for x in ivf.indexes} == {"ivf"}
    assert len(ivf.pairs) == 4
    for p in ivf.pairs:
        assert p.recall_uniform >= 0.9 and p.recall_frequency >= 0.9
        assert json.loads(p.search_params).get("nprobe", 0) >= 1

    in_only = stub.GetInfo(pb.GetInfoRequest(model=IN_ONLY), timeout=10)
    assert list(in_only.spaces) == [pb.IN]
    assert [(p.query_space, p.target_space) for p in in_only.pairs] == [(pb.IN, pb.IN)]


# ----------------------------------------------------------------------------------------------------- errors

def _pairs(*pairs):
    return [pb.WordPair(a=pb.SpacedWord(word=a, space=sa), b=pb.SpacedWord(word=b, space=sb)) for a, sa, b, sb in pairs]


NAN_VECTOR = [float("nan")] + [0.1] * (DIM - 1)
INF_VECTOR = [0.1] * (DIM - 1) + [float("inf")]
OK = pb.SearchRequest(positive=["king"])

# (id, rpc, request factory, status code, words the message must contain)
BAD_INPUTS = [
    ("unknown-words", "Search", lambda: pb.SearchRequest(positive=["king", "qqxyzzy"], negative=["zzwwq", "man"]),
     grpc.StatusCode.NOT_FOUND, ["qqxyzzy", "zzwwq"]),
    ("unknown-word-out", "Search", lambda: pb.SearchRequest(positive=["qqxyzzy"], query_space=pb.OUT),
     grpc.StatusCode.NOT_FOUND, ["qqxyzzy", "OUT"]),
    ("k-above-max", "Search", lambda: pb.SearchRequest(positive=["king"], k=MAX_K + 1),
     grpc.StatusCode.INVALID_ARGUMENT, ["k", str(MAX_K + 1), str(MAX_K)]),
    ("k-huge", "Search", lambda: pb.SearchRequest(positive=["king"], k=2 ** 32 - 1),
     grpc.StatusCode.INVALID_ARGUMENT, ["k", str(2 ** 32 - 1), str(MAX_K)]),
    ("vector-short", "Search", lambda: pb.SearchRequest(vector=[0.1] * (DIM - 1)),
     grpc.StatusCode.INVALID_ARGUMENT, ["vector", str(DIM - 1), str(DIM)]),
    ("vector-long", "Search", lambda: pb.SearchRequest(vector=[0.1] * (DIM + 5), target_space=pb.OUT),
     grpc.StatusCode.INVALID_ARGUMENT, ["vector", str(DIM + 5), str(DIM)]),
    ("vector-nan", "Search", lambda: pb.SearchRequest(vector=NAN_VECTOR),
     grpc.StatusCode.INVALID_ARGUMENT, ["vector", "NaN"]),
    ("vector-inf", "Search", lambda: pb.SearchRequest(vector=INF_VECTOR),
     grpc.StatusCode.INVALID_ARGUMENT, ["vector", "infinite"]),
    ("vector-zero", "Search", lambda: pb.SearchRequest(vector=[0.0] * DIM),
     grpc.StatusCode.INVALID_ARGUMENT, ["vector", "zero"]),
    ("empty-query", "Search", lambda: pb.SearchRequest(target_space=pb.OUT),
     grpc.StatusCode.INVALID_ARGUMENT, ["empty", "positive"]),
    ("words-and-vector", "Search", lambda: pb.SearchRequest(positive=["king"], vector=[0.1] * DIM),
     grpc.StatusCode.INVALID_ARGUMENT, ["vector", "not both"]),
    ("query-space-7", "Search", lambda: pb.SearchRequest(positive=["king"], query_space=7),
     grpc.StatusCode.INVALID_ARGUMENT, ["query_space", "7"]),
    ("target-space-3", "Search", lambda: pb.SearchRequest(positive=["king"], target_space=3),
     grpc.StatusCode.INVALID_ARGUMENT, ["target_space", "3"]),
    ("words-cancel", "Search", lambda: pb.SearchRequest(positive=["king"], negative=["king"]),
     grpc.StatusCode.INVALID_ARGUMENT, ["negative", "cancel"]),
    ("unknown-model", "Search", lambda: pb.SearchRequest(positive=["king"], model="no-such-bundle"),
     grpc.StatusCode.NOT_FOUND, ["no-such-bundle"]),
    ("out-of-in-only", "Search", lambda: pb.SearchRequest(positive=["king"], target_space=pb.OUT, model=IN_ONLY),
     grpc.StatusCode.FAILED_PRECONDITION, ["target_space", "OUT"]),
    ("out-query-of-in-only", "Search", lambda: pb.SearchRequest(positive=["king"], query_space=pb.OUT,
                                                                model=IN_ONLY),
     grpc.StatusCode.FAILED_PRECONDITION, ["query_space", "OUT"]),
    ("batch-above-max", "BatchSearch", lambda: pb.BatchSearchRequest(requests=[OK] * (MAX_BATCH + 1)),
     grpc.StatusCode.INVALID_ARGUMENT, ["requests", str(MAX_BATCH + 1), str(MAX_BATCH)]),
    ("batch-empty", "BatchSearch", lambda: pb.BatchSearchRequest(),
     grpc.StatusCode.INVALID_ARGUMENT, ["requests", "empty"]),
    ("batch-bad-k", "BatchSearch", lambda: pb.BatchSearchRequest(requests=[OK, OK, pb.SearchRequest(
        positive=["king"], k=MAX_K + 9)]), grpc.StatusCode.INVALID_ARGUMENT, ["requests[2].k", str(MAX_K + 9)]),
    ("batch-bad-enum", "BatchSearch", lambda: pb.BatchSearchRequest(requests=[OK, pb.SearchRequest(
        positive=["king"], query_space=5)]), grpc.StatusCode.INVALID_ARGUMENT, ["requests[1].query_space", "5"]),
    ("batch-unknown-word", "BatchSearch", lambda: pb.BatchSearchRequest(requests=[OK, pb.SearchRequest(
        positive=["qqxyzzy", "zzwwq"])]), grpc.StatusCode.NOT_FOUND, ["qqxyzzy", "zzwwq"]),
    ("batch-out-of-in-only", "BatchSearch", lambda: pb.BatchSearchRequest(requests=[OK, pb.SearchRequest(
        positive=["king"], target_space=pb.OUT, model=IN_ONLY)]), grpc.StatusCode.FAILED_PRECONDITION, ["OUT"]),
    ("vectors-unknown-words", "GetVectors", lambda: pb.GetVectorsRequest(words=["qqxyzzy", "king", "zzwwq"]),
     grpc.StatusCode.NOT_FOUND, ["qqxyzzy", "zzwwq"]),
    ("vectors-space-4", "GetVectors", lambda: pb.GetVectorsRequest(words=["king"], space=4),
     grpc.StatusCode.INVALID_ARGUMENT, ["space", "4"]),
    ("vectors-empty", "GetVectors", lambda: pb.GetVectorsRequest(),
     grpc.StatusCode.INVALID_ARGUMENT, ["words", "empty"]),
    ("vectors-out-of-in-only", "GetVectors", lambda: pb.GetVectorsRequest(words=["king"], space=pb.OUT,
                                                                          model=IN_ONLY),
     grpc.StatusCode.FAILED_PRECONDITION, ["OUT"]),
    ("similarity-unknown-words", "Similarity", lambda: pb.SimilarityRequest(pairs=_pairs(
        ("king", pb.IN, "qqxyzzy", pb.IN), ("zzwwq", pb.OUT, "man", pb.OUT))), grpc.StatusCode.NOT_FOUND,
     ["qqxyzzy", "zzwwq"]),
    ("similarity-space-9", "Similarity", lambda: pb.SimilarityRequest(pairs=_pairs(
        ("king", pb.IN, "man", pb.IN), ("king", pb.IN, "man", 9))), grpc.StatusCode.INVALID_ARGUMENT,
     ["pairs[1].b.space", "9"]),
    ("similarity-empty", "Similarity", lambda: pb.SimilarityRequest(),
     grpc.StatusCode.INVALID_ARGUMENT, ["pairs", "empty"]),
    ("similarity-out-of-in-only", "Similarity", lambda: pb.SimilarityRequest(pairs=_pairs(
        ("king", pb.IN, "man", pb.OUT)), model=IN_ONLY), grpc.StatusCode.FAILED_PRECONDITION,
     ["pairs[0].b.space", "OUT"]),
    ("info-unknown-model", "GetInfo", lambda: pb.GetInfoRequest(model="no-such-bundle"),
     grpc.StatusCode.NOT_FOUND, ["no-such-bundle"]),
]


@pytest.mark.parametrize("rpc,make,code,words", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gets_its_status_and_a_message_naming_the_problem(stub, rpc, make, code, words):
    err = rpc_error(getattr(stub, rpc), make())
    assert err.code() == code, err.details()
    for w in words:
        assert w in err.details(), f"{w!r} not in {err.details()!r}"


def good_calls(ref) -> list[tuple[str, object]]:
    calls: list[tuple[str, object]] = []
    for q, t in ALL_PAIRS:
        for exact, model in ((True, ""), (False, ""), (False, IVF), (True, IVF)):
            calls.append(("Search", pb.SearchRequest(positive=["king", "woman"], negative=["man"], exact=exact,
                                                     query_space=PB_SPACE[q], target_space=PB_SPACE[t], k=MAX_K,
                                                     model=model)))
    calls.append(("Search", pb.SearchRequest(positive=["king"], model=IN_ONLY)))
    calls.append(("BatchSearch", pb.BatchSearchRequest(requests=mixed_requests(ref, MAX_BATCH, seed=9))))
    calls.append(("GetVectors", pb.GetVectorsRequest(words=["king", "man"], space=pb.OUT, raw=True)))
    calls.append(("Similarity", pb.SimilarityRequest(pairs=_pairs(("king", pb.IN, "man", pb.OUT)))))
    calls.append(("GetInfo", pb.GetInfoRequest(model=IVF)))
    return calls


def test_bad_inputs_do_not_change_later_answers(stub, ref):
    calls = good_calls(ref)
    before = [getattr(stub, rpc)(req, timeout=10).SerializeToString() for rpc, req in calls]
    for _, rpc, make, code, _words in BAD_INPUTS:
        assert rpc_error(getattr(stub, rpc), make()).code() == code
    after = [getattr(stub, rpc)(req, timeout=10).SerializeToString() for rpc, req in calls]
    assert after == before


def test_concurrent_clients_get_the_answers_of_one_idle_client(server, ref):
    n_threads, per_thread = 32, 30
    work = [mixed_requests(ref, per_thread, seed=100 + t) for t in range(n_threads)]
    with grpc.insecure_channel(server.address) as ch:
        idle = pb_grpc.DualVecStub(ch)
        expected = [[idle.Search(r, timeout=10).SerializeToString() for r in reqs] for reqs in work]
    got: list[list[bytes] | None] = [None] * n_threads
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_threads)

    def client(t: int) -> None:
        try:
            with grpc.insecure_channel(server.address) as ch:
                st = pb_grpc.DualVecStub(ch)
                grpc.channel_ready_future(ch).result(timeout=10)
                barrier.wait(timeout=30)
                got[t] = [st.Search(r, timeout=30).SerializeToString() for r in work[t]]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not errors, errors[:3]
    for t in range(n_threads):
        assert got[t] == expected[t], f"client {t} got different answers"
