"""A typed Python client for a dualvec server::

    from dualvec import Client
    with Client("127.0.0.1:50051") as c:
        c.search(["yale"], query_space="in", target_space="out", k=10)   # -> list[Neighbor]

Methods take plain Python arguments and return small dataclasses; a failed call raises ClientError carrying the
gRPC status code and the server's message.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import grpc

from dualvec.client.credentials import PemSource, channel_credentials, check_token, token_metadata
from dualvec.client.service_config import channel_options
from dualvec.kernel.errors import DualvecError
from dualvec.kernel.results import DocumentScore, Neighbor, WordVector
from dualvec.v1 import dualvec_pb2 as pb
from dualvec.v1 import dualvec_pb2_grpc as pb_grpc
from dualvec.wire import search_request, space_to_pb



class ClientError(DualvecError):
    """A call that failed: ``code`` is the grpc.StatusCode, ``details`` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


@dataclass(frozen=True)
class ScoreResult:
    """ScoreDocuments' answer: scores in request order, and where BM25 document frequencies came from."""

    scores: list[DocumentScore]
    bm25_document_frequencies: str


_STATUS_OF_CODE = {status.value[0]: status for status in grpc.StatusCode}
# Client.search_stream's default window: queries sent and not yet handed to the caller. A few hundred keep the
# stream busy over a local network (well above a round trip's worth of answers at ~10k answers/s) at ~100 KB.
STREAM_WINDOW = 512
# Answers this client receives: up to what a server sends (dualvec.server.app.MAX_SEND_MESSAGE_BYTES), not gRPC's
# default 4 MiB. A server's default limits keep a BatchSearch answer under 4 MiB (dualvec.kernel.search
# Limits.max_results); this client also receives the wider answers a server may give: a BatchSearch of a server
# whose --max-results was raised, a GetVectors of 1,000 raw vectors of 1,000 dimensions (8 MB).
RECEIVE_LIMIT = 64 << 20


