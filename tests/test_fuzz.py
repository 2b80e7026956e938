"""Property-based tests (hypothesis) against a running server: every RPC is sent arbitrary messages (any unicode,
huge and out-of-range numbers, unknown enum values, NaN and infinite vectors and weights), hand-encoded protobuf
with wrong wire types, out-of-range varints and nested garbage, and raw random bytes. Whatever arrives: never a
crash, never UNKNOWN or INTERNAL, every error message one bounded line, every answer well formed; and a fixed set
of ordinary calls answers the same before and after.

Each test is bounded (``EXAMPLES`` examples, no deadline) so that the suite stays fast; the examples tried and the
status codes seen are printed at the end of the module (pytest -s)."""
from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dualvec.indexer.build import BuildConfig, build_bundle
from dualvec.indexer.model_readers import read_model
from dualvec.kernel.errors import MAX_MESSAGE_WIRE_BYTES
from dualvec.server.app import ServerConfig, load_engines, start_server
from dualvec.v1 import dualvec_pb2 as pb
from dualvec.v1 import dualvec_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow  # thousands of generated requests or a compiled generator: .ci/run covers it

EXAMPLES = int(os.environ.get("DUALVEC_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])
DIM = 48
IN_ONLY = "lee-in-only.bundle"
TIMEOUT = 30.0
# what a request may be answered with; UNKNOWN and INTERNAL are bugs, and so is a call the server dropped
# (CANCELLED, UNAVAILABLE, DEADLINE_EXCEEDED with a generous deadline, or RESOURCE_EXHAUSTED "Stream removed")
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.FAILED_PRECONDITION}
METHODS = {"Search": pb.SearchResponse, "BatchSearch": pb.BatchSearchResponse, "GetVectors": pb.GetVectorsResponse,
           "Similarity": pb.SimilarityResponse, "ScoreDocuments": pb.ScoreDocumentsResponse,
           "GetInfo": pb.ModelInfo}

CODE_OF = {code.value[0]: code for code in grpc.StatusCode}
TRIED: Counter = Counter()   # examples per test
CODES: Counter = Counter()   # (method, status) over every call


# ------------------------------------------------------------------------------------------------------ server

@pytest.fixture(scope="module")
def in_only_bundle(lee_model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / IN_ONLY
    build_bundle(read_model(lee_model, in_only=True), path, BuildConfig(index="flat", in_only=True, quiet=True))
    return path


@pytest.fixture(scope="module")
def server(lee_bundle, in_only_bundle):
    """lee.bundle (the default) and an IN-only bundle, every limit at its default."""
    cfg = ServerConfig(bundles=(str(lee_bundle), str(in_only_bundle)), port=0, checksums=False)
    running = start_server(load_engines(cfg), cfg)
    yield running
    running.stop(0)
    print(f"\nfuzzing: {sum(TRIED.values())} examples ({dict(TRIED)}); statuses seen: "
          f"{sorted((m, c.name, n) for (m, c), n in CODES.items())}")


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return pb_grpc.DualVecStub(channel)


@pytest.fixture(scope="module")
def vocab(lee_bundle) -> list[str]:
    return [line.split("\t")[0] for line in (lee_bundle / "vocab.tsv").read_text(encoding="utf-8").splitlines()]


def ordinary_calls() -> list[tuple[str, object]]:
    """Calls whose answers must not change, whatever was sent before them."""
    return [
        ("Search", pb.SearchRequest(positive=["police"], k=20)),
        ("Search", pb.SearchRequest(positive=["king", "woman"], negative=["man"], query_space=pb.OUT,
                                    target_space=pb.IN, k=15, exact=True)),
        ("Search", pb.SearchRequest(vector=[math.sin(i) for i in range(DIM)], target_space=pb.OUT, k=7)),
        ("Search", pb.SearchRequest(positive=["government"], model=IN_ONLY, restrict_vocab=500)),
        ("BatchSearch", pb.BatchSearchRequest(requests=[pb.SearchRequest(positive=[w], k=k) for w, k in
                                                        (("the", 5), ("sydney", 30), ("fire", 0))])),
        ("GetVectors", pb.GetVectorsRequest(words=["police", "the"], space=pb.OUT, raw=True)),
        ("Similarity", pb.SimilarityRequest(pairs=[pb.WordPair(a=pb.SpacedWord(word="police"),
                                                               b=pb.SpacedWord(word="officers", space=pb.OUT))])),
        ("ScoreDocuments", pb.ScoreDocumentsRequest(query="police fire", bm25_weight=0.3, documents=[
            pb.Document(id="a", text="Police said the fire was deliberately lit"),
            pb.Document(id="b", tokens=["cricket", "match", "australia"])])),
        ("GetInfo", pb.GetInfoRequest()),
    ]


def answers(stub) -> list[bytes]:
    return [getattr(stub, rpc)(request, timeout=TIMEOUT).SerializeToString(deterministic=True)
            for rpc, request in ordinary_calls()]


@pytest.fixture(scope="module")
def baseline(stub) -> list[bytes]:
    return answers(stub)


@pytest.fixture(autouse=True)
def unchanged_and_alive(stub, channel, baseline):
    """After every fuzz test: the ordinary calls answer as before, and health says SERVING."""
    yield
    assert answers(stub) == baseline
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


# ------------------------------------------------------------------------------------------------- checking

def wire_bytes(message: str) -> int:
    return sum(1 if 0x20 <= b <= 0x7E and b != 0x25 else 3 for b in message.encode("utf-8"))


def check_error(method: str, code: grpc.StatusCode, details: str) -> None:
    CODES[method, code] += 1
    assert code in ALLOWED, (method, code, details[:300])
    assert details and "\n" not in details and wire_bytes(details) <= MAX_MESSAGE_WIRE_BYTES, (method, details[:300])


def call(stub, method: str, request):
    """The answer, or None after checking the error."""
    try:
        response = getattr(stub, method)(request, timeout=TIMEOUT)
    except grpc.RpcError as exc:
        check_error(method, exc.code(), exc.details() or "")
        return None
    CODES[method, grpc.StatusCode.OK] += 1
    return response


def check_neighbors(response: pb.SearchResponse, request: pb.SearchRequest, vocab_size: int) -> None:
    assert len(response.neighbors) <= (request.k or 10)
    scores = [n.score for n in response.neighbors]
    assert all(math.isfinite(s) and -1.01 <= s <= 1.01 for s in scores), scores
    assert scores == sorted(scores, reverse=True)
    assert all(n.id < vocab_size and n.word for n in response.neighbors)
    if request.restrict_vocab:
        assert all(n.id < request.restrict_vocab for n in response.neighbors)


def check_answer(method: str, request, response, vocab_size: int) -> None:
    """What an answer of each method must look like."""
    if method == "Search":
        check_neighbors(response, request, vocab_size)
    elif method == "BatchSearch":
        assert len(response.responses) == len(request.requests)
        for r, q in zip(response.responses, request.requests):
            check_neighbors(r, q, vocab_size)
    elif method == "GetVectors":
        assert [v.word for v in response.vectors] == list(request.words)
        assert all(len(v.vector) == DIM and all(math.isfinite(x) for x in v.vector) for v in response.vectors)
    elif method == "Similarity":
        assert len(response.similarities) == len(request.pairs)
        assert all(math.isfinite(s) and -1.01 <= s <= 1.01 for s in response.similarities)
    elif method == "ScoreDocuments":
        assert [s.id for s in response.scores] == [d.id for d in request.documents]
        assert all(math.isfinite(s.score) for s in response.scores)
    elif method == "GetInfo":
        assert response.dim == DIM and response.vocab_size == vocab_size


# ---------------------------------------------------------------------------------------------- strategies

UINT32 = 2**32 - 1
SAMPLE = ["the", "police", "king", "man", "woman", "sydney", "fire", "government", "australia", "said", "a"]
any_text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40)  # protobuf refuses surrogates
words = st.one_of(st.sampled_from(SAMPLE), any_text,
                  st.text(alphabet=st.characters(exclude_categories=("Cs",)), min_size=240, max_size=1100),
                  st.builds(lambda c, n: c * n, st.sampled_from(["x", "é", "😀", "%", "\x00"]),
                            st.integers(200, 1100)))
word_lists = st.lists(words, max_size=6)
spaces = st.one_of(st.sampled_from([0, 1, 2]), st.integers(-2**31, 2**31 - 1))
counts = st.one_of(st.integers(0, 1100), st.sampled_from([UINT32, 2**31, 1001, 1024]), st.integers(0, UINT32))
floats = st.floats(width=32, allow_nan=True, allow_infinity=True)
vectors = st.one_of(st.just([]), st.lists(floats, max_size=60), st.lists(floats, min_size=DIM, max_size=DIM),
                    st.lists(st.floats(-1e3, 1e3, width=32), min_size=DIM, max_size=DIM),
                    st.lists(st.sampled_from([0.0, -0.0, 1e-45, 3e38, -3e38]), min_size=DIM, max_size=DIM))
models = st.one_of(st.sampled_from(["", "lee.bundle", IN_ONLY]), any_text)

search_requests = st.builds(
    pb.SearchRequest, positive=word_lists, negative=st.lists(words, max_size=3), vector=vectors,
    query_space=spaces, target_space=spaces, k=counts, include_query_words=st.booleans(), restrict_vocab=counts,
    exact=st.booleans(), model=models)
# requests that are mostly valid, in any combination, so that half the examples reach the search itself
known = st.sampled_from(SAMPLE)
valid_spaces = st.sampled_from([0, 1, 2])
valid_models = st.sampled_from(["", "lee.bundle", IN_ONLY])
plausible_search = st.one_of(
    st.builds(pb.SearchRequest, positive=st.lists(known, min_size=1, max_size=4), negative=st.lists(known, max_size=2),
              query_space=valid_spaces, target_space=valid_spaces, k=st.integers(0, 1000),
              include_query_words=st.booleans(), restrict_vocab=st.one_of(st.just(0), st.integers(1, 5000)),
              exact=st.booleans(), model=valid_models),
    st.builds(pb.SearchRequest, vector=st.lists(st.floats(-1e3, 1e3, width=32), min_size=DIM, max_size=DIM),
              target_space=valid_spaces, k=st.integers(0, 1000), exact=st.booleans(), model=valid_models))
search_requests = st.one_of(plausible_search, search_requests)
batch_requests = st.builds(pb.BatchSearchRequest, requests=st.one_of(st.lists(plausible_search, max_size=20),
                                                                     st.lists(search_requests, max_size=20)))
vectors_requests = st.one_of(
    st.builds(pb.GetVectorsRequest, words=st.lists(known, min_size=1, max_size=12), space=valid_spaces,
              raw=st.booleans(), model=valid_models),
    st.builds(pb.GetVectorsRequest, words=st.lists(words, max_size=12), space=spaces, raw=st.booleans(),
              model=models))
spaced_words = st.one_of(st.builds(pb.SpacedWord, word=known, space=valid_spaces),
                         st.builds(pb.SpacedWord, word=words, space=spaces))
similarity_requests = st.builds(pb.SimilarityRequest, model=st.one_of(valid_models, models), pairs=st.lists(
    st.builds(pb.WordPair, a=spaced_words, b=spaced_words), max_size=12))
sentences = st.lists(known, max_size=30).map(" ".join)
documents = st.one_of(
    st.builds(pb.Document, id=any_text, text=sentences),
    st.builds(pb.Document, id=any_text, tokens=st.lists(known, min_size=1, max_size=30)),
    st.builds(pb.Document, id=any_text, text=st.one_of(any_text, st.text(max_size=400)),
              tokens=st.lists(words, max_size=8)))
score_requests = st.one_of(
    st.builds(pb.ScoreDocumentsRequest, query=sentences, documents=st.lists(documents, max_size=10),
              query_space=valid_spaces, document_space=valid_spaces, bm25_weight=st.floats(0, 1, width=32),
              model=valid_models),
    st.builds(pb.ScoreDocumentsRequest, query=st.one_of(any_text, sentences),
              query_tokens=st.lists(words, max_size=5), documents=st.lists(documents, max_size=10),
              query_space=spaces, document_space=spaces, bm25_weight=floats, model=models))
info_requests = st.builds(pb.GetInfoRequest, model=models)

REQUESTS = {"Search": search_requests, "BatchSearch": batch_requests, "GetVectors": vectors_requests,
            "Similarity": similarity_requests, "ScoreDocuments": score_requests, "GetInfo": info_requests}


# hand-encoded protobuf: any field number and wire type, varints of up to 64 bits, invalid UTF-8, nested garbage
def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def encode(fields: list[tuple[int, int, object]]) -> bytes:
    out = bytearray()
    for number, wire_type, value in fields:
        out += varint((number << 3) | wire_type)
        if wire_type == 0:
            out += varint(value)  # type: ignore[arg-type]
        elif wire_type == 1:
            out += (value % 2**64).to_bytes(8, "little")  # type: ignore[operator]
        elif wire_type == 5:
            out += (value % 2**32).to_bytes(4, "little")  # type: ignore[operator]
        elif wire_type == 2:
            payload = value if isinstance(value, bytes) else encode(value)  # type: ignore[arg-type]
            out += varint(len(payload)) + payload
        # 3, 4 (groups) and 6, 7 (invalid) carry nothing
    return bytes(out)


field_numbers = st.one_of(st.integers(1, 12), st.integers(0, 2**29 - 1))
payloads = st.one_of(st.binary(max_size=40), st.text(max_size=20).map(lambda t: t.encode("utf-8")),
                     st.sampled_from([b"\xff\xfe", b"\xed\xa0\x80", b"\xc0\xaf", "😀".encode()[:3]]))
wire_fields = st.deferred(lambda: st.lists(st.one_of(
    st.tuples(field_numbers, st.just(0), st.integers(-2**63, 2**64 - 1)),
    st.tuples(field_numbers, st.sampled_from([1, 5]), st.integers(-2**63, 2**64 - 1)),
    st.tuples(field_numbers, st.just(2), payloads),
    st.tuples(field_numbers, st.just(2), wire_fields),
    st.tuples(field_numbers, st.sampled_from([3, 4, 6, 7]), st.none())), max_size=8))


# ------------------------------------------------------------------------------------------------------ tests

@pytest.mark.parametrize("method", list(REQUESTS))
def test_arbitrary_messages_get_an_answer_or_a_client_error(stub, vocab, method):
    @FUZZ
    @given(request=REQUESTS[method])
    def run(request):
        TRIED[f"messages/{method}"] += 1
        response = call(stub, method, request)
        if response is not None:
            check_answer(method, request, response, len(vocab))

    run()


@pytest.mark.parametrize("method", list(METHODS))
def test_hand_encoded_and_random_bytes_never_fail_the_server(channel, method):
    raw = channel.unary_unary(f"/dualvec.v1.DualVec/{method}", request_serializer=None, response_deserializer=None)

    @FUZZ
    @given(data=st.one_of(wire_fields.map(encode), st.binary(max_size=3000)))
    def run(data):
        TRIED[f"bytes/{method}"] += 1
        try:
            answer = raw(data, timeout=TIMEOUT)
        except grpc.RpcError as exc:
            check_error(method, exc.code(), exc.details() or "")
            return
        CODES[method, grpc.StatusCode.OK] += 1
        METHODS[method].FromString(answer)  # an answer is a well-formed message

    run()


@pytest.mark.parametrize("method", ["Search", "ScoreDocuments"])
def test_a_valid_message_with_bytes_changed_never_fails_the_server(channel, method):
    raw = channel.unary_unary(f"/dualvec.v1.DualVec/{method}", request_serializer=None, response_deserializer=None)

    @FUZZ
    @given(request=REQUESTS[method], edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                                   min_size=1, max_size=4), cut=st.integers(0, 10**6))
    def run(request, edits, cut):
        TRIED[f"mutated/{method}"] += 1
        data = bytearray(request.SerializeToString())
        for position, value in edits:
            if data:
                data[position % len(data)] = value
        data = bytes(data[:cut % (len(data) + 1)] if cut % 3 == 0 else data)
        try:
            raw(data, timeout=TIMEOUT)
            CODES[method, grpc.StatusCode.OK] += 1
        except grpc.RpcError as exc:
            check_error(method, exc.code(), exc.details() or "")

    run()


