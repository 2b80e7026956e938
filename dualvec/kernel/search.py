"""The search core: gensim ``most_similar`` semantics across the four space pairs, in plain Python + FAISS.

Knows nothing of gRPC. Validates every query (raising dualvec.kernel.errors exceptions that name the field, the word
or the limit), turns words into one normalized query vector, searches the target space's index with the pair's
tuned parameters (or exactly), and leaves the query words out of the results unless asked.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from dualvec.kernel.answer_table import AnswerTable
from dualvec.kernel.bundle import Bundle
from dualvec.kernel.errors import InvalidArgument, SpaceUnavailable, UnknownWords
from dualvec.kernel.results import Neighbor, WordVector
from dualvec.kernel.spaces import Space, pair_name
from dualvec.kernel.tokenizer import Tokenizer


@dataclass(frozen=True)
class Limits:
    """Server limits, fixed at start: each size of a search request that a client controls. Past one, the request is
    refused with InvalidArgument naming the field, the limit and the `dualvec serve` flag that sets it. (The size
    of a whole message is gRPC's limit: ServerConfig.max_message_bytes.)"""

    max_k: int = 1000
    max_batch: int = 1024
    max_words: int = 1000  # query words per request, and words per GetVectors / pairs per Similarity
    max_word_bytes: int = 1000  # UTF-8 bytes of one word a request names (no vocabulary needs longer)
    # Neighbours one BatchSearch may ask for in all (the sum of its k), so that every answer within the limits can
    # be received by a gRPC client left at its default 4 MiB receive limit. A neighbour takes at most 15 + w bytes
    # of a BatchSearchResponse (w: its word in UTF-8 bytes): the word 2 + w, the id 6 (tag, varint of up to 5), the
    # score 5 (tag, fixed32), the Neighbor's own tag and length 2; each query's SearchResponse adds at most 4 (tag,
    # length). 1,024 queries x k 1,000 asked 1,024,000 neighbours: 19 MB on a vocabulary averaging w = 4, which no
    # default client could receive. With 100,000: 4 x 1,024 + 100,000 x (15 + w) <= 4,194,304 while the
    # neighbours' words average up to 26 bytes (word2vec vocabularies average under 10), and the answer stays under
    # the server's 64 MiB send limit up to w = 650. Raise it only for clients that raise their receive limit
    # (dualvec.Client receives up to the server's send limit).
    max_results: int = 100_000

    def check_batch(self, n: int, field_name: str, ks: Iterable[int] = ()) -> None:
        """Refuse a batch of n queries (InvalidArgument naming the field) that is empty, over max_batch, or whose
        k (``ks``; 0 stands for 10) ask for more than max_results neighbours in all. A k above max_k counts as
        max_k here: prepare() refuses it, naming its query."""
        if n == 0:
            raise InvalidArgument(field_name, "empty batch: give at least one request")
        if n > self.max_batch:
            raise InvalidArgument(field_name, f"{n} requests, above this server's limit of {self.max_batch:,} "
                                              f"(--max-batch)")
        total = sum(min(k or DEFAULT_K, self.max_k) for k in ks)
        if total > self.max_results:
            raise InvalidArgument(field_name, f"{n} requests ask for {total:,} neighbours in all (the sum of "
                                              f"their k), above this server's limit of {self.max_results:,} "
                                              f"(--max-results), which keeps every answer within a gRPC client's "
                                              f"default 4 MiB message size: split the batch or ask a smaller k")

    def check_word(self, word: str, field_name: str) -> None:
        """Refuse a word longer than max_word_bytes in UTF-8 (InvalidArgument naming the field, not echoing it)."""
        if len(word) * 4 > self.max_word_bytes:  # a character takes at most 4 bytes: most words stop here
            size = len(word.encode("utf-8", "surrogatepass"))
            if size > self.max_word_bytes:
                raise InvalidArgument(field_name, f"a word of {size:,} bytes, above this server's limit of "
                                                  f"{self.max_word_bytes:,} bytes (--max-word-bytes)")

    def check_words(self, words: Sequence[str], field_name: str) -> None:
        """check_word for each of ``words``, the field named with the word's position (``positive[3]``)."""
        for i, word in enumerate(words):
            if len(word) * 4 > self.max_word_bytes:
                self.check_word(word, f"{field_name}[{i}]")


DEFAULT_K = 10  # the k of a request that gives none (0)


@dataclass(frozen=True)
class SearchQuery:
    """One top-k query. ``vector`` is an optional raw (d,) query vector instead of words."""

    positive: tuple[str, ...] = ()
    negative: tuple[str, ...] = ()
    vector: tuple[float, ...] | np.ndarray | None = None
    query_space: Space = Space.IN
    target_space: Space = Space.IN
    k: int = 10
    include_query_words: bool = False
    restrict_vocab: int = 0
    exact: bool = False


@dataclass
class PreparedQuery:
    """A validated query: its (d,) float32 unit vector and what to search."""

    vector: np.ndarray
    target: Space
    pair: str
    k: int
    exclude: frozenset[int]
    limit: int | None
    exact: bool
    word: int | None = None  # the vocabulary row of a one-word query (its vector is that row's unit_rows)

    @property
    def fetch(self) -> int:
        return self.k + len(self.exclude)


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """(m, d) float32 rows scaled to unit length: the query vector of a one-word query, computed alike for one
    row (the engine) and for many (the build's answer tables), so that both search the very same vector."""
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.sqrt(np.add.reduce(rows * rows, axis=1))  # the same pairwise sum per row, however many rows
    return rows / norms[:, None]


def fetch_rows(needed: int) -> int:
    """Rows asked of the index for a query that needs ``needed`` (k plus the words it leaves out): the next power
    of two, at least 16. An approximate search's answer depends on the rows asked (efSearch is at least that many,
    and rows x rerank candidates are re-scored), so a query is always searched at its own bucket, alone or in a
    batch, and its answer never depends on the queries it shares a FAISS call with; queries of one bucket share
    calls. A k=10 query asks 16 rows instead of 11: a few more rows re-scored, recall no lower."""
    return max(16, 1 << (max(1, needed) - 1).bit_length())


@dataclass
class SearchEngine:
    """Answers queries on one bundle. Thread-safe (nothing is mutated after construction)."""

    bundle: Bundle
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        self.tokenizer = Tokenizer.from_dict(self.bundle.manifest.tokenizer)  # the bundle's, for documents
        # gather each pair's tuned hub rows once, so that no request pays for it
        for pname, tuning in self.bundle.pairs.items():
            target = Space(pname.split("-")[1])
            for params in (tuning.params, tuning.tail_params):
                if params is not None and params.hubs and target in self.bundle.spaces:
                    self.bundle.spaces[target].hubs.warm(pname, params.hubs)

    # ------------------------------------------------------------------------------------------------ validation
    def require_space(self, space: Space, field_name: str) -> None:
        if not self.bundle.has_space(space):
            raise SpaceUnavailable(f"{field_name}: this bundle has no {space.value.upper()} space (it was built "
                                   f"with --in-only from a model without an output matrix)")

    def word_ids(self, words: Sequence[str], space: Space) -> list[int]:
        """Vocabulary rows of words; raises UnknownWords naming every missing one."""
        index = self.bundle.vocab.index
        ids = [index.get(w) for w in words]
        missing = [w for w, i in zip(words, ids) if i is None]
        if missing:
            raise UnknownWords(list(dict.fromkeys(missing)), space.value)
        return ids  # type: ignore[return-value]

    def prepare(self, q: SearchQuery, field_prefix: str = "") -> PreparedQuery:
        """Validate a query and build its unit vector."""
        f = field_prefix
        self.require_space(q.query_space, f + "query_space")
        self.require_space(q.target_space, f + "target_space")
        k = q.k or DEFAULT_K
        if k < 0:
            raise InvalidArgument(f + "k", f"must be positive, got {k}")
        if k > self.limits.max_k:
            raise InvalidArgument(f + "k", f"{k} is above this server's limit of {self.limits.max_k:,} (--max-k)")
        if q.restrict_vocab < 0:
            raise InvalidArgument(f + "restrict_vocab", f"must be >= 0, got {q.restrict_vocab}")
        has_vector = q.vector is not None and len(q.vector) > 0
        has_words = bool(q.positive or q.negative)
        if has_vector and has_words:
            raise InvalidArgument(f + "vector", "give either query words (positive/negative) or a vector, not both")
        if not has_vector and not has_words:
            raise InvalidArgument(f + "positive", "empty query: give at least one positive or negative word, "
                                  "or a vector")
        if len(q.positive) + len(q.negative) > self.limits.max_words:
            raise InvalidArgument(f + "positive", f"{len(q.positive) + len(q.negative)} query words, above this "
                                  f"server's limit of {self.limits.max_words:,} (--max-words)")
        self.limits.check_words(q.positive, f + "positive")
        self.limits.check_words(q.negative, f + "negative")
        dim = self.bundle.dim
        exclude: frozenset[int] = frozenset()
        word: int | None = None
        if has_vector:
            vec = np.asarray(q.vector, dtype=np.float32)
            if vec.ndim != 1 or vec.shape[0] != dim:
                raise InvalidArgument(f + "vector", f"has {vec.size} values; this model's dimension is {dim}")
            if not np.isfinite(vec).all():
                raise InvalidArgument(f + "vector", "contains NaN or infinite values")
            vec64 = vec.astype(np.float64)  # float32 squares overflow (|x| > ~1e19) or vanish (|x| < ~1e-19)
            norm = float(np.linalg.norm(vec64))
            if not norm > 0:
                raise InvalidArgument(f + "vector", "is all zeros: it has no direction to search")
            unit = vec64 / norm
        elif len(q.positive) == 1 and not q.negative:  # the common case: one word, its (unit) row
            i = self.word_ids(q.positive, q.query_space)[0]
            word = i
            unit = unit_rows(self.bundle.vectors[q.query_space][i:i + 1])[0]
            if not q.include_query_words:
                exclude = frozenset((i,))
        else:
            ids = self.word_ids([*q.positive, *q.negative], q.query_space)  # names every missing word
            pos, neg = ids[:len(q.positive)], ids[len(q.positive):]
            rows = np.asarray(self.bundle.vectors[q.query_space][pos + neg], dtype=np.float32)
            weights = np.concatenate([np.ones(len(pos), np.float32), -np.ones(len(neg), np.float32)])
            mean = (rows * weights[:, None]).mean(axis=0)
            norm = float(np.linalg.norm(mean))
            if not norm > 1e-12:
                raise InvalidArgument(f + "negative", "the query words cancel out: their mean vector is zero")
            unit = mean / norm
            if not q.include_query_words:
                exclude = frozenset(pos + neg)
        n = self.bundle.vocab_size
        limit = q.restrict_vocab if 0 < q.restrict_vocab < n else None
        return PreparedQuery(np.ascontiguousarray(unit, dtype=np.float32), q.target_space,
                             pair_name(q.query_space, q.target_space), min(k, n), exclude, limit, q.exact, word)

    # ---------------------------------------------------------------------------------------------------- search
    def search(self, q: SearchQuery) -> list[Neighbor]:
        """Top-k neighbours of one query, best first."""
        return self.search_prepared([self.prepare(q)])[0]

    def search_many(self, queries: Sequence[SearchQuery], field_name: str = "requests") -> list[list[Neighbor]]:
        """Each query answered as search() would, in order; validated first (the first bad one raises with its
        position in the field name), then searched with one FAISS call per group of alike queries."""
        self.limits.check_batch(len(queries), field_name, [q.k for q in queries])
        prepared = [self.prepare(q, f"{field_name}[{i}].") for i, q in enumerate(queries)]
        return self.search_prepared(prepared)

    def answer_table(self, p: PreparedQuery) -> AnswerTable | None:
        """The pair's answer table when it answers this query (a covered word, the table's rows asked, no
        vocabulary prefix, not exact), else None: the query goes to the index."""
        if p.word is None or p.exact or p.limit is not None:
            return None
        table = self.bundle.tables.get(p.pair)
        if table is None or not table.covers(p.word, fetch_rows(p.fetch)):
            return None
        return table

    def search_prepared(self, prepared: Sequence[PreparedQuery]) -> list[list[Neighbor]]:
        if len(prepared) == 1:  # a lone query (the usual gRPC Search): no grouping
            table = self.answer_table(prepared[0])
            if table is not None:
                return [self._neighbors(prepared[0], *table.answer(prepared[0].word))]
            return self._search_group(prepared)
        groups: dict[tuple, list[int]] = defaultdict(list)
        results: list[list[Neighbor]] = [[] for _ in prepared]
        for i, p in enumerate(prepared):
            table = self.answer_table(p)
            if table is not None:
                results[i] = self._neighbors(p, *table.answer(p.word))
            else:
                groups[(p.target, p.pair, p.exact, p.limit, fetch_rows(p.fetch), self._past_table(p))].append(i)
        for members in groups.values():
            for i, out in zip(members, self._search_group([prepared[i] for i in members])):
                results[i] = out
        return results

    def _past_table(self, p: PreparedQuery) -> bool:
        """Whether the index searches this query with the pair's parameters for words past its answer table."""
        return not p.exact and p.limit is None and self.bundle.past_table(p.pair, p.word)

    def _search_group(self, group: Sequence[PreparedQuery]) -> list[list[Neighbor]]:
        """Queries alike in target space, pair, exactness and limit, answered with one FAISS call."""
        first = group[0]
        target, limit = first.target, first.limit
        space_index = self.bundle.spaces[target]
        fetch = fetch_rows(first.fetch)  # alike in the group
        vectors = np.stack([p.vector for p in group]) if len(group) > 1 else first.vector[None, :]
        if first.exact:
            scores, ids = space_index.exact(vectors, fetch, limit)
        else:
            params = self.bundle.search_params(first.pair, self._past_table(first))  # alike in the group
            scores, ids = space_index.search(vectors, fetch, params, first.pair, limit)
            # an approximate index can return fewer rows than asked (the IVF lists visited held too few): such
            # queries are answered exactly, so that k neighbours come back whenever the vocabulary has them.
            # Short means short of the rows asked (the bucket), so that the answer depends on the bucket alone, as
            # the answer tables store it (only when some row came back padded: a full answer has every query's
            # rows; count_nonzero along an axis alone would cost ~10 us a call)
            short = []
            if ids.size and ids.min() < 0:
                wanted = min(fetch, limit or space_index.n)
                found = np.count_nonzero(ids >= 0, axis=1)
                short = np.flatnonzero(found < wanted).tolist()
            if short:
                scores, ids = np.array(scores), np.array(ids)
                scores[short], ids[short] = space_index.exact(vectors[short], fetch, limit)
        return [self._neighbors(p, row_scores, row_ids)
                for p, row_scores, row_ids in zip(group, scores.tolist(), ids.tolist())]

    def _neighbors(self, p: PreparedQuery, row_scores: list[float], row_ids: list[int]) -> list[Neighbor]:
        """A query's answer from the rows searched for it: the first k, its own words and padding left out."""
        words = self.bundle.vocab.words
        out: list[Neighbor] = []
        exclude, k = p.exclude, p.k
        for sc, j in zip(row_scores, row_ids):
            if j < 0 or j in exclude:
                continue
            out.append(Neighbor(words[j], j, sc))
            if len(out) == k:
                break
        return out

    # -------------------------------------------------------------------------------------------- vectors & cos
    def get_vectors(self, words: Sequence[str], space: Space, raw: bool = False) -> list[WordVector]:
        """Unit vectors (and the model's raw vectors when asked) of words in one space, in order."""
        self.require_space(space, "space")
        if not words:
            raise InvalidArgument("words", "empty: give at least one word")
        if len(words) > self.limits.max_words:
            raise InvalidArgument("words", f"{len(words)} words, above this server's limit of "
                                           f"{self.limits.max_words:,} (--max-words)")
        self.limits.check_words(words, "words")
        ids = self.word_ids(words, space)
        unit = np.asarray(self.bundle.vectors[space][ids], dtype=np.float32)
        norms = self.bundle.norms[space][ids]
        counts = self.bundle.vocab.counts[ids]
        out = []
        for w, i, u, nrm, c in zip(words, ids, unit, norms.tolist(), counts.tolist()):
            rawv = tuple((u * np.float32(nrm)).tolist()) if raw else None
            out.append(WordVector(w, i, tuple(u.tolist()), rawv, float(nrm), int(c)))
        return out

    def similarity(self, pairs: Sequence[tuple[tuple[str, Space], tuple[str, Space]]]) -> list[float]:
        """Cosine of each ((word, space), (word, space)) pair, in order."""
        if not pairs:
            raise InvalidArgument("pairs", "empty: give at least one pair")
        if len(pairs) > self.limits.max_words:
            raise InvalidArgument("pairs", f"{len(pairs)} pairs, above this server's limit of "
                                           f"{self.limits.max_words:,} (--max-words)")
        missing = []
        for n, ((wa, sa), (wb, sb)) in enumerate(pairs):
            for side, (w, s) in zip("ab", ((wa, sa), (wb, sb))):
                self.limits.check_word(w, f"pairs[{n}].{side}.word")
                self.require_space(s, f"pairs[{n}].{side}.space")
                if w not in self.bundle.vocab.index:
                    missing.append(w)
        if missing:
            raise UnknownWords(list(dict.fromkeys(missing)))
        index = self.bundle.vocab.index
        out = []
        for (wa, sa), (wb, sb) in pairs:
            a = np.asarray(self.bundle.vectors[sa][index[wa]], dtype=np.float32)
            b = np.asarray(self.bundle.vectors[sb][index[wb]], dtype=np.float32)
            out.append(float(np.dot(a, b)))
        return out

