"""The gRPC servicer: translates protobuf messages to core calls and back, and domain errors to status codes
(through dualvec.server.status_codes). No search logic lives here."""
from __future__ import annotations

import json
import logging
from typing import Callable, Mapping

import grpc
import numpy as np

from dualvec.kernel.errors import DualvecError, InvalidArgument, UnknownModel
from dualvec.server.batching import Batcher
from dualvec.kernel.desm import DesmLimits, score_documents, tokenized_inputs
from dualvec.kernel.search import SearchEngine, SearchQuery
from dualvec.server.status_codes import status_for
from dualvec.server.streaming import ReadAhead
from dualvec.kernel.spaces import ALL_PAIRS, Space, pair_name
from dualvec.v1 import dualvec_pb2 as pb
from dualvec.v1 import dualvec_pb2_grpc as pb_grpc
from dualvec.wire import query_from_pb, response_from, space_from_pb, space_to_pb

log = logging.getLogger(__name__)

# SearchStream requests read ahead of the answers sent: the most answered by one search (the batcher's default
# batch), and all a stream holds of a client that stops reading
STREAM_READ_AHEAD = 64

class DualVecServicer(pb_grpc.DualVecServicer):
    """Serves one or more named search engines; the first is the default (model = "")."""

    def __init__(self, engines: Mapping[str, SearchEngine], desm_limits: DesmLimits | None = None, *,
                 batch_size: int = 64,
                 concurrent_batches: int = 2):
        if not engines:
            raise ValueError("no bundle to serve")
        self.engines = dict(engines)
        # concurrent Search calls of one bundle share FAISS calls (dualvec.server.batching)
        self.batchers = {name: Batcher(engine.search_prepared, max_batch=batch_size, max_running=concurrent_batches)
                         for name, engine in self.engines.items()} if batch_size > 1 else {}
        self.default = next(iter(self.engines))
        self.desm_limits = desm_limits or DesmLimits()

    # ------------------------------------------------------------------------------------------------ plumbing
    def engine(self, name: str) -> SearchEngine:
        if not name:
            return self.engines[self.default]
        try:
            return self.engines[name]
        except KeyError:
            raise UnknownModel(f"model: no bundle named {name!r} is served here (served: "
                               f"{', '.join(self.engines)})") from None

    def _call(self, context: grpc.ServicerContext, work: Callable[[], object]):
        try:
            return work()
        except DualvecError as exc:
            code, message = status_for(exc), str(exc)
        except Exception:  # a bug: log it whole, tell the caller little
            log.exception("internal error")
            code, message = grpc.StatusCode.INTERNAL, "internal error (logged by the server)"
        context.abort(code, message)

    # ----------------------------------------------------------------------------------------------------- rpcs
    def Search(self, request: pb.SearchRequest, context) -> pb.SearchResponse:
        return self._call(context, lambda: self._search(request))

    def _search(self, request: pb.SearchRequest) -> pb.SearchResponse:
        """One search request answered (Search, and each request of SearchStream); raises DualvecError."""
        engine = self.engine(request.model)
        prepared = engine.prepare(query_from_pb(request))
        batcher = self.batchers.get(request.model or self.default)
        if batcher is None or prepared.exact:  # an exhaustive search would hold up a whole batch
            return response_from(engine.search_prepared([prepared])[0])
        return response_from(batcher.submit(prepared))

    def BatchSearch(self, request: pb.BatchSearchRequest, context) -> pb.BatchSearchResponse:
        def work():
            reqs = request.requests
            self.engines[self.default].limits.check_batch(len(reqs), "requests")  # one server, one limit
            by_model: dict[str, list[int]] = {}
            for i, r in enumerate(reqs):
                by_model.setdefault(r.model, []).append(i)
            out: list[pb.SearchResponse | None] = [None] * len(reqs)
            for name, members in by_model.items():
                engine = self.engine(name)
                prepared = [engine.prepare(query_from_pb(reqs[i], f"requests[{i}]."), f"requests[{i}].")
                            for i in members]
                for i, res in zip(members, engine.search_prepared(prepared)):
                    out[i] = response_from(res)
            return pb.BatchSearchResponse(responses=out)
        return self._call(context, work)

    def SearchStream(self, request_iterator, context):
        """One answer per request, in order, each as Search answers it, or that request's own error. The requests
        that have arrived are answered together (one search per bundle, as BatchSearch does), a lone one as Search
        answers it; at most STREAM_READ_AHEAD are read ahead of the answers sent (dualvec.server.streaming), and
        sending waits for the client's flow-control window, so a slow reader stops the reading. A cancelled call,
        or one past its deadline, stops before its next requests."""
        reader = ReadAhead(request_iterator, STREAM_READ_AHEAD)
        index = 0
        try:
            while context.is_active():
                requests = reader.take(context.is_active)
                if not requests:
                    return
                yield from self._stream_answers(index, requests)
                index += len(requests)
        finally:
            reader.close()

    def _stream_answers(self, first: int, requests: list[pb.SearchRequest]) -> list[pb.SearchStreamResponse]:
        """Answers of consecutive stream requests, the first at position ``first`` of the stream."""
        if len(requests) == 1:
            try:
                return [pb.SearchStreamResponse(index=first, response=self._search(requests[0]))]
            except Exception as exc:
                return [stream_error(first, exc)]
        answers: list[pb.SearchStreamResponse | None] = [None] * len(requests)
        groups: dict[str, tuple[SearchEngine, list[int], list]] = {}
        for i, request in enumerate(requests):
            try:
                engine = self.engine(request.model)
                prepared = engine.prepare(query_from_pb(request))
            except Exception as exc:
                answers[i] = stream_error(first + i, exc)
                continue
            group = groups.setdefault(request.model or self.default, (engine, [], []))
            group[1].append(i)
            group[2].append(prepared)
        for engine, members, prepared in groups.values():
            try:
                results = engine.search_prepared(prepared)
            except Exception as exc:
                for i in members:
                    answers[i] = stream_error(first + i, exc)
                continue
            for i, result in zip(members, results):
                answers[i] = pb.SearchStreamResponse(index=first + i, response=response_from(result))
        return answers  # type: ignore[return-value]

    def GetVectors(self, request: pb.GetVectorsRequest, context) -> pb.GetVectorsResponse:
        def work():
            engine = self.engine(request.model)
            vecs = engine.get_vectors(list(request.words), space_from_pb(request.space, "space"), raw=request.raw)
            return pb.GetVectorsResponse(vectors=[
                pb.WordVector(word=v.word, id=v.id, vector=v.vector, raw_vector=v.raw or (), norm=v.norm,
                              count=v.count) for v in vecs])
        return self._call(context, work)

    def Similarity(self, request: pb.SimilarityRequest, context) -> pb.SimilarityResponse:
        def work():
            engine = self.engine(request.model)
            pairs = [((p.a.word, space_from_pb(p.a.space, f"pairs[{i}].a.space")),
                      (p.b.word, space_from_pb(p.b.space, f"pairs[{i}].b.space"))) for i, p in enumerate(request.pairs)]
            return pb.SimilarityResponse(similarities=engine.similarity(pairs))
        return self._call(context, work)

    def ScoreDocuments(self, request: pb.ScoreDocumentsRequest, context) -> pb.ScoreDocumentsResponse:
        def work():
            engine = self.engine(request.model)
            bundle = engine.bundle
            query_tokens, docs = tokenized_inputs(
                engine.tokenizer, request.query, request.query_tokens,
                [(d.id, d.tokens, d.text) for d in request.documents], self.desm_limits)
            scores, source = score_documents(
                bundle, query_tokens, docs, query_space=space_from_pb(request.query_space, "query_space"),
                document_space=space_from_pb(request.document_space, "document_space", Space.OUT),
                bm25_weight=request.bm25_weight, limits=self.desm_limits)
            return pb.ScoreDocumentsResponse(
                scores=[pb.DocumentScore(id=s.id, score=s.score, query_words_found=s.query_words_found,
                                         document_words_found=s.document_words_found, desm=s.desm, bm25=s.bm25)
                        for s in scores], bm25_document_frequencies=source)
        return self._call(context, work)

    def GetInfo(self, request: pb.GetInfoRequest, context) -> pb.ModelInfo:
        def work():
            name = request.model or self.default
            return model_info(name, self.engine(request.model), list(self.engines), self.desm_limits)
        return self._call(context, work)