def test_search_streams_of_arbitrary_requests_answer_each_in_order(stub, vocab):
    @FUZZ
    @given(requests=st.lists(search_requests, min_size=1, max_size=12))
    def run(requests):
        TRIED["stream/messages"] += 1
        got = list(stub.SearchStream(iter(requests), timeout=TIMEOUT))
        assert [a.index for a in got] == list(range(len(requests)))
        for answer, request in zip(got, requests):
            if answer.HasField("error"):
                code = CODE_OF.get(answer.error.code, grpc.StatusCode.UNKNOWN)
                check_error("SearchStream", code, answer.error.message)
            else:
                CODES["SearchStream", grpc.StatusCode.OK] += 1
                check_neighbors(answer.response, request, len(vocab))

    run()


def test_search_streams_with_malformed_messages_end_invalid_argument(channel):
    stream = channel.stream_stream("/dualvec.v1.DualVec/SearchStream", request_serializer=None,
                                   response_deserializer=pb.SearchStreamResponse.FromString)

    @FUZZ
    @given(messages=st.lists(st.one_of(search_requests.map(lambda r: r.SerializeToString()),
                                       wire_fields.map(encode), st.binary(max_size=200)), min_size=1, max_size=8))
    def run(messages):
        TRIED["stream/bytes"] += 1
        got = []
        try:
            for answer in stream(iter(messages), timeout=TIMEOUT):
                got.append(answer)
            CODES["SearchStream", grpc.StatusCode.OK] += 1
            assert len(got) == len(messages)
        except grpc.RpcError as exc:
            check_error("SearchStream", exc.code(), exc.details() or "")
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "malformed request" in exc.details()
        assert [a.index for a in got] == list(range(len(got)))

    run()
