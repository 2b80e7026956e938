"""Every size a client controls has a limit and a `serve` flag. Past one a call is refused at once: INVALID_ARGUMENT
naming the field, the limit and the flag, or RESOURCE_EXHAUSTED from gRPC for a message over --max-message-bytes.
Every answer within the default limits fits a default client's 4 MiB, and dualvec.Client receives more. Error
messages stay short whatever they echo; bytes that do not parse are INVALID_ARGUMENT in one line, logged at most
once every few seconds; bundle directories follow the umask."""
from __future__ import annotations

import logging
import os
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from dualvec.cli import main as cli
from dualvec.client import Client, ClientError
from dualvec.kernel.bundle import BundleWriter, current_umask
from dualvec.kernel.desm import DesmLimits
from dualvec.kernel.errors import (ECHO_CHARS, MAX_MESSAGE_WIRE_BYTES, DualvecError, InvalidArgument, UnknownWords,
                                   bounded_message, echo)
from dualvec.kernel.manifest import Manifest
from dualvec.kernel.search import Limits
from dualvec.server.app import ServerConfig, load_engines, start_server
from dualvec.server.malformed import RateLimitedLog, RepeatFilter
from dualvec.v1 import dualvec_pb2 as pb
from dualvec.v1 import dualvec_pb2_grpc as pb_grpc

DIM = 48
DEFAULT_CLIENT_RECEIVE = 4 << 20  # gRPC's default max_receive_message_length
INVALID, NOT_FOUND, EXHAUSTED = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                 grpc.StatusCode.RESOURCE_EXHAUSTED)


def wire_bytes(message: str) -> int:
    """Bytes of a status message as gRPC sends it (percent-encoded grpc-message)."""
    return sum(1 if 0x20 <= b <= 0x7E and b != 0x25 else 3 for b in message.encode("utf-8"))


def serve(bundle, **limits):
    cfg = ServerConfig(bundles=(str(bundle),), port=0, checksums=False, **limits)
    return start_server(load_engines(cfg), cfg)


