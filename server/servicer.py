"""The gRPC servicer: translates protobuf messages to core calls and back, and domain errors to status codes
(through dualvec.server.status_codes). No search logic lives here."""
from __future__ import annotations

import json
import logging
from typing import Callable, Mapping

import grpc
import numpy as np

from dualvec.kernel.errors import DualvecError, InvalidArgument
from dualvec.kernel.desm import DesmLimits, score_documents, tokenized_inputs
from dualvec.kernel.search import SearchEngine, SearchQuery
from dualvec.server.reload import ServedBundle, ServedSet
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
    """Serves one or more named search engines; the first is the default (model = "").

    What is served is ``self.served``, an immutable ServedSet (dualvec.server.reload) that a reload replaces with
    one assignment: each call reads it once at its start and takes its engine and batcher from it."""

    def __init__(self, engines: Mapping[str, SearchEngine | ServedBundle] | ServedSet,
                 desm_limits: DesmLimits | None = None, *,
                 batch_size: int = 64,
                 concurrent_batches: int = 2):
        # concurrent Search calls of one bundle share FAISS calls (dualvec.server.batching)
        self.served = engines if isinstance(engines, ServedSet) else ServedSet.of(
            engines, batch_size=batch_size, concurrent_batches=concurrent_batches)
        self.desm_limits = desm_limits or DesmLimits()

    # ------------------------------------------------------------------------------------------------ plumbing
    @property
    def engines(self) -> Mapping[str, SearchEngine]:
        return self.served.engines

    @property
    def batchers(self):
        return self.served.batchers

    @property
    def default(self) -> str:
        return self.served.default

    def engine(self, name: str) -> SearchEngine:
        return self.served.engine(name)

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
        served = self.served
        return self._call(context, lambda: self._search(served, request))

    def _search(self, served: ServedSet, request: pb.SearchRequest) -> pb.SearchResponse:
        """One search request answered (Search, and each request of SearchStream); raises DualvecError."""
        engine = served.engine(request.model)
        prepared = engine.prepare(query_from_pb(request))
        batcher = served.batcher(request.model)
        # an exhaustive search would hold up a whole batch; a lookup in an answer table needs none
        if batcher is None or prepared.exact or engine.answer_table(prepared) is not None:
            return response_from(engine.search_prepared([prepared])[0])
        return response_from(batcher.submit(prepared))

    def BatchSearch(self, request: pb.BatchSearchRequest, context) -> pb.BatchSearchResponse:
        served = self.served

        def work():
            reqs = request.requests
            served.engine("").limits.check_batch(len(reqs), "requests", [r.k for r in reqs])  # one server, one limit
            by_model: dict[str, list[int]] = {}
            for i, r in enumerate(reqs):
                by_model.setdefault(r.model, []).append(i)
            out: list[pb.SearchResponse | None] = [None] * len(reqs)
            for name, members in by_model.items():
                engine = served.engine(name)
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
        or one past its deadline, stops before its next requests. Under admission control (dualvec.server.admission)
        the context admits each batch before it is searched, weighed as a BatchSearch of it, and the room is given
        back before its answers are sent."""
        admit = getattr(context, "admit", None)
        reader = ReadAhead(request_iterator, STREAM_READ_AHEAD)
        index = 0
        try:
            while context.is_active():
                requests = reader.take(context.is_active)
                if not requests:
                    return
                if admit is None:
                    answers = self._stream_answers(index, requests)
                else:
                    with admit(requests):
                        answers = self._stream_answers(index, requests)
                yield from answers
                index += len(requests)
        finally:
            reader.close()

    def _stream_answers(self, first: int, requests: list[pb.SearchRequest]) -> list[pb.SearchStreamResponse]:
        """Answers of consecutive stream requests, the first at position ``first`` of the stream, all from the
        served set of the moment (a long stream does not hold a replaced bundle)."""
        served = self.served
        if len(requests) == 1:
            try:
                return [pb.SearchStreamResponse(index=first, response=self._search(served, requests[0]))]
            except Exception as exc:
                return [stream_error(first, exc)]
        answers: list[pb.SearchStreamResponse | None] = [None] * len(requests)
        groups: dict[str, tuple[SearchEngine, list[int], list]] = {}
        for i, request in enumerate(requests):
            try:
                engine = served.engine(request.model)
                prepared = engine.prepare(query_from_pb(request))
            except Exception as exc:
                answers[i] = stream_error(first + i, exc)
                continue
            group = groups.setdefault(request.model or served.default, (engine, [], []))
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
        served = self.served

        def work():
            engine = served.engine(request.model)
            vecs = engine.get_vectors(list(request.words), space_from_pb(request.space, "space"), raw=request.raw)
            return pb.GetVectorsResponse(vectors=[
                pb.WordVector(word=v.word, id=v.id, vector=v.vector, raw_vector=v.raw or (), norm=v.norm,
                              count=v.count) for v in vecs])
        return self._call(context, work)

    def Similarity(self, request: pb.SimilarityRequest, context) -> pb.SimilarityResponse:
        served = self.served

        def work():
            engine = served.engine(request.model)
            pairs = [((p.a.word, space_from_pb(p.a.space, f"pairs[{i}].a.space")),
                      (p.b.word, space_from_pb(p.b.space, f"pairs[{i}].b.space"))) for i, p in enumerate(request.pairs)]
            return pb.SimilarityResponse(similarities=engine.similarity(pairs))
        return self._call(context, work)

    def ScoreDocuments(self, request: pb.ScoreDocumentsRequest, context) -> pb.ScoreDocumentsResponse:
        served = self.served

        def work():
            engine = served.engine(request.model)
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
        served = self.served

        def work():
            bundle = served.bundle(request.model)
            return model_info(bundle.name, bundle.engine, list(served.bundles), self.desm_limits, bundle)
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


def model_info(name: str, engine: SearchEngine, served: list[str], desm_limits: DesmLimits,
               bundle: ServedBundle | None = None) -> pb.ModelInfo:
    """What GetInfo tells of a served bundle (``bundle``: which one this process serves, and since when)."""
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
                        models=served, has_document_frequencies=engine.bundle.docfreq is not None,
                        content_id=bundle.content_id if bundle else m.content_id, created=m.created,
                        loaded_at=bundle.loaded_at if bundle else "", max_results=limits.max_results,
                        max_words=limits.max_words, max_word_bytes=limits.max_word_bytes,
                        max_query_tokens=desm_limits.max_query_tokens)