def stream_error(index: int, exc: Exception) -> pb.SearchStreamResponse:
    """A SearchStream answer carrying one request's error: a domain error's status code and message, as a unary
    call would fail; anything else is a bug, logged whole and told as INTERNAL."""
    if isinstance(exc, DualvecError):
        code, message = status_for(exc), str(exc)
    else:
        log.error("internal error", exc_info=exc)
        code, message = grpc.StatusCode.INTERNAL, "internal error (logged by the server)"
    return pb.SearchStreamResponse(index=index, error=pb.QueryError(code=code.value[0], message=message))


def model_info(name: str, engine: SearchEngine, served: list[str], desm_limits: DesmLimits) -> pb.ModelInfo:
    m = engine.bundle.manifest
    indexes = [pb.SpaceIndexInfo(space=space_to_pb(Space(sname)), kind=m.indexes[sname].spec.kind,
                                 description=m.indexes[sname].description, bytes=m.space_bytes(sname))
               for sname in m.spaces]
    pairs = []
    for q, t in ALL_PAIRS:
        entry = m.pairs.get(pair_name(q, t))
        if entry is None:
            continue
        pairs.append(pb.PairInfo(query_space=space_to_pb(q), target_space=space_to_pb(t),
                                 search_params=json.dumps(entry.params.to_dict()),
                                 recall_uniform=entry.recall_uniform or 0.0,
                                 recall_frequency=entry.recall_frequency or 0.0))
    src = m.source
    limits = engine.limits
    return pb.ModelInfo(model=name, vocab_size=m.vocab_size, dim=m.dim,
                        spaces=[space_to_pb(Space(s)) for s in m.spaces], indexes=indexes, pairs=pairs,
                        format_version=m.format_version, dualvec_version=m.dualvec_version,
                        source=f"{src.get('kind', '')}: {src.get('path', '')}", source_sha256=src.get("sha256", ""),
                        tokenizer=json.dumps(m.tokenizer or {}), max_k=limits.max_k,
                        max_batch=limits.max_batch, max_documents=desm_limits.max_documents,
                        max_document_tokens=desm_limits.max_document_tokens,
                        models=served, has_document_frequencies=engine.bundle.docfreq is not None)
