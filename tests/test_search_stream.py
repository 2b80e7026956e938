"""SearchStream: one answer per request in order, the known ones as unary Search answers them, the unknown ones
their own NOT_FOUND; flow control (a slow reader stops the server reading), cancellation and deadlines."""
from __future__ import annotations

import itertools
import threading
import time

import grpc
import numpy as np
import pytest

from dualvec.client import Client, ClientError
from dualvec.client.client import StreamResult
from dualvec.v1 import dualvec_pb2_grpc as pb_grpc
from dualvec.wire import search_request

PAIRS = (("in", "in"), ("in", "out"), ("out", "in"), ("out", "out"))


@pytest.fixture(scope="module")
def client(lee_server):
    with Client(lee_server.address, timeout=30.0) as c:
        c.wait_ready()
        yield c


def mixed_queries(vocab: list[str], n: int, seed: int = 5) -> list[dict]:
    """n queries over the four pairs and a few k, every seventh (and a few more) naming a word not in the
    vocabulary."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        q, t = PAIRS[i % 4]
        if i % 7 == 3 or rng.random() < 0.02:
            positive = [f"nosuchword{i}"] if i % 2 else [vocab[int(rng.integers(len(vocab)))], f"nosuchword{i}"]
        else:
            positive = [vocab[int(rng.integers(len(vocab)))]]
        out.append(dict(positive=positive, query_space=q, target_space=t, k=int(rng.integers(1, 12))))
    return out


@pytest.fixture(scope="module")
def vocab(lee_bundle):
    from dualvec.kernel.bundle import read_bundle

    return read_bundle(lee_bundle, checksums=False).vocab.words


@pytest.mark.slow
def test_ten_thousand_queries_answered_in_order_as_unary_search(client, vocab):
    queries = mixed_queries(vocab, 10_000)
    results = list(client.search_stream(iter(queries)))
    assert [r.index for r in results] == list(range(10_000))
    unknown = 0
    for q, r in zip(queries, results):
        missing = [w for w in q["positive"] if w.startswith("nosuchword")]
        if missing:
            unknown += 1
            assert not r.ok and r.neighbors is None
            assert r.error.code == grpc.StatusCode.NOT_FOUND
            assert missing[0] in r.error.details
        else:
            assert r.ok, r.error
            assert r.neighbors == client.search(**q)
    assert 1_500 < unknown < 2_000


def test_a_bad_field_fails_its_query_with_the_unary_status(client, vocab):
    queries = [dict(positive=[vocab[0]], k=5), dict(positive=[vocab[1]], k=100_000), dict(positive=[], k=3),
               dict(positive=[vocab[2]], k=5, model="nosuchmodel"), dict(positive=[vocab[3]], k=2)]
    results = list(client.search_stream(queries))
    assert [r.ok for r in results] == [True, False, False, False, True]
    for q, r in zip(queries, results):
        if r.ok:
            continue
        with pytest.raises(ClientError) as unary:
            client.search(**q)
        assert (r.error.code, r.error.details) == (unary.value.code, unary.value.details)
    assert results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT and "k" in results[1].error.details
    assert results[3].error.code == grpc.StatusCode.NOT_FOUND


def test_requests_may_be_protobuf_messages_and_an_empty_stream_ends(client, vocab):
    reqs = [search_request([vocab[5]], query_space="in", target_space="out", k=3), dict(positive=[vocab[6]])]
    results = list(client.search_stream(reqs))
    assert results[0] == StreamResult(0, client.search([vocab[5]], query_space="in", target_space="out", k=3))
    assert results[1].neighbors == client.search([vocab[6]])
    assert list(client.search_stream([])) == []


def test_a_bad_query_on_the_client_side_raises_after_the_ones_before_it(client, vocab):
    seen = []
    with pytest.raises(ValueError, match="space"):
        for r in client.search_stream([dict(positive=[vocab[0]]), dict(positive=[vocab[1]], query_space="up")]):
            seen.append(r)
    assert [r.index for r in seen] == [0]


class Counting:
    """An endless query source that counts what gRPC has taken from it."""

    def __init__(self, vocab: list[str]):
        self.vocab = vocab
        self.taken = 0
        self.lock = threading.Lock()

    def __iter__(self):
        for i in itertools.count():
            with self.lock:
                self.taken += 1
            yield search_request([self.vocab[i % 500]], k=10)


def test_the_server_reads_a_bounded_number_of_requests_ahead(lee_server, vocab):
    """The servicer reads at most STREAM_READ_AHEAD requests ahead of the batch it answers, and nothing more while
    nobody takes its answers (gRPC asks for the next answer only once the client's window has room)."""
    from dualvec.server.servicer import STREAM_READ_AHEAD

    source = Counting(vocab)

    class Context:
        def is_active(self):
            return True

    answers = lee_server.servicer.SearchStream(iter(source), Context())
    try:
        got = [next(answers) for _ in range(5)]
        assert [a.index for a in got] == list(range(5))
        time.sleep(0.5)
        stalled = source.taken
        time.sleep(0.5)
        assert source.taken == stalled <= 5 + 2 * STREAM_READ_AHEAD + 1
        more = [next(answers) for _ in range(500)]
        assert [a.index for a in more] == list(range(5, 505))
    finally:
        answers.close()


def test_requests_that_arrive_together_are_answered_together_in_order(lee_server, vocab):
    """A stream whose requests wait in the read-ahead is answered with batched searches, unknown words and bad
    fields failing their own query only, every answer where its request was."""
    queries = mixed_queries(vocab, 300, seed=9)
    queries[10] = dict(positive=[vocab[1]], k=100_000)
    requests = [search_request(**q) for q in queries]
    servicer = lee_server.servicer
    answers = list(servicer._stream_answers(1000, requests))
    assert [a.index for a in answers] == list(range(1000, 1300))
    for q, req, a in zip(queries, requests, answers):
        if a.WhichOneof("result") == "error":
            single = servicer._stream_answers(0, [req])[0]
            assert (a.error.code, a.error.message) == (single.error.code, single.error.message)
        else:
            assert a.response == servicer._search(servicer.served, req)
    assert answers[10].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert sum(a.WhichOneof("result") == "error" for a in answers) > 30


def test_a_slow_reader_holds_the_sender_back(client, vocab):
    source = Counting(vocab)
    stream = client.search_stream(iter(source), window=64)
    try:
        got = [next(stream) for _ in range(20)]
        assert [r.index for r in got] == list(range(20))
        time.sleep(0.5)
        stalled = source.taken
        time.sleep(0.5)
        assert source.taken == stalled <= 20 + 64 + 2  # nothing more is sent while nobody reads
        more = [next(stream) for _ in range(2_000)]  # reading again lets it go on, in order
        assert [r.index for r in more] == list(range(20, 2_020))
        assert source.taken <= 2_020 + 64 + 2
    finally:
        stream.close()


def test_cancelling_mid_stream_ends_it(client, vocab):
    source = Counting(vocab)
    stream = client.search_stream(iter(source))
    got = [next(stream) for _ in range(50)]
    assert [r.index for r in got] == list(range(50))
    readers = [t for t in threading.enumerate() if t.name == "dualvec-stream-reader"]
    assert readers  # the server's reader of this stream (the server runs in this process)
    stream.close()  # leaving the loop early cancels the call
    time.sleep(0.3)
    taken = source.taken
    time.sleep(0.5)
    assert source.taken == taken  # nothing more is read or sent
    deadline = time.monotonic() + 5
    while any(t.is_alive() for t in readers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.is_alive() for t in readers)  # and the server's side of the call has ended


def test_cancelling_the_raw_call_ends_it_with_cancelled(lee_server, vocab):
    source = Counting(vocab)
    channel = grpc.insecure_channel(lee_server.address)
    call = pb_grpc.DualVecStub(channel).SearchStream(iter(source))
    try:
        for _ in range(10):
            next(call)
        call.cancel()
        with pytest.raises(grpc.RpcError) as failed:
            for _ in call:
                pass
        assert failed.value.code() == grpc.StatusCode.CANCELLED
    finally:
        channel.close()


def test_a_deadline_ends_the_stream(client, vocab):
    def slow():
        for i in itertools.count():
            time.sleep(0.01)
            yield dict(positive=[vocab[i % 100]])

    started = time.monotonic()
    seen = 0
    with pytest.raises(ClientError) as failed:
        for _ in client.search_stream(slow(), timeout=0.5):
            seen += 1
    assert failed.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert seen > 5 and time.monotonic() - started < 5
    deadline = time.monotonic() + 5  # the server's side ends too: its reader of the stream stops
    while any(t.name == "dualvec-stream-reader" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "dualvec-stream-reader" for t in threading.enumerate())