@dataclass(frozen=True)
class StreamResult:
    """One answer of Client.search_stream: the request's position in the stream (from 0) and either its neighbours
    (``error`` None) or its own error (``neighbors`` None; ``error.code`` the grpc.StatusCode a unary Search of
    the same request would have failed with, ``error.details`` the server's message)."""

    index: int
    neighbors: list[Neighbor] | None
    error: ClientError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Client:
    """Connection to a server, or to several: ``address`` is any gRPC target (``HOST:PORT``, ``dns:///HOST:PORT``
    resolving to every replica, ``ipv4:HOST:PORT,HOST:PORT``). Calls are spread over the servers and a call that
    finds its server gone is retried on another, as ``service_config`` says (None: the default of
    dualvec.client.service_config; a dict, JSON text or a JSON file's path; "none": gRPC's defaults).
    ``timeout``: seconds per call, retries included (None = no deadline).

    A server that asks who calls: ``token`` (a bearer token); ``tls_ca`` (the CA of the server's certificate,
    a PEM file's path or its bytes) connects over TLS; ``tls_cert``/``tls_key`` add this client's certificate
    (mutual TLS). Over TLS the token goes as call credentials, over plaintext as metadata on each call
    (dualvec.client.credentials)."""

    def __init__(self, address: str = "127.0.0.1:50051", *, timeout: float | None = 10.0, model: str = "",
                 channel: grpc.Channel | None = None, service_config: str | dict | None = None,
                 token: str | None = None, tls_ca: PemSource = None, tls_cert: PemSource = None,
                 tls_key: PemSource = None):
        self.address = address
        self.timeout = timeout
        self.model = model
        self._metadata: tuple[tuple[str, str], ...] | None = None
        tls = channel_credentials(tls_ca, tls_cert, tls_key) if channel is None else None
        if tls is not None:
            if token:
                tls = grpc.composite_channel_credentials(tls, grpc.access_token_call_credentials(check_token(token)))
            channel = grpc.secure_channel(address, tls, options=self._options(service_config))
        elif token:  # gRPC sends call credentials over TLS only: here the token rides on each call's metadata
            self._metadata = token_metadata(token)
        self._channel = channel or grpc.insecure_channel(address, options=self._options(service_config))
        self._stub = pb_grpc.DualVecStub(self._channel)

    @staticmethod
    def _options(service_config: str | dict | None) -> list[tuple[str, object]]:
        return [*channel_options(service_config), ("grpc.max_receive_message_length", RECEIVE_LIMIT)]

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _invoke(self, method, request):
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise ClientError(exc.code(), exc.details() or "") from None

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the channel connects (raises ClientError on timeout)."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise ClientError(grpc.StatusCode.UNAVAILABLE, f"no server answered at {self.address} within "
                              f"{timeout:g} s") from None

    # ----------------------------------------------------------------------------------------------------- calls
    def search(self, positive: Sequence[str] | str = (), negative: Sequence[str] | str = (), *, vector=None,
               query_space: str = "in", target_space: str = "in", k: int = 10, include_query_words: bool = False,
               restrict_vocab: int = 0, exact: bool = False, model: str | None = None) -> list[Neighbor]:
        """Top-k neighbours, gensim most_similar semantics; spaces are 'in' or 'out'."""
        req = search_request(positive, negative, vector=vector, query_space=query_space, target_space=target_space,
                             k=k, include_query_words=include_query_words, restrict_vocab=restrict_vocab,
                             exact=exact, model=self.model if model is None else model)
        resp = self._invoke(self._stub.Search, req)
        return [Neighbor(n.word, n.id, n.score) for n in resp.neighbors]

    def batch_search(self, queries: Iterable[dict]) -> list[list[Neighbor]]:
        """Several searches in one call; each dict holds Client.search's keyword arguments."""
        reqs = []
        for q in queries:
            q = dict(q)
            q.setdefault("model", self.model)
            reqs.append(search_request(q.pop("positive", ()), q.pop("negative", ()), **q))
        resp = self._invoke(self._stub.BatchSearch, pb.BatchSearchRequest(requests=reqs))
        return [[Neighbor(n.word, n.id, n.score) for n in r.neighbors] for r in resp.responses]

    def search_stream(self, queries: Iterable[dict | pb.SearchRequest], *, timeout: float | None = None,
                      window: int = STREAM_WINDOW) -> Iterator[StreamResult]:
        """Many searches over one SearchStream call, yielded as they come back, in order: one StreamResult per
        query, its neighbours or its own error (an unknown word fails its query, not the stream). Each query is a
        dict of Client.search's keyword arguments or a SearchRequest. ``queries`` is read lazily, as gRPC's flow
        control lets requests go, so it may be a generator of any length. ``timeout``: seconds for the whole
        stream (None, the default: no deadline; the client's per-call ``timeout`` does not apply). Closing the
        generator (or leaving a loop over it) cancels the call. A failure of the stream itself (cancelled,
        deadline, server gone) raises ClientError.

        ``window``: at most this many queries are sent and not yet handed to the caller. The server reads only a
        little ahead of the answers it sends, but gRPC Python's client takes in every answer the server sends
        whether or not the caller reads it; the window makes a caller that reads slowly hold back the sending,
        and so the server, with the client's memory flat."""
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        failed: list[Exception] = []
        room = threading.Semaphore(window)
        done = threading.Event()

        def requests():  # run by gRPC on its own thread: a bad query ends the requests, and is raised below
            try:
                for q in queries:
                    while not room.acquire(timeout=0.1):
                        if done.is_set():
                            return
                    if isinstance(q, pb.SearchRequest):
                        yield q
                        continue
                    q = dict(q)
                    q.setdefault("model", self.model)
                    yield search_request(q.pop("positive", ()), q.pop("negative", ()), **q)
            except Exception as exc:
                failed.append(exc)

        call = self._stub.SearchStream(requests(), timeout=timeout, metadata=self._metadata)
        try:
            for answer in call:
                room.release()
                if answer.WhichOneof("result") == "error":
                    code = _STATUS_OF_CODE.get(answer.error.code, grpc.StatusCode.UNKNOWN)
                    yield StreamResult(answer.index, None, ClientError(code, answer.error.message))
                else:
                    yield StreamResult(answer.index, [Neighbor(n.word, n.id, n.score)
                                                      for n in answer.response.neighbors])
        except grpc.RpcError as exc:
            raise ClientError(exc.code(), exc.details() or "") from None
        finally:
            done.set()
            call.cancel()  # a no-op once the call has ended; stops it when the caller left early
        if failed:  # every query before the bad one was answered
            raise failed[0]

    def get_vectors(self, words: Sequence[str], space: str = "in", *, raw: bool = False,
                    model: str | None = None) -> list[WordVector]:
        resp = self._invoke(self._stub.GetVectors, pb.GetVectorsRequest(
            words=list(words), space=space_to_pb(space), raw=raw, model=self.model if model is None else model))
        return [WordVector(v.word, v.id, tuple(v.vector), tuple(v.raw_vector) if raw else None, v.norm, v.count)
                for v in resp.vectors]

    def similarity(self, pairs: Sequence[tuple[tuple[str, str], tuple[str, str]]], *,
                   model: str | None = None) -> list[float]:
        """Cosines of ((word, space), (word, space)) pairs."""
        req = pb.SimilarityRequest(pairs=[pb.WordPair(a=pb.SpacedWord(word=a[0], space=space_to_pb(a[1])),
                                                      b=pb.SpacedWord(word=b[0], space=space_to_pb(b[1])))
                                          for a, b in pairs], model=self.model if model is None else model)
        return list(self._invoke(self._stub.Similarity, req).similarities)

    def score_documents(self, query: str = "", *, query_tokens: Sequence[str] | None = None,
                        documents: Sequence[dict], query_space: str = "in", document_space: str = "out",
                        bm25_weight: float = 0.0, model: str | None = None) -> ScoreResult:
        """DESM (and BM25 mixture) scores of documents (dicts with id and text or tokens), in request order."""
        docs = [pb.Document(id=str(d.get("id", i)), text=d.get("text", "") or "", tokens=list(d.get("tokens") or ()))
                for i, d in enumerate(documents)]
        req = pb.ScoreDocumentsRequest(query=query, query_tokens=list(query_tokens or ()), documents=docs,
                                       query_space=space_to_pb(query_space), document_space=space_to_pb(document_space),
                                       bm25_weight=bm25_weight, model=self.model if model is None else model)
        resp = self._invoke(self._stub.ScoreDocuments, req)
        return ScoreResult([DocumentScore(s.id, s.score, s.desm, s.bm25, s.query_words_found,
                                          s.document_words_found) for s in resp.scores],
                           resp.bm25_document_frequencies)

    def info(self, model: str | None = None) -> dict:
        """What the served bundle holds, as a dict."""
        from google.protobuf.json_format import MessageToDict

        resp = self._invoke(self._stub.GetInfo, pb.GetInfoRequest(model=self.model if model is None else model))
        out = MessageToDict(resp, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
        for p in out.get("pairs", []):
            p["search_params"] = json.loads(p.get("search_params") or "{}")
        out["tokenizer"] = json.loads(out.get("tokenizer") or "{}")
        # proto3 JSON writes 64-bit integers as strings; a Python caller wants numbers
        out["vocab_size"] = int(out.get("vocab_size") or 0)
        for ix in out.get("indexes", []):
            ix["bytes"] = int(ix.get("bytes") or 0)
        return out

    def health(self, service: str = "") -> str:
        """The health status name (SERVING, NOT_SERVING, ...)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout,
                              metadata=self._metadata)
        except grpc.RpcError as exc:
            raise ClientError(exc.code(), exc.details() or "") from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
