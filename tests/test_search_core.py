"""The search core (dualvec.kernel.search) on its own, no gRPC: exact answers equal a numpy brute force computed
from the gensim model itself on all four space pairs, gensim `most_similar` semantics (query words left out,
restrict_vocab, negative words, vectors), and the IVF bundle's tuned search against exact and against gensim.

The helpers at the top (Reference, assert_neighbors, assert_same_ranking, recall_at) are imported by the gRPC
test modules too: ties are compared by score, ids only where the score has no near-equal neighbour.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import pytest
from gensim.models import Word2Vec

from dualvec.kernel.bundle import read_bundle
from dualvec.kernel.errors import InvalidArgument, SpaceUnavailable, UnknownWords
from dualvec.indexer.build import BuildConfig, build_bundle
from dualvec.indexer.model_readers import read_model
from dualvec.kernel.search import Limits, SearchEngine, SearchQuery
from dualvec.kernel.spaces import ALL_PAIRS, Space, pair_name

TOL = 1e-5
PAIR_IDS = [pair_name(q, t) for q, t in ALL_PAIRS]

# analogies on words of the Lee corpus (king - man + woman, and frequent news words), with a negative-only query
ANALOGIES: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
    (("king", "woman"), ("man",)),
    (("sydney", "israel"), ("australia",)),
    (("arafat", "israeli"), ("palestinian",)),
    (("president", "she"), ("he",)),
    (("police", "government"), ()),
    (("taliban",), ()),
    ((), ("afghanistan",)),
]


# ---------------------------------------------------------------------------------------------------- reference

class Reference:
    """gensim `most_similar` written out in numpy (float64) over both spaces of the gensim model itself."""

    def __init__(self, model: Word2Vec):
        self.model = model
        self.words: list[str] = list(model.wv.index_to_key)
        self.index: dict[str, int] = dict(model.wv.key_to_index)
        self.raw = {Space.IN: np.asarray(model.wv.vectors, dtype=np.float64),
                    Space.OUT: np.asarray(model.syn1neg, dtype=np.float64)}
        self.unit = {s: m / np.linalg.norm(m, axis=1, keepdims=True) for s, m in self.raw.items()}
        self.n = len(self.words)

    def query_vector(self, positive: Sequence[str] = (), negative: Sequence[str] = (),
                     space: Space = Space.IN, vector=None) -> np.ndarray:
        if vector is not None:
            v = np.asarray(vector, dtype=np.float64)
        else:
            rows = [self.unit[space][self.index[w]] for w in positive] + \
                   [-self.unit[space][self.index[w]] for w in negative]
            v = np.mean(rows, axis=0)
        return v / np.linalg.norm(v)

    def scores(self, positive: Sequence[str] = (), negative: Sequence[str] = (), query_space: Space = Space.IN,
               target_space: Space = Space.IN, *, vector=None, include_query_words: bool = False,
               restrict_vocab: int = 0) -> np.ndarray:
        """(n,) cosines to every word of the target space; -inf where the word may not be returned."""
        full = self.unit[target_space] @ self.query_vector(positive, negative, query_space, vector)
        if vector is None and not include_query_words:
            full[[self.index[w] for w in (*positive, *negative)]] = -np.inf
        if restrict_vocab:
            full[restrict_vocab:] = -np.inf
        return full


@functools.lru_cache(maxsize=None)
def reference_of(model_path: str) -> Reference:
    return Reference(Word2Vec.load(model_path))


def assert_neighbors(got, full: np.ndarray, k: int, words: list[str] | None = None, tol: float = TOL) -> None:
    """``got`` (objects with word, id, score) is the exact top-k of ``full``: same length, each score the word's
    true cosine, the same score at every rank, and the same id at every rank whose score is not tied (within
    2 * tol) with the next or previous one."""
    order = np.argsort(-full, kind="stable")
    valid = int(np.isfinite(full).sum())
    kk = min(k, valid)
    ids = [int(n.id) for n in got]
    scores = np.array([n.score for n in got], dtype=np.float64)
    assert len(got) == kk, f"{len(got)} neighbours, expected {kk}"
    assert len(set(ids)) == kk, f"duplicate ids in {ids}"
    assert np.isfinite(full[ids]).all(), f"an excluded or restricted word was returned: {ids}"
    np.testing.assert_allclose(scores, full[ids], atol=tol, err_msg="a score is not the word's cosine")
    ref = full[order[:kk]]
    np.testing.assert_allclose(scores, ref, atol=tol, err_msg="scores differ from the exact top-k")
    after = full[order[kk]] if kk < valid else -np.inf
    for j in range(kk):
        around = [ref[j - 1] if j > 0 else np.inf, ref[j + 1] if j + 1 < kk else after]
        if all(abs(ref[j] - a) > 2 * tol for a in around):
            assert ids[j] == order[j], f"rank {j}: id {ids[j]}, expected {order[j]} (score {ref[j]:.6f})"
    if words is not None:
        assert [n.word for n in got] == [words[i] for i in ids]


def assert_same_ranking(got: Sequence[tuple[str, float]], expected: Sequence[tuple[str, float]],
                        tol: float = TOL) -> None:
    """``got`` (word, score) pairs equal ``expected`` (which may hold one more pair, used to spot a tie at the
    last rank): scores at every rank, words wherever the score is not tied with a neighbour's."""
    k = len(got)
    assert len(expected) in (k, k + 1), (len(got), len(expected))
    g = np.array([s for _, s in got], dtype=np.float64)
    e = np.array([s for _, s in expected], dtype=np.float64)
    np.testing.assert_allclose(g, e[:k], atol=tol)
    for j in range(k):
        around = [e[j - 1] if j > 0 else np.inf, e[j + 1] if j + 1 < len(e) else -np.inf]
        if all(abs(e[j] - a) > 2 * tol for a in around):
            assert got[j][0] == expected[j][0], f"rank {j}: {got[j][0]!r}, expected {expected[j][0]!r}"
    assert len({w for w, _ in got}) == k, "a word is returned twice"


