"""ScoreDocuments through real gRPC equals a DESM computed here with numpy from the bundle's vectors (DESIGN.md
section 1), for IN-OUT and IN-IN, in request order, with the found-word counts right and a document of unknown
words scored 0, never NaN; the errors get their status codes."""
from __future__ import annotations

import math

import grpc
import numpy as np
import pytest

from dualvec.kernel.bundle import read_bundle
from dualvec.client import Client, ClientError
from dualvec.server.app import ServerConfig, load_engines, start_server
from dualvec.kernel.spaces import Space
from dualvec.kernel.tokenizer import Tokenizer

DOCS = [
    {"id": "fire", "text": "Firefighters battled a bushfire that destroyed homes near the town as winds rose."},
    {"id": "tokens", "tokens": ["police", "said", "the", "man", "was", "arrested", "police"]},
    {"id": "unknown", "text": "zzqxv plonkrr wubbeldy"},
    {"id": "cricket", "text": "Australia won the test match after the batsmen scored on the final day."},
    {"id": "mixed", "text": "The government said qqqzz the minister would meet union leaders."},
]
QUERY = "fire near the town"


@pytest.fixture(scope="module")
def served(lee_bundle):
    cfg = ServerConfig(bundles=(str(lee_bundle),), port=0, checksums=False)
    running = start_server(load_engines(cfg), cfg)
    with Client(running.address) as client:
        yield client, read_bundle(lee_bundle)
    running.stop(grace=1.0)


def numpy_desm(bundle, query_tokens, doc_tokens, qspace: Space, dspace: Space):
    """DESM(Q, D) = 1/|Q| sum_q cos(q_qspace, Dbar), Dbar = mean of the unit dspace vectors of D's known words."""
    index = bundle.vocab.index
    q_ids = [index[t] for t in query_tokens if t in index]
    d_ids = [index[t] for t in doc_tokens if t in index]
    if not d_ids:
        return 0.0, len(q_ids), 0
    q = np.asarray(bundle.vectors[qspace][q_ids], dtype=np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    d = np.asarray(bundle.vectors[dspace][d_ids], dtype=np.float64)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    centroid = d.mean(axis=0)
    centroid /= np.linalg.norm(centroid)
    return float((q @ centroid).mean()), len(q_ids), len(d_ids)


@pytest.mark.parametrize("dspace", [Space.OUT, Space.IN], ids=["in-out", "in-in"])
def test_score_documents_equals_numpy_desm_in_request_order(served, dspace):
    client, bundle = served
    tok = Tokenizer.from_dict(bundle.manifest.tokenizer)
    result = client.score_documents(QUERY, documents=DOCS, document_space=dspace.value)
    assert [s.id for s in result.scores] == [d["id"] for d in DOCS]
    for doc, got in zip(DOCS, result.scores):
        tokens = doc.get("tokens") or tok(doc["text"])
        want, q_found, d_found = numpy_desm(bundle, tok(QUERY), tokens, Space.IN, dspace)
        assert math.isfinite(got.score)
        assert abs(got.score - want) < 1e-3, (doc["id"], got.score, want)
        assert got.query_words_found == q_found and got.document_words_found == d_found, doc["id"]
    unknown = next(s for s in result.scores if s.id == "unknown")
    assert unknown.score == 0.0 and unknown.document_words_found == 0


def test_score_documents_errors_have_their_codes(served):
    client, _ = served
    with pytest.raises(ClientError) as err:
        client.score_documents("zzqxv wubbeldy", documents=DOCS)
    assert err.value.code == grpc.StatusCode.NOT_FOUND and "zzqxv" in err.value.details
    with pytest.raises(ClientError) as err:
        client.score_documents(QUERY, documents=DOCS, bm25_weight=2.0)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "bm25_weight" in err.value.details
    with pytest.raises(ClientError) as err:
        client.score_documents(QUERY, documents=[{"id": str(i), "text": "fire"} for i in range(1001)])
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "documents" in err.value.details
