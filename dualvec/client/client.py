"""A typed Python client for a dualvec server::

    from dualvec import Client
    with Client("127.0.0.1:50051") as c:
        c.search(["yale"], query_space="in", target_space="out", k=10)   # -> list[Neighbor]

Methods take plain Python arguments and return small dataclasses; a failed call raises ClientError carrying the
gRPC status code and the server's message.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, Sequence

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
            channel = grpc.secure_channel(address, tls, options=channel_options(service_config))
        elif token:  # gRPC sends call credentials over TLS only: here the token rides on each call's metadata
            self._metadata = token_metadata(token)
        self._channel = channel or grpc.insecure_channel(address, options=channel_options(service_config))
        self._stub = pb_grpc.DualVecStub(self._channel)

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