def recall_at(got_ids: Sequence[int], full: np.ndarray, k: int = 10) -> float:
    """ann-benchmarks recall: a returned id is right when its exact score reaches the k-th best less 1e-4."""
    threshold = np.sort(full[np.isfinite(full)])[::-1][k - 1] - 1e-4
    return sum(1 for i in got_ids[:k] if full[i] >= threshold) / k


# ------------------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def ref(lee_model) -> Reference:
    return reference_of(str(lee_model))


@pytest.fixture(scope="module")
def engine(lee_bundle) -> SearchEngine:
    return SearchEngine(read_bundle(lee_bundle), Limits(max_k=100, max_batch=256))


@pytest.fixture(scope="module")
def ivf_engine(lee_ivf_bundle) -> SearchEngine:
    return SearchEngine(read_bundle(lee_ivf_bundle))


@pytest.fixture(scope="module")
def in_only_engine(lee_model, tmp_path_factory) -> SearchEngine:
    path = tmp_path_factory.mktemp("core") / "lee-in-only.bundle"
    build_bundle(read_model(lee_model, in_only=True), path, BuildConfig(index="flat", in_only=True, quiet=True))
    return SearchEngine(read_bundle(path))


def query_words(ref: Reference) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """Single words from the most frequent to the rarest, plus the analogies."""
    singles = [((ref.words[i],), ()) for i in (0, 3, 17, 50, 101, 250, 600, 1434, 2500, ref.n - 1)]
    return singles + ANALOGIES


# --------------------------------------------------------------------------------------------------------- tests

