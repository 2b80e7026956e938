"""DESM scoring (dualvec.kernel.desm) against an independent numpy DESM computed from the gensim model itself."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from gensim.models import Word2Vec
from gensim.test.utils import datapath

from dualvec.kernel.bundle import read_bundle
from dualvec.kernel.errors import InvalidArgument, SpaceUnavailable, UnknownWords
from dualvec.kernel import bm25 as bm25_module
from dualvec.kernel.desm import DesmLimits, DocumentInput, score_documents
from dualvec.kernel.spaces import Space
from dualvec.kernel.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def bundle(lee_bundle):
    return read_bundle(lee_bundle)


@pytest.fixture(scope="module")
def gensim_spaces(lee_model):
    """(key_to_index, {IN: unit rows, OUT: unit rows}) straight from the gensim model, float64."""
    model = Word2Vec.load(str(lee_model))
    spaces = {}
    for space, matrix in ((Space.IN, model.wv.vectors), (Space.OUT, model.syn1neg)):
        m = np.asarray(matrix, dtype=np.float64)
        spaces[space] = m / np.linalg.norm(m, axis=1, keepdims=True)
    return dict(model.wv.key_to_index), spaces


@pytest.fixture(scope="module")
def lee_documents(bundle):
    tokenizer = Tokenizer.from_dict(bundle.manifest.tokenizer)
    lines = Path(datapath("lee.cor")).read_text(encoding="utf-8", errors="replace").splitlines()
    docs = [DocumentInput(f"lee-{i}", tuple(tokenizer(line))) for i, line in enumerate(lines[:25])]
    # unknown words mixed in, a repeated word, a document of unknown words only, an empty one
    docs.insert(3, DocumentInput("mixed", ("qqxyzzy", "cricket", "cricket", "australia", "zzwwq")))
    docs.insert(7, DocumentInput("unknown-only", ("qqxyzzy", "zzwwq")))
    docs.append(DocumentInput("empty", ()))
    return docs


def numpy_desm(key_to_index, spaces, query, doc, query_space, doc_space):
    """DESM written out from the paper's definition, one word at a time."""
    q_rows = [spaces[query_space][key_to_index[t]] for t in query if t in key_to_index]
    d_rows = [spaces[doc_space][key_to_index[t]] for t in doc if t in key_to_index]
    if not d_rows:
        return 0.0
    dbar = np.mean(d_rows, axis=0)
    return float(np.mean([q @ dbar / (np.linalg.norm(q) * np.linalg.norm(dbar)) for q in q_rows]))


def numpy_bm25(query, docs, n_docs=None, df_table=None, k1=1.2, b=0.75):
    avgdl = np.mean([len(d) for d in docs])
    out = []
    for doc in docs:
        s = 0.0
        for term in query:
            tf = doc.count(term)
            if df_table is None:
                df, n = sum(term in d for d in docs), len(docs)
            else:
                df, n = df_table.get(term, 0), n_docs
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            s += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(doc) / avgdl))
        out.append(s)
    return np.array(out)


QUERY = ("australian", "cricket", "team", "cricket", "qqnotaword")


@pytest.mark.parametrize("query_space,doc_space", [(Space.IN, Space.OUT), (Space.IN, Space.IN)])
def test_scores_equal_numpy_desm_in_request_order(bundle, gensim_spaces, lee_documents, query_space, doc_space):
    key_to_index, spaces = gensim_spaces
    results, _ = score_documents(bundle, QUERY, lee_documents, query_space=query_space, document_space=doc_space)
    assert [r.id for r in results] == [d.id for d in lee_documents]
    for r, doc in zip(results, lee_documents):
        expected = numpy_desm(key_to_index, spaces, QUERY, doc.tokens, query_space, doc_space)
        assert r.desm == pytest.approx(expected, abs=1e-5)
        assert r.score == pytest.approx(expected, abs=1e-5)  # bm25_weight 0: score is DESM
        assert r.query_words_found == 4  # the repeated "cricket" counts twice, the unknown word not at all
        assert r.document_words_found == sum(t in key_to_index for t in doc.tokens)


def test_in_out_and_in_in_differ(bundle, lee_documents):
    io, _ = score_documents(bundle, QUERY, lee_documents)
    ii, _ = score_documents(bundle, QUERY, lee_documents, document_space="in")
    assert not np.allclose([r.desm for r in io], [r.desm for r in ii])


def test_document_of_unknown_words_scores_zero_not_nan(bundle, lee_documents):
    results, _ = score_documents(bundle, QUERY, lee_documents, bm25_weight=0.5)
    by_id = {r.id: r for r in results}
    for doc_id in ("unknown-only", "empty"):
        r = by_id[doc_id]
        assert (r.score, r.desm, r.document_words_found) == (0.0, 0.0, 0)
    assert by_id["mixed"].document_words_found == 3
    assert all(math.isfinite(v) for r in results for v in (r.score, r.desm, r.bm25))