@pytest.fixture(scope="module")
def vocab(lee_bundle) -> list[str]:
    return [line.split("\t")[0] for line in (lee_bundle / "vocab.tsv").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def channel(lee_server):
    """A channel with every gRPC default (4 MiB receive limit) to a server with every limit at its default."""
    with grpc.insecure_channel(lee_server.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return pb_grpc.DualVecStub(channel)


@pytest.fixture(scope="module")
def tight(lee_bundle):
    """A server with every limit set small by its option."""
    running = serve(lee_bundle, max_k=20, max_batch=4, max_results=50, max_words=3, max_word_bytes=12,
                    max_documents=2, max_document_tokens=5, max_query_tokens=2, max_message_bytes=4096)
    with grpc.insecure_channel(running.address) as ch:
        yield pb_grpc.DualVecStub(ch)
    running.stop(0)


@pytest.fixture(scope="module")
def loose(lee_bundle):
    """A server whose limits let a BatchSearch of 1,024 x k 1,000 and words of 2 MB through."""
    running = serve(lee_bundle, max_results=1_100_000, max_word_bytes=2_000_000)
    yield running
    running.stop(0)


def refused(call, request, timeout: float = 30) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=timeout)
    return err.value


def one_short_line(details: str) -> None:
    assert "\n" not in details and wire_bytes(details) <= MAX_MESSAGE_WIRE_BYTES, details[:300]


# ------------------------------------------------------------------------------------------- hostile inputs

def docs(n: int, text: str = "the police") -> list[pb.Document]:
    return [pb.Document(id=str(i), text=text) for i in range(n)]


HOSTILE = [
    ("10 KB word", "Search", lambda v: pb.SearchRequest(positive=["x" * 10_240]), INVALID,
     ["positive[0]", "10,240 bytes", "limit of 1,000 bytes", "--max-word-bytes"]),
    ("1 MB word", "Search", lambda v: pb.SearchRequest(positive=["the", "é" * (1 << 19)]), INVALID,
     ["positive[1]", "1,048,576 bytes", "--max-word-bytes"]),
    ("long negative word", "Search", lambda v: pb.SearchRequest(positive=["the"], negative=["q" * 1001]), INVALID,
     ["negative[0]", "1,001 bytes"]),
    ("100k words in one query", "Search", lambda v: pb.SearchRequest(positive=[f"w{i}" for i in range(100_000)]),
     INVALID, ["positive", "100000 query words", "limit of 1,000", "--max-words"]),
    ("BatchSearch of 50k", "BatchSearch", lambda v: pb.BatchSearchRequest(
        requests=[pb.SearchRequest(positive=["the"])] * 50_000), INVALID,
     ["requests", "50000 requests", "limit of 1,024", "--max-batch"]),
    ("BatchSearch 1,024 x k 1,000", "BatchSearch", lambda v: pb.BatchSearchRequest(
        requests=[pb.SearchRequest(positive=[w], k=1000) for w in v[:1024]]), INVALID,
     ["requests", "1,024,000 neighbours", "limit of 100,000", "--max-results", "4 MiB"]),
    ("k above max_k", "Search", lambda v: pb.SearchRequest(positive=["the"], k=1001), INVALID,
     ["k", "1001", "1,000", "--max-k"]),
    ("vector of the wrong length", "Search", lambda v: pb.SearchRequest(vector=[0.5] * (DIM + 1)), INVALID,
     ["vector", str(DIM + 1), str(DIM)]),
    ("1,001 words to GetVectors", "GetVectors", lambda v: pb.GetVectorsRequest(words=v[:1001]), INVALID,
     ["words", "1001 words", "--max-words"]),
    ("long word to GetVectors", "GetVectors", lambda v: pb.GetVectorsRequest(words=["the", "z" * 5000]), INVALID,
     ["words[1]", "5,000 bytes"]),
    ("long word to Similarity", "Similarity", lambda v: pb.SimilarityRequest(pairs=[pb.WordPair(
        a=pb.SpacedWord(word="the"), b=pb.SpacedWord(word="y" * 2000))]), INVALID,
     ["pairs[0].b.word", "2,000 bytes"]),
    ("10k documents", "ScoreDocuments", lambda v: pb.ScoreDocumentsRequest(query="police", documents=docs(10_000)),
     INVALID, ["documents", "10,000 documents", "1,000", "--max-documents"]),
    ("1,001 query tokens", "ScoreDocuments", lambda v: pb.ScoreDocumentsRequest(
        query_tokens=["the"] * 1001, documents=docs(1)), INVALID, ["query_tokens", "1001", "1,000", "--max-query-tokens"]),
    ("a 17 MiB document", "ScoreDocuments", lambda v: pb.ScoreDocumentsRequest(
        query="police", documents=docs(1, "ab " * (6 << 20))), EXHAUSTED, ["larger than max", "16777216"]),
    ("an unknown 1,000-byte word", "GetVectors", lambda v: pb.GetVectorsRequest(words=["é" * 500]), NOT_FOUND,
     ["not in the vocabulary", "é" * ECHO_CHARS + "…", "(500 characters)"]),
    ("1,000 unknown words", "GetVectors", lambda v: pb.GetVectorsRequest(words=[f"{i}" * 200 for i in range(1000)]),
     NOT_FOUND, ["not in the vocabulary", "'0000", "and 990 more"]),
]


@pytest.mark.parametrize("rpc,make,code,words", [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_a_hostile_input_gets_its_status_and_a_short_message_naming_field_and_limit(stub, vocab, rpc, make, code,
                                                                                     words):
    request = make(vocab)
    started = time.monotonic()
    err = refused(getattr(stub, rpc), request)
    assert err.code() == code, err.details()
    for w in words:
        assert w in err.details(), f"{w!r} not in {err.details()!r}"
    one_short_line(err.details())
    assert wire_bytes(err.details()) < 1000
    assert time.monotonic() - started < 5  # refused before any work (the client's own serializing included)


def test_an_error_message_stays_receivable_whatever_it_echoes(loose):
    """With words let through up to 2 MB, the NOT_FOUND of a 100 KB word, of 1,000 long non-ASCII words and of a
    1 MB model name still arrive as NOT_FOUND (an unbounded echo overflowed gRPC's 8 KiB metadata limit, and the
    client saw RESOURCE_EXHAUSTED "Stream removed")."""
    with grpc.insecure_channel(loose.address) as ch:
        stub = pb_grpc.DualVecStub(ch)
        for call, request in [
                (stub.Search, pb.SearchRequest(positive=["w" * 100_000])),
                (stub.Search, pb.SearchRequest(positive=["%\x01" * 50_000])),
                (stub.GetVectors, pb.GetVectorsRequest(words=["ж漢😀" * 300 + str(i) for i in range(1000)])),
                (stub.GetInfo, pb.GetInfoRequest(model="m" * (1 << 20))),
                (stub.BatchSearch, pb.BatchSearchRequest(requests=[pb.SearchRequest(positive=["😀" * 400_000])]))]:
            err = refused(call, request)
            assert err.code() == NOT_FOUND, (err.code(), err.details()[:200])
            one_short_line(err.details())


# --------------------------------------------------------------------------------- every answer receivable

def max_answer_bytes(response: pb.BatchSearchResponse) -> int:
    """The bound of Limits.max_results's arithmetic: 4 bytes a query, 15 + w a neighbour."""
    return sum(4 + sum(15 + len(n.word.encode("utf-8")) for n in r.neighbors) for r in response.responses)


@pytest.mark.parametrize("n,k", [(1024, 97), (100, 1000), (1000, 100)])
def test_the_largest_legal_batch_search_fits_a_default_client(stub, vocab, n, k):
    assert n * k <= Limits.max_results
    request = pb.BatchSearchRequest(requests=[pb.SearchRequest(positive=[w], k=k) for w in vocab[-n:]])
    response = stub.BatchSearch(request, timeout=60)  # a channel at gRPC's defaults: 4 MiB received at most
    assert [len(r.neighbors) for r in response.responses] == [k] * n
    assert response.ByteSize() <= max_answer_bytes(response) <= DEFAULT_CLIENT_RECEIVE


def test_the_limit_arithmetic_holds_for_words_averaging_26_bytes():
    """100,000 neighbours of 26-byte words in 1,024 queries, the widest ids and non-zero scores: under 4 MiB."""
    per_query = Limits.max_results // 1024
    response = pb.BatchSearchResponse(responses=[pb.SearchResponse(neighbors=[
        pb.Neighbor(word="é" * 13, id=2**32 - 1, score=-0.5)] * per_query) for _ in range(1024)])
    assert response.ByteSize() <= max_answer_bytes(response) <= DEFAULT_CLIENT_RECEIVE


@pytest.mark.slow
def test_dualvec_client_receives_answers_past_4_mib_and_a_default_channel_is_told_the_sizes(loose, vocab):
    queries = [dict(positive=[w], k=1000) for w in vocab[:1024]]
    with Client(loose.address, timeout=60) as client:
        answers = client.batch_search(queries)
    assert [len(a) for a in answers] == [1000] * 1024
    with grpc.insecure_channel(loose.address) as ch:
        err = refused(pb_grpc.DualVecStub(ch).BatchSearch, pb.BatchSearchRequest(requests=[
            pb.SearchRequest(positive=q["positive"], k=1000) for q in queries]), timeout=60)
    assert err.code() == EXHAUSTED and "larger than max" in err.details() and str(4 << 20) in err.details()


# ----------------------------------------------------------------------------------- each flag sets its limit

def pairs(n: int) -> list[pb.WordPair]:
    return [pb.WordPair(a=pb.SpacedWord(word="the"), b=pb.SpacedWord(word="police"))] * n


AT_AND_PAST = [  # (name, rpc, request at the limit, request one past it, words of the refusal)
    ("max_k", "Search", pb.SearchRequest(positive=["the"], k=20), pb.SearchRequest(positive=["the"], k=21),
     ["k", "21", "limit of 20", "--max-k"]),
    ("max_batch", "BatchSearch", pb.BatchSearchRequest(requests=[pb.SearchRequest(positive=["the"], k=5)] * 4),
     pb.BatchSearchRequest(requests=[pb.SearchRequest(positive=["the"], k=5)] * 5),
     ["requests", "5 requests", "limit of 4", "--max-batch"]),
    ("max_results", "BatchSearch", pb.BatchSearchRequest(requests=[pb.SearchRequest(positive=["the"], k=20)] * 2 + [
        pb.SearchRequest(positive=["the"])]),
     pb.BatchSearchRequest(requests=[pb.SearchRequest(positive=["the"], k=20)] * 2 + [
         pb.SearchRequest(positive=["the"], k=11)]), ["requests", "51 neighbours", "limit of 50", "--max-results"]),
    ("max_results counts k past max_k as max_k", "BatchSearch",
     pb.BatchSearchRequest(requests=[pb.SearchRequest(positive=["the"], k=12)] * 4),
     pb.BatchSearchRequest(requests=[pb.SearchRequest(positive=["the"], k=30)]), ["requests[0].k", "30"]),
    ("max_words", "Search", pb.SearchRequest(positive=["the", "police"], negative=["man"]),
     pb.SearchRequest(positive=["the", "police"], negative=["man", "woman"]), ["positive", "4 query words",
                                                                                "limit of 3", "--max-words"]),
    ("max_words of GetVectors", "GetVectors", pb.GetVectorsRequest(words=["the"] * 3),
     pb.GetVectorsRequest(words=["the"] * 4), ["words", "4 words", "--max-words"]),
    ("max_words of Similarity", "Similarity", pb.SimilarityRequest(pairs=pairs(3)),
     pb.SimilarityRequest(pairs=pairs(4)), ["pairs", "4 pairs", "--max-words"]),
    ("max_word_bytes", "Search", pb.SearchRequest(positive=["police", "é" * 6]),
     pb.SearchRequest(positive=["police", "é" * 6 + "x"]), ["positive[1]", "13 bytes", "limit of 12 bytes"]),
    ("max_documents", "ScoreDocuments", pb.ScoreDocumentsRequest(query="police", documents=docs(2)),
     pb.ScoreDocumentsRequest(query="police", documents=docs(3)), ["documents", "3 documents", "2"]),
    ("max_document_tokens", "ScoreDocuments", pb.ScoreDocumentsRequest(query="police", documents=[
        pb.Document(id="a", tokens=["the"] * 5)]), pb.ScoreDocumentsRequest(query="police", documents=[
            pb.Document(id="a", tokens=["the"] * 6)]), ["documents[0].tokens", "6 tokens", "5"]),
    ("max_query_tokens", "ScoreDocuments", pb.ScoreDocumentsRequest(query_tokens=["the", "police"],
                                                                    documents=docs(1)),
     pb.ScoreDocumentsRequest(query_tokens=["the", "police", "man"], documents=docs(1)),
     ["query_tokens", "3 tokens", "2"]),
]


@pytest.mark.parametrize("rpc,at,past,words", [c[1:] for c in AT_AND_PAST], ids=[c[0] for c in AT_AND_PAST])
def test_each_limit_option_lets_its_limit_through_and_refuses_one_more(tight, rpc, at, past, words):
    call = getattr(tight, rpc)
    try:
        call(at, timeout=10)
    except grpc.RpcError as exc:  # an unknown word is fine here: the limit let it through to the lookup
        assert exc.code() == NOT_FOUND, exc.details()
    err = refused(call, past)
    assert err.code() == INVALID, err.details()
    for w in words:
        assert w in err.details(), f"{w!r} not in {err.details()!r}"


def test_max_message_bytes_is_grpc_receive_limit(tight):
    err = refused(tight.GetVectors, pb.GetVectorsRequest(words=["the"] * 3, model="m" * 5000))
    assert err.code() == EXHAUSTED and "4096" in err.details(), err.details()
    assert refused(tight.GetVectors, pb.GetVectorsRequest(words=["the"] * 3, model="m" * 3000)).code() == NOT_FOUND


def test_get_info_reports_the_limits_set(tight):
    info = tight.GetInfo(pb.GetInfoRequest(), timeout=10)
    assert (info.max_k, info.max_batch, info.max_documents, info.max_document_tokens) == (20, 4, 2, 5)


def test_serve_flags_reach_the_server_config_and_defaults_are_the_kernels(monkeypatch, tmp_path):
    import dualvec.server.app as app

    seen: list[ServerConfig] = []
    monkeypatch.setattr(app, "serve_forever", lambda cfg: seen.append(cfg) or 0)
    assert cli.main(["serve", str(tmp_path), "--max-results", "7", "--max-words", "8", "--max-word-bytes", "9",
                     "--max-documents", "10", "--max-document-tokens", "11", "--max-query-tokens", "12",
                     "--max-message-bytes", "4096", "--max-k", "13", "--max-batch", "14"]) == 0
    cfg = seen[-1]
    assert (cfg.max_results, cfg.max_words, cfg.max_word_bytes, cfg.max_documents, cfg.max_document_tokens,
            cfg.max_query_tokens, cfg.max_message_bytes, cfg.max_k, cfg.max_batch) == \
        (7, 8, 9, 10, 11, 12, 4096, 13, 14)
    assert app.search_limits(cfg) == Limits(max_k=13, max_batch=14, max_words=8, max_word_bytes=9, max_results=7)
    assert app.desm_limits(cfg) == DesmLimits(max_documents=10, max_document_tokens=11, max_query_tokens=12)
    assert cli.main(["serve", str(tmp_path)]) == 0
    default = seen[-1]
    assert app.search_limits(default) == Limits() and app.desm_limits(default) == DesmLimits()
    assert default.max_message_bytes == 16 << 20


@pytest.mark.parametrize("flag,value", [("--max-words", "0"), ("--max-word-bytes", "-1"), ("--max-results", "x"),
                                        ("--max-message-bytes", str(2**31)), ("--max-k", "0")])
def test_a_bad_limit_is_refused_at_the_command_line(capsys, tmp_path, flag, value):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve", str(tmp_path), flag, value])
    assert exit_.value.code == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and flag in err and value in err


# ----------------------------------------------------------------------------------------- malformed requests

RAW_METHODS = ["/dualvec.v1.DualVec/" + m for m in ("Search", "BatchSearch", "GetVectors", "Similarity",
                                                      "ScoreDocuments", "GetInfo")] + ["/grpc.health.v1.Health/Check"]


def test_bytes_that_do_not_parse_are_invalid_argument_in_one_line_and_logged_once(lee_bundle, caplog):
    running = serve(lee_bundle)  # its own server: the log's first report is due at once
    try:
        caplog.set_level(logging.INFO)
        rng = np.random.default_rng(5)
        with grpc.insecure_channel(running.address) as ch:
            for i in range(40):
                method = RAW_METHODS[i % len(RAW_METHODS)]
                call = ch.unary_unary(method, request_serializer=None, response_deserializer=None)
                data = b"\xff\xff\xff\xff" + rng.bytes(int(rng.integers(1, 300)))  # field 0 with a bad tag
                err = refused(call, data)
                assert err.code() == INVALID, (method, err.code(), err.details())
                assert err.details().startswith("malformed request: ") and "\n" not in err.details()
                assert method.rsplit("/", 1)[1].replace("Check", "HealthCheck") in err.details()
            # the server answers as before
            assert pb_grpc.DualVecStub(ch).Search(pb.SearchRequest(positive=["police"]), timeout=10).neighbors
            health = ch.unary_unary("/grpc.health.v1.Health/Check",
                                    request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                                    response_deserializer=health_pb2.HealthCheckResponse.FromString)
            assert health(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        running.stop(0)
    malformed = [r for r in caplog.records if r.name == "dualvec.server.malformed"]
    assert len(malformed) == 1 and "refused 1 malformed request" in malformed[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info or "deserializ" in r.getMessage()]


def test_a_malformed_message_ends_a_search_stream_after_the_answers_before_it(lee_server):
    with grpc.insecure_channel(lee_server.address) as ch:
        stream = ch.stream_stream("/dualvec.v1.DualVec/SearchStream", request_serializer=None,
                                  response_deserializer=pb.SearchStreamResponse.FromString)
        good = pb.SearchRequest(positive=["police"]).SerializeToString()
        answers = []
        with pytest.raises(grpc.RpcError) as err:
            for answer in stream(iter([good, good, b"\xff\xff\xff", good]), timeout=10):
                answers.append(answer)
    assert err.value.code() == INVALID and "dualvec.v1.SearchRequest" in err.value.details()
    assert [a.index for a in answers] == [0, 1] and all(a.response.neighbors for a in answers)


# ------------------------------------------------------------------------------------- bounded error messages

def test_bounded_message_keeps_every_message_under_its_wire_size():
    assert bounded_message("k: 5 is above 3") == "k: 5 is above 3"
    for text in ("x" * 100_000, "%" * 5000, "é" * 5000, "😀" * 5000, "\x00" * 5000, "a\ud800" * 3000):
        cut = bounded_message(text)
        assert wire_bytes(cut) <= MAX_MESSAGE_WIRE_BYTES and cut.endswith("(message shortened)")
        assert cut.encode("utf-8")  # encodable: an unpaired surrogate is escaped
    assert bounded_message("a\ud800b") == "a\\ud800b"
    assert str(DualvecError("é" * 10_000)) == bounded_message("é" * 10_000)
    assert str(InvalidArgument("model", "x" * 10_000)).startswith("model: xxx")


def test_unknown_words_names_ten_each_shortened_and_keeps_them_all():
    words = [f"{i}-" + "w" * 10_000 for i in range(30)]
    exc = UnknownWords(words, "in")
    assert exc.words == words
    message = str(exc)
    assert message.startswith("not in the vocabulary (space IN): words '0-www") and message.endswith("and 20 more")
    assert message.count("(10,002 characters)") == 10 and "'10-" not in message
    assert echo("abc") == "'abc'" and echo("q" * 65) == "'" + "q" * 64 + "…' (65 characters)"


def test_repeated_errors_are_logged_once_per_interval_with_a_count(caplog):
    logger = logging.getLogger("dualvec.test.repeats")
    logger.addFilter(RepeatFilter(every=0.3))
    caplog.set_level(logging.INFO, logger="dualvec.test.repeats")
    for _ in range(50):
        logger.error("internal error")
    logger.warning("not an error")
    time.sleep(0.35)
    logger.error("internal error")
    lines = [r.getMessage() for r in caplog.records if r.name == "dualvec.test.repeats"]
    assert lines == ["internal error", "not an error", "internal error (49 more like it held back in the last 0.3 s)"]

    caplog.clear()
    report = RateLimitedLog(logger, every=0.3)
    for _ in range(20):
        report.note(lambda n: f"{n} events")
    time.sleep(0.5)  # the last of the burst is told once its interval has passed
    assert [r.getMessage() for r in caplog.records if r.name == "dualvec.test.repeats"] == ["1 events", "19 events"]


# ---------------------------------------------------------------------------------------------------- bundles

@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077, 0o002])
def test_a_bundle_directory_and_its_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        assert current_umask() == umask
        target = tmp_path / "b.bundle"
        with BundleWriter(target) as writer:
            writer.write_vocab(["a", "b"], np.array([2, 1], dtype=np.int64))
            writer.write_array("in.vectors.npy", np.ones((2, 3), np.float32))
            writer.commit(Manifest(vocab_size=2, dim=3, spaces=[], indexes={}, files={}))
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o777 & ~umask
    for name in ("vocab.tsv", "in.vectors.npy", "manifest.json"):
        assert (target / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_a_built_bundle_is_readable_by_others_under_the_usual_umask(lee_bundle):
    assert lee_bundle.stat().st_mode & 0o777 == 0o777 & ~current_umask()


def test_get_info_reports_every_limit_the_server_was_started_with(tight):
    info = tight.GetInfo(pb.GetInfoRequest(), timeout=10)
    assert (info.max_k, info.max_batch, info.max_results, info.max_words, info.max_word_bytes) == (20, 4, 50, 3, 12)
    assert (info.max_documents, info.max_document_tokens, info.max_query_tokens) == (2, 5, 2)