def test_bundle_rows_follow_gensim_vocabulary_order(engine, ref):
    assert engine.bundle.vocab.words == ref.words
    counts = [ref.model.wv.get_vecattr(w, "count") for w in ref.words]
    assert engine.bundle.vocab.counts.tolist() == counts
    for pos, neg in ANALOGIES:
        for w in (*pos, *neg):
            assert w in ref.index, f"{w!r} is not in the Lee vocabulary: pick another test word"


@pytest.mark.parametrize("query_space,target_space", ALL_PAIRS, ids=PAIR_IDS)
def test_exact_search_equals_numpy_brute_force(engine, ref, query_space, target_space):
    for (pos, neg), k in zip(query_words(ref), [1, 10, 37, 10, 5, 10, 25, 10, 10, 3, 10, 10, 10, 10, 10, 10, 10]):
        got = engine.search(SearchQuery(pos, neg, query_space=query_space, target_space=target_space, k=k,
                                        exact=True))
        assert_neighbors(got, ref.scores(pos, neg, query_space, target_space), k, ref.words)


@pytest.mark.parametrize("query_space,target_space", ALL_PAIRS, ids=PAIR_IDS)
def test_query_words_left_out_unless_include_query_words(engine, ref, query_space, target_space):
    pos, neg = ("king", "woman"), ("man",)
    qids = {ref.index[w] for w in (*pos, *neg)}
    left_out = engine.search(SearchQuery(pos, neg, query_space=query_space, target_space=target_space, k=50,
                                         exact=True))
    assert not qids & {n.id for n in left_out}
    kept = engine.search(SearchQuery(pos, neg, query_space=query_space, target_space=target_space, k=50,
                                     exact=True, include_query_words=True))
    assert_neighbors(kept, ref.scores(pos, neg, query_space, target_space, include_query_words=True), 50)
    if query_space == target_space:  # a word is its own nearest neighbour in its own space
        single = engine.search(SearchQuery(("police",), query_space=query_space, target_space=target_space, k=3,
                                           exact=True, include_query_words=True))
        assert single[0].word == "police" and single[0].score == pytest.approx(1.0, abs=TOL)


@pytest.mark.parametrize("restrict", [1, 7, 100, 4000, 10 ** 6])
@pytest.mark.parametrize("query_space,target_space", ALL_PAIRS, ids=PAIR_IDS)
def test_restrict_vocab_limits_ids_to_the_n_most_frequent(engine, ivf_engine, ref, query_space, target_space,
                                                          restrict):
    pos, neg = ("sydney", "israel"), ("australia",)
    full = ref.scores(pos, neg, query_space, target_space, restrict_vocab=min(restrict, ref.n))
    for eng, exact in ((engine, True), (ivf_engine, False), (ivf_engine, True)):
        got = eng.search(SearchQuery(pos, neg, query_space=query_space, target_space=target_space, k=10,
                                     restrict_vocab=restrict, exact=exact))
        assert all(n.id < restrict for n in got)
        if exact or restrict <= 100:  # small restrictions are scanned exactly by the IVF bundle too
            assert_neighbors(got, full, 10, ref.words)


@pytest.mark.parametrize("query_space,target_space", ALL_PAIRS, ids=PAIR_IDS)
def test_vector_query_equals_numpy_and_keeps_every_word(engine, ref, query_space, target_space):
    for word in ("police", "king", ref.words[3000]):
        raw = ref.raw[query_space][ref.index[word]]
        for scale in (1.0, 1e-30, 1e30):  # only the direction counts, however large or small the values
            got = engine.search(SearchQuery(vector=tuple((raw * scale).tolist()), target_space=target_space, k=10,
                                            exact=True))
            assert_neighbors(got, ref.scores(target_space=target_space, vector=raw), 10, ref.words)
        if query_space == target_space:
            assert got[0].word == word  # a vector query leaves nothing out