def test_query_without_known_words_raises_unknown_words_naming_them(bundle, lee_documents):
    with pytest.raises(UnknownWords) as info:
        score_documents(bundle, ["qqnotaword", "zzalsonot", "qqnotaword"], lee_documents)
    assert info.value.words == ["qqnotaword", "zzalsonot"]
    assert "qqnotaword" in str(info.value) and "zzalsonot" in str(info.value)


def test_empty_query_is_invalid(bundle, lee_documents):
    with pytest.raises(InvalidArgument) as info:
        score_documents(bundle, [], lee_documents)
    assert info.value.field == "query_tokens"


def test_no_documents_gives_empty_list(bundle):
    assert score_documents(bundle, QUERY, []) == ([], "corpus")


@pytest.mark.parametrize("limits,field,limit_name", [
    (DesmLimits(max_documents=5), "documents", "--max-documents"),
    (DesmLimits(max_query_tokens=3), "query_tokens", "--max-query-tokens"),
    (DesmLimits(max_document_tokens=40), "documents[0].tokens", "--max-document-tokens"),
])
def test_limits_raise_invalid_argument_naming_field(bundle, lee_documents, limits, field, limit_name):
    with pytest.raises(InvalidArgument) as info:
        score_documents(bundle, QUERY, lee_documents, limits=limits)
    assert info.value.field == field
    assert limit_name in str(info.value)


@pytest.mark.parametrize("weight", [-0.1, 1.5, float("nan"), float("inf"), "0.5"])
def test_bm25_weight_outside_unit_interval_is_invalid(bundle, lee_documents, weight):
    with pytest.raises(InvalidArgument) as info:
        score_documents(bundle, QUERY, lee_documents, bm25_weight=weight)
    assert info.value.field == "bm25_weight"


def test_missing_space_raises_space_unavailable(bundle, lee_documents):
    in_only = dataclasses.replace(bundle, vectors={Space.IN: bundle.vectors[Space.IN]})
    with pytest.raises(SpaceUnavailable, match="OUT"):
        score_documents(in_only, QUERY, lee_documents)
    results, _ = score_documents(in_only, QUERY, lee_documents, document_space=Space.IN)
    assert len(results) == len(lee_documents)


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_bm25_mixing_with_corpus_document_frequencies(bundle, lee_documents, weight):
    assert bundle.docfreq is not None  # `dualvec train` recorded them
    results, source = score_documents(bundle, QUERY, lee_documents, bm25_weight=weight)
    assert source == "corpus"
    raw = numpy_bm25(list(QUERY), [list(d.tokens) for d in lee_documents], *bundle.docfreq)
    expected_bm25 = raw / raw.max()
    np.testing.assert_allclose([r.bm25 for r in results], expected_bm25, atol=1e-9)
    for r in results:
        mixed = (1 - weight) * r.desm + weight * r.bm25
        assert r.score == pytest.approx(mixed if r.document_words_found else 0.0, abs=1e-12)
    assert max(r.bm25 for r in results) == pytest.approx(1.0)


def test_bm25_falls_back_to_request_document_frequencies(bundle, lee_documents):
    no_df = dataclasses.replace(bundle, docfreq=None)
    results, source = score_documents(no_df, QUERY, lee_documents, bm25_weight=0.5)
    assert source == "request"
    raw = numpy_bm25(list(QUERY), [list(d.tokens) for d in lee_documents])
    np.testing.assert_allclose([r.bm25 for r in results], raw / raw.max(), atol=1e-9)


def test_bm25_of_documents_without_query_terms_is_zero():
    scores, source = bm25_module.bm25_scores(["a", "b"], [["c", "d"], [], ["a", "a", "c"]])
    assert source == "request"
    assert scores[0] == 0.0 and scores[1] == 0.0 and scores[2] > 0
    assert np.all(bm25_module.normalize_by_max(np.zeros(3)) == 0)


def test_many_documents_scored_in_one_vectorized_pass(bundle, gensim_spaces):
    """300 documents of the training corpus, each compared with the word-by-word definition."""
    key_to_index, spaces = gensim_spaces
    tokenizer = Tokenizer.from_dict(bundle.manifest.tokenizer)
    lines = Path(datapath("lee_background.cor")).read_text(encoding="utf-8", errors="replace").splitlines()
    docs = [DocumentInput(str(i), tuple(tokenizer(line))) for i, line in enumerate(lines)]
    query = tokenizer("Palestinian security forces in the West Bank")
    results, _ = score_documents(bundle, query, docs)
    expected = [numpy_desm(key_to_index, spaces, query, d.tokens, Space.IN, Space.OUT) for d in docs]
    np.testing.assert_allclose([r.desm for r in results], expected, atol=1e-5)
