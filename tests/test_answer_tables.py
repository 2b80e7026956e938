"""Answer tables: a pair's answers to one-word queries, filled at build, are exactly the index's answers, cover the
most frequent words first within the budget, and every query they do not answer goes to the index."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from dualvec.indexer.answer_tables import TableConfig
from dualvec.indexer.build import BuildConfig, build_bundle
from dualvec.indexer.model_readers import read_model
from dualvec.kernel.answer_table import AnswerTable
from dualvec.kernel.bundle import answer_files, read_bundle
from dualvec.kernel.errors import BundleError
from dualvec.kernel.search import SearchEngine, SearchQuery, unit_rows
from dualvec.kernel.spaces import ALL_PAIRS, Space, pair_name

PAIRS = [pair_name(q, t) for q, t in ALL_PAIRS]


@pytest.fixture(scope="module")
def graph_bundle(workdir, lee_model):
    """An HNSW bundle of the Lee model with every word of every pair tabulated."""
    path = workdir / "lee-tables.bundle"
    if not path.exists():
        every_word = TableConfig(words=10**9)
        build_bundle(read_model(lee_model), path, BuildConfig(index="hnsw", quiet=True, tables=every_word))
    return path


def engines(path):
    with_tables = SearchEngine(read_bundle(path))
    bare = read_bundle(path)
    bare.tables = {}
    return with_tables, SearchEngine(bare)


def test_every_word_of_every_pair_is_tabulated_and_recorded(graph_bundle):
    bundle = read_bundle(graph_bundle)
    manifest = json.loads((graph_bundle / "manifest.json").read_text())
    assert sorted(bundle.tables) == sorted(PAIRS)
    for pname in PAIRS:
        table = bundle.tables[pname]
        assert table.rows == bundle.vocab_size == manifest["pairs"][pname]["answer_rows"]
        assert table.width == 16
        assert manifest["pairs"][pname]["answer_seconds"] > 0
        for name in answer_files(pname):
            assert name in manifest["files"]
        # the stored rows are the search's own: distinct ids, exact cosines, best first
        ids, scores = np.asarray(table.ids), np.asarray(table.scores)
        t = Space(pname.split("-")[1])
        q = Space(pname.split("-")[0])
        rows = np.random.default_rng(1).choice(table.rows, 50, replace=False)
        for r in rows:
            assert len(set(ids[r].tolist())) == 16 and ids[r].min() >= 0
            assert np.all(np.diff(scores[r]) <= 1e-7)
            exact = np.asarray(bundle.vectors[t][ids[r]]) @ unit_rows(bundle.vectors[q][r:r + 1])[0]
            np.testing.assert_allclose(scores[r], exact, atol=2e-6)
    assert manifest["build"]["phases"]["answer_tables"] > 0


@pytest.mark.parametrize("pname", PAIRS)
def test_a_tabulated_answer_is_the_index_answer(graph_bundle, pname):
    with_tables, bare = engines(graph_bundle)
    q, t = (Space(s) for s in pname.split("-"))
    words = with_tables.bundle.vocab.words
    ids = np.random.default_rng(7).choice(len(words), 400, replace=False)
    looked_up = 0
    for k, include in ((1, False), (10, False), (15, False), (16, True), (5, True)):
        for i in ids:
            query = SearchQuery(positive=(words[i],), query_space=q, target_space=t, k=k,
                                include_query_words=include)
            assert with_tables.answer_table(with_tables.prepare(query)) is not None
            looked_up += 1
            got, want = with_tables.search(query), bare.search(query)
            assert [n.word for n in got] == [n.word for n in want]
            np.testing.assert_allclose([n.score for n in got], [n.score for n in want], atol=1e-6)
            assert len(got) == k
            if not include:
                assert words[i] not in {n.word for n in got}
    assert looked_up == 5 * 400


def test_queries_a_table_cannot_answer_go_to_the_index(graph_bundle):
    engine, _ = engines(graph_bundle)
    w = engine.bundle.vocab.words
    table_of = lambda **kw: engine.answer_table(engine.prepare(SearchQuery(**kw)))  # noqa: E731
    assert table_of(positive=(w[5],)) is not None
    assert table_of(positive=(w[5],), k=16) is None  # 17 rows: beyond the table's 16
    assert table_of(positive=(w[5],), k=17, include_query_words=True) is None
    assert table_of(positive=(w[5],), restrict_vocab=1000) is None
    assert table_of(positive=(w[5],), exact=True) is None
    assert table_of(positive=(w[5], w[6])) is None
    assert table_of(positive=(w[5],), negative=(w[6],)) is None
    assert table_of(vector=np.asarray(engine.bundle.vectors[Space.IN][5])) is None


def test_a_batch_mixing_lookups_and_searches_answers_each_as_alone(graph_bundle):
    with_tables, bare = engines(graph_bundle)
    w = with_tables.bundle.vocab.words
    rng = np.random.default_rng(3)
    queries = []
    for i in rng.choice(len(w), 60, replace=False):
        q, t = ALL_PAIRS[i % 4]
        queries.append(SearchQuery(positive=(w[i],), query_space=q, target_space=t, k=int(rng.choice([5, 10, 30]))))
    queries.append(SearchQuery(positive=(w[1], w[2]), k=10))
    got, want = with_tables.search_many(queries), bare.search_many(queries)
    assert [[n.id for n in r] for r in got] == [[n.id for n in r] for r in want]
    assert sum(with_tables.answer_table(with_tables.prepare(q)) is not None for q in queries) > 20


def test_a_partial_table_covers_the_most_frequent_words_first(tmp_path, lee_model):
    path = tmp_path / "partial.bundle"
    build_bundle(read_model(lee_model), path, BuildConfig(index="hnsw", quiet=True, tables=TableConfig(words=300)))
    engine, bare = engines(path)
    assert {p: t.rows for p, t in engine.bundle.tables.items()} == {p: 300 for p in PAIRS}
    w = engine.bundle.vocab.words
    assert engine.bundle.vocab.counts[0] >= engine.bundle.vocab.counts[299] >= engine.bundle.vocab.counts[300]
    for i, covered in ((0, True), (299, True), (300, False), (len(w) - 1, False)):
        query = SearchQuery(positive=(w[i],), query_space=Space.OUT, target_space=Space.IN)
        assert (engine.answer_table(engine.prepare(query)) is not None) is covered
        tuned_past = engine.bundle.pair_tuning("out-in").tail_params is not None
        assert engine.bundle.past_table("out-in", i) is (not covered and tuned_past)
        if covered:
            assert [n.id for n in engine.search(query)] == [n.id for n in bare.search(query)]


@pytest.fixture(scope="module")
def partial_bundle(workdir, lee_model):
    path = workdir / "lee-partial.bundle"
    if not path.exists():
        build_bundle(read_model(lee_model), path, BuildConfig(index="hnsw", quiet=True, tables=TableConfig(words=300)))
    return path


def test_the_words_past_a_table_are_tuned_on_their_own_to_the_target(partial_bundle):
    manifest = json.loads((partial_bundle / "manifest.json").read_text())
    assert manifest["build"]["phases"]["tuning_past_tables"] > 0
    target = manifest["tuning"]["target_recall"]
    bundle = read_bundle(partial_bundle)
    for pname in PAIRS:
        entry = manifest["pairs"][pname]
        assert entry["answer_rows"] == 300
        assert bundle.search_params(pname).to_dict() == entry["params"]
        assert not bundle.past_table(pname, None) and not bundle.past_table(pname, 299)
        if "tail_params" not in entry:  # no cheaper than the pair's own: those serve every word
            assert bundle.pair_tuning(pname).tail_params is None
            assert not bundle.past_table(pname, 300)
            assert bundle.search_params(pname, tail=True) == bundle.search_params(pname)
            continue
        assert entry["tail_recall_uniform"] >= target and entry["tail_recall_frequency"] >= target
        assert 0 < entry["tail_microseconds_per_query"] < entry["microseconds_per_query"]
        assert bundle.pair_tuning(pname).tail_params.to_dict() == entry["tail_params"]
        assert bundle.search_params(pname, tail=True).to_dict() == entry["tail_params"]
        assert bundle.past_table(pname, 300) and bundle.past_table(pname, bundle.vocab_size - 1)


def test_tail_parameters_are_kept_only_when_cheaper(lee_model, tmp_path, monkeypatch):
    import dualvec.indexer.build as build

    real_tune_pair, real_tune_tails = build.tune_pair, build.tune_tails
    calls = []

    def dear(*args, **kwargs):  # the words past the table tuned to a dearer setting than the pair's own
        return replace(real_tune_pair(*args, **kwargs), microseconds=1e9)

    def tails(*args, **kwargs):
        calls.append(1)
        monkeypatch.setattr(build, "tune_pair", dear)
        return real_tune_tails(*args, **kwargs)
    monkeypatch.setattr(build, "tune_tails", tails)
    path = tmp_path / "dear.bundle"
    build_bundle(read_model(lee_model), path, BuildConfig(index="hnsw", quiet=True, tables=TableConfig(words=300)))
    manifest = json.loads((path / "manifest.json").read_text())
    assert calls == [1]
    assert not any("tail_params" in e for e in manifest["pairs"].values())
    assert read_bundle(path).past_table("in-in", 1000) is False


@pytest.mark.parametrize("pname", PAIRS)
def test_a_word_past_the_table_is_searched_with_the_tail_parameters(partial_bundle, pname):
    engine = SearchEngine(read_bundle(partial_bundle))
    bundle = engine.bundle
    q, t = (Space(s) for s in pname.split("-"))
    words = bundle.vocab.words
    ids = np.random.default_rng(5).choice(np.arange(300, len(words)), 200, replace=False)
    queries = [SearchQuery(positive=(words[i],), query_space=q, target_space=t) for i in ids]
    vectors = unit_rows(np.asarray(bundle.vectors[q][ids]))
    scores, found = bundle.spaces[t].search(vectors, 16, bundle.search_params(pname, tail=True), pname)
    for row, (i, query) in enumerate(zip(ids, queries)):
        want = [j for j in found[row].tolist() if j >= 0 and j != i][:10]
        assert [n.id for n in engine.search(query)] == want
    # batched, with covered words and a two-word query among them: each as alone
    mixed = queries[:50] + [SearchQuery(positive=(words[i],), query_space=q, target_space=t) for i in range(50)]
    mixed.append(SearchQuery(positive=(words[1], words[400]), query_space=q, target_space=t))
    assert [[n.id for n in r] for r in engine.search_many(mixed)] == [[n.id for n in engine.search(x)] for x in mixed]


def test_neighbors_search_words_past_the_table_with_the_tail_parameters(partial_bundle):
    from dualvec.kernel.neighbors import search_block

    bundle = read_bundle(partial_bundle)
    qids = np.arange(250, 350, dtype=np.int64)  # across the table's end
    ids, _ = search_block(bundle, "out-in", qids, 10)
    vectors = np.ascontiguousarray(bundle.vectors[Space.OUT][qids], dtype=np.float32)
    for part, tail in ((slice(0, 50), False), (slice(50, 100), True)):
        _, want = bundle.spaces[Space.IN].search(vectors[part], 11, bundle.search_params("out-in", tail), "out-in")
        for got_row, want_row, word in zip(ids[part], want, qids[part]):
            assert got_row.tolist() == [j for j in want_row.tolist() if j != word][:10]


def test_a_budget_fills_whole_blocks_and_stops(tmp_path, lee_model, monkeypatch):
    import dualvec.indexer.answer_tables as answer_tables

    monkeypatch.setattr(answer_tables, "BLOCK", 256)
    ticks = iter(range(10**6))  # each clock reading one "second" later: the budget of 2 s ends after a block
    monkeypatch.setattr(answer_tables, "perf_counter", lambda: float(next(ticks)))
    path = tmp_path / "budget.bundle"
    build_bundle(read_model(lee_model), path, BuildConfig(index="hnsw", quiet=True, tables=TableConfig(seconds=2)))
    rows = {p: t.rows for p, t in read_bundle(path).tables.items()}
    assert set(rows) == set(PAIRS) and len(set(rows.values())) == 1
    assert 256 <= rows["in-in"] < read_bundle(path).vocab_size and rows["in-in"] % 256 == 0


def test_no_tables_when_the_budget_is_zero_or_the_space_is_exact(tmp_path, lee_model, lee_bundle):
    path = tmp_path / "none.bundle"
    build_bundle(read_model(lee_model), path, BuildConfig(index="hnsw", quiet=True, tables=TableConfig(seconds=0)))
    manifest = json.loads((path / "manifest.json").read_text())
    assert not any(name.startswith("answers.") for name in manifest["files"])
    assert not any("answer_rows" in e for e in manifest["pairs"].values())
    assert read_bundle(path).tables == {}
    assert read_bundle(lee_bundle).tables == {}  # an exact bundle scans; nothing to tabulate


def test_a_table_of_the_wrong_shape_or_type_is_refused():
    with pytest.raises(BundleError, match="differ in shape"):
        AnswerTable(np.zeros((3, 16), np.int32), np.zeros((3, 8), np.float32))
    with pytest.raises(BundleError, match="int32 ids and float32 scores"):
        AnswerTable(np.zeros((3, 16), np.int64), np.zeros((3, 16), np.float32))


def test_a_one_word_query_vector_is_the_same_alone_or_among_many(graph_bundle):
    rows = np.asarray(read_bundle(graph_bundle).vectors[Space.IN][:2000])
    many = unit_rows(rows)
    for i in (0, 1, 999, 1999):
        assert np.array_equal(unit_rows(rows[i:i + 1])[0], many[i])


def test_build_flags_set_the_table_budget(capsys):
    from dualvec.cli.main import build_parser

    parser = build_parser()
    args = parser.parse_args(["build", "m.model", "-o", "b", "--table-words", "5000"])
    assert args.table_words == 5000
    for bad in (["--table-seconds", "-1"], ["--table-words", "-3"], ["--table-seconds", "5", "--table-words", "9"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["build", "m.model", "-o", "b", *bad])
    err = capsys.readouterr().err
    assert "--table-seconds" in err and "--table-words" in err
    assert replace(TableConfig(), words=0).enabled is False and TableConfig(seconds=0).enabled is False


def test_a_server_prefaults_every_answer_table(graph_bundle, monkeypatch):
    import dualvec.server.host.prefault as prefault

    touched = []
    monkeypatch.setattr(prefault, "prefault_pages", lambda array: touched.append(array))
    bundle = read_bundle(graph_bundle)
    prefault.prepare_for_serving(bundle)
    for table in bundle.tables.values():
        assert any(a is table.ids for a in touched) and any(a is table.scores for a in touched)
    assert len(touched) == len(bundle.vectors) + 2 * len(PAIRS)