@pytest.mark.parametrize("query_space,target_space", ALL_PAIRS, ids=PAIR_IDS)
def test_negative_words_are_subtracted(engine, ref, query_space, target_space):
    for pos, neg in ((("government",), ("minister", "police")), ((), ("australia",)), (("us",), ("bush",))):
        got = engine.search(SearchQuery(pos, neg, query_space=query_space, target_space=target_space, k=15,
                                        exact=True))
        assert_neighbors(got, ref.scores(pos, neg, query_space, target_space), 15, ref.words)


@pytest.mark.parametrize("restrict", [0, 500])
def test_analogy_equals_gensim_most_similar(engine, ref, restrict):
    for pos, neg in ANALOGIES:
        expected = ref.model.wv.most_similar(positive=list(pos), negative=list(neg), topn=11,
                                             restrict_vocab=restrict or None)
        got = engine.search(SearchQuery(pos, neg, k=10, restrict_vocab=restrict, exact=True))
        assert_same_ranking([(n.word, n.score) for n in got], expected)


def test_king_minus_man_plus_woman_equals_gensim(engine, ref):
    expected = ref.model.wv.most_similar(positive=["king", "woman"], negative=["man"], topn=11)
    got = engine.search(SearchQuery(("king", "woman"), ("man",), k=10, exact=True))
    assert_same_ranking([(n.word, n.score) for n in got], expected)


def test_ivf_in_in_matches_gensim_most_similar_at_recall_0_9(ivf_engine, ref):
    rng = np.random.default_rng(7)
    queries = [((ref.words[i],), ()) for i in rng.choice(ref.n, 150, replace=False)] + ANALOGIES
    recalls = []
    for pos, neg in queries:
        got = ivf_engine.search(SearchQuery(pos, neg, k=10))
        full = ref.scores(pos, neg)
        np.testing.assert_allclose([n.score for n in got], full[[n.id for n in got]], atol=TOL)
        expected = ref.model.wv.most_similar(positive=list(pos), negative=list(neg), topn=10)
        threshold = expected[-1][1] - 1e-4
        recalls.append(sum(1 for n in got if full[n.id] >= threshold) / 10)
    assert np.mean(recalls) >= 0.9, f"IVF IN->IN recall@10 against gensim {np.mean(recalls):.3f}"


@pytest.mark.parametrize("query_space,target_space", ALL_PAIRS, ids=PAIR_IDS)
def test_ivf_tuned_search_recall_at_least_0_9_on_every_pair(ivf_engine, ref, query_space, target_space):
    rng = np.random.default_rng(11)
    counts = ivf_engine.bundle.vocab.counts.astype(np.float64)
    uniform = rng.choice(ref.n, 150, replace=False)
    by_frequency = rng.choice(ref.n, 150, replace=False, p=counts / counts.sum())
    for name, ids in (("uniform", uniform), ("frequency", by_frequency)):
        recalls = []
        for i in ids:
            word = ref.words[i]
            got = ivf_engine.search(SearchQuery((word,), query_space=query_space, target_space=target_space))
            full = ref.scores((word,), (), query_space, target_space)
            np.testing.assert_allclose([n.score for n in got], full[[n.id for n in got]], atol=TOL)
            recalls.append(recall_at([n.id for n in got], full))
        assert np.mean(recalls) >= 0.9, f"{pair_name(query_space, target_space)} {name}: {np.mean(recalls):.3f}"


@pytest.mark.parametrize("query_space,target_space", ALL_PAIRS, ids=PAIR_IDS)
def test_ivf_returns_k_neighbours_even_when_the_lists_visited_hold_fewer(ivf_engine, ref, query_space,
                                                                          target_space):
    # the Lee IVF lists are unbalanced (some hold 2 rows): a tuned nprobe of 8 can visit fewer than k rows
    for word in ref.words[::301]:
        for k in (50, 100):
            got = ivf_engine.search(SearchQuery((word,), query_space=query_space, target_space=target_space, k=k))
            full = ref.scores((word,), (), query_space, target_space)
            assert len(got) == k
            scores = [n.score for n in got]
            assert scores == sorted(scores, reverse=True)
            np.testing.assert_allclose(scores, full[[n.id for n in got]], atol=TOL)


def test_search_many_answers_each_query_as_search_does(engine, ivf_engine, ref):
    rng = np.random.default_rng(5)
    queries = []
    for j in range(64):  # enough alike queries that FAISS takes its batched (BLAS) path
        q, t = ALL_PAIRS[j % 4]
        queries.append(SearchQuery((ref.words[int(rng.integers(ref.n))],), query_space=q, target_space=t,
                                   k=int(rng.integers(1, 30)), exact=bool(j % 3), restrict_vocab=(0, 0, 300)[j % 3]))
    for eng in (engine, ivf_engine):
        together = eng.search_many(queries)
        for q, got in zip(queries, together):
            alone = [(n.word, n.score) for n in eng.search(q)]
            # the same scores at every rank; the words wherever a score is not tied. The last rank's word is left
            # to its score (as if the list went on with a tie): a tie there with a word just outside the list is
            # invisible, and asking for one more would change the query (its approximate search, its fallback)
            assert_same_ranking([(n.word, n.score) for n in got], alone + alone[-1:], tol=1e-6)


# -------------------------------------------------------------------------------------------------------- errors

def test_unknown_words_names_every_missing_word(engine):
    with pytest.raises(UnknownWords) as err:
        engine.search(SearchQuery(("king", "qqxyzzy"), ("zzwwq", "man", "qqxyzzy")))
    assert err.value.words == ["qqxyzzy", "zzwwq"]
    assert "qqxyzzy" in str(err.value) and "zzwwq" in str(err.value)


@pytest.mark.parametrize("query,field,words", [
    (SearchQuery(("king",), k=101), "k", ["101", "100"]),
    (SearchQuery(vector=(1.0,) * 47), "vector", ["47", "48"]),
    (SearchQuery(vector=(float("nan"),) + (1.0,) * 47), "vector", ["NaN"]),
    (SearchQuery(vector=(float("inf"),) + (1.0,) * 47), "vector", ["infinite"]),
    (SearchQuery(vector=(0.0,) * 48), "vector", ["zero"]),
    (SearchQuery(), "positive", ["empty"]),
    (SearchQuery(("king",), vector=(1.0,) * 48), "vector", ["not both"]),
    (SearchQuery(("king",), ("king",)), "negative", ["cancel"]),
], ids=["k", "vector-length", "vector-nan", "vector-inf", "vector-zero", "empty", "words-and-vector", "cancel"])
def test_bad_query_raises_invalid_argument_naming_the_field(engine, query, field, words):
    with pytest.raises(InvalidArgument) as err:
        engine.search(query)
    assert err.value.field == field
    for w in words:
        assert w in str(err.value)


def test_batch_error_names_the_request(engine):
    with pytest.raises(InvalidArgument, match=r"requests\[1\]\.k"):
        engine.search_many([SearchQuery(("king",)), SearchQuery(("king",), k=1000)])
    with pytest.raises(InvalidArgument, match="257 requests.*256"):
        engine.search_many([SearchQuery(("king",))] * 257)


def test_out_of_an_in_only_bundle_is_space_unavailable(in_only_engine, ref):
    with pytest.raises(SpaceUnavailable, match="OUT"):
        in_only_engine.search(SearchQuery(("king",), target_space=Space.OUT))
    with pytest.raises(SpaceUnavailable, match="OUT"):
        in_only_engine.get_vectors(["king"], Space.OUT)
    with pytest.raises(SpaceUnavailable, match=r"pairs\[1\]\.b\.space"):
        in_only_engine.similarity([(("king", Space.IN), ("man", Space.IN)), (("king", Space.IN), ("man", Space.OUT))])
    got = in_only_engine.search(SearchQuery(("king",), exact=True))
    assert_neighbors(got, ref.scores(("king",)), 10, ref.words)
