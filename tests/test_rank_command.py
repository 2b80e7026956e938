"""`dualvec rank`: documents ranked by DESM with DESM IN-OUT, DESM IN-IN and BM25 side by side."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from gensim.test.utils import datapath

from dualvec.kernel.bundle import read_bundle
from dualvec.cli.main import main
from dualvec.kernel.desm import DocumentInput, score_documents
from dualvec.kernel.tokenizer import Tokenizer

QUERY = "Australian Democrats senator leadership"


@pytest.fixture(scope="module")
def lee_lines():
    return Path(datapath("lee.cor")).read_text(encoding="utf-8", errors="replace").splitlines()[:12]


@pytest.fixture(scope="module")
def docs_jsonl(tmp_path_factory, lee_lines):
    path = tmp_path_factory.mktemp("rank") / "docs.jsonl"
    rows = [{"id": f"lee-{i}", "text": line} for i, line in enumerate(lee_lines)]
    rows.insert(2, {"id": "gibberish", "tokens": ["qqxyzzy", "zzwwq"]})
    rows.append({"id": "tokens", "tokens": ["senator", "democrats", "party", "leader"]})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    return path


def run_json(capsys, *argv) -> dict:
    assert main(["rank", *argv, "--json", "-q"]) == 0
    return json.loads(capsys.readouterr().out)


def test_rank_with_bundle_orders_by_desm_in_out_and_shows_every_column(capsys, lee_bundle, docs_jsonl):
    out = run_json(capsys, QUERY, str(docs_jsonl), "--bundle", str(lee_bundle))
    docs = out["documents"]
    assert out["ranked_by"] == "in-out" and out["bm25_document_frequencies"] == "corpus"
    assert out["query_tokens"] == ["australian", "democrats", "senator", "leadership"]
    assert len(docs) == 14 and [d["rank"] for d in docs] == list(range(1, 15))
    assert docs[-1]["id"] == "gibberish" and docs[-1]["document_words_found"] == 0  # unscored: last, not first
    scored = [d["score"] for d in docs[:-1]]
    assert scored == sorted(scored, reverse=True)
    assert all(d["score"] == d["desm_in_out"] for d in docs[:-1])
    assert all(-1 <= d["desm_in_out"] <= 1 and -1 <= d["desm_in_in"] <= 1 and 0 <= d["bm25"] <= 1 for d in docs)
    assert max(d["bm25"] for d in docs) == pytest.approx(1.0)


def test_rank_scores_are_score_documents_scores(capsys, lee_bundle, docs_jsonl):
    out = run_json(capsys, QUERY, str(docs_jsonl), "--bundle", str(lee_bundle))
    bundle = read_bundle(lee_bundle)
    tokenizer = Tokenizer.from_dict(bundle.manifest.tokenizer)
    rows = [json.loads(line) for line in docs_jsonl.read_text().splitlines() if line.strip()]
    inputs = [DocumentInput(r["id"], tuple(r["tokens"]) if "tokens" in r else tuple(tokenizer(r["text"])))
              for r in rows]
    for space, key in (("out", "desm_in_out"), ("in", "desm_in_in")):
        expected, _ = score_documents(bundle, tokenizer(QUERY), inputs, document_space=space)
        by_id = {d["id"]: d[key] for d in out["documents"]}
        assert all(by_id[e.id] == pytest.approx(e.desm, abs=1e-12) for e in expected)


def test_rank_by_in_in_with_bm25_mixed(capsys, lee_bundle, docs_jsonl):
    out = run_json(capsys, QUERY, str(docs_jsonl), "--bundle", str(lee_bundle), "--space", "in-in",
                   "--bm25-weight", "0.4")
    docs = out["documents"]
    for d in docs[:-1]:
        assert d["score"] == pytest.approx(0.6 * d["desm_in_in"] + 0.4 * d["bm25"], abs=1e-9)
    scored = [d["score"] for d in docs if d["document_words_found"]]
    assert scored == sorted(scored, reverse=True)


def test_rank_text_file_table(capsys, lee_bundle, lee_lines, tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(lee_lines[:5]) + "\n\n" + lee_lines[5] + "\n", encoding="utf-8")
    assert main(["rank", QUERY, str(path), "--bundle", str(lee_bundle), "-q"]) == 0
    text = capsys.readouterr().out
    header = text.splitlines()[2]
    for column in ("DESM IN-OUT", "DESM IN-IN", "BM25", "known words"):
        assert column in header
    ids = {line.split()[1] for line in text.splitlines()[3:]}
    assert ids == {"1", "2", "3", "4", "5", "7"}  # line numbers; the blank line 6 is no document


@pytest.mark.parametrize("content,args,message", [
    ('{"id": "a", "text": "senator"}\nnot json\n', (), "docs.jsonl:2: not valid JSON"),
    ('{"id": "a"}\n', (), "docs.jsonl:1: the object needs text"),
    ('{"id": "a", "text": "senator"}\n', ("--bm25-weight", "2"), "bm25_weight"),
    ("", (), "no documents"),
])
def test_rank_errors_are_one_line(capsys, lee_bundle, tmp_path, content, args, message):
    path = tmp_path / "docs.jsonl"
    path.write_text(content, encoding="utf-8")
    assert main(["rank", QUERY, str(path), "--bundle", str(lee_bundle), "-q", *args]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_rank_unknown_query_is_an_error(capsys, lee_bundle, docs_jsonl):
    assert main(["rank", "qqxyzzy", str(docs_jsonl), "--bundle", str(lee_bundle), "-q"]) == 1
    assert "qqxyzzy" in capsys.readouterr().err


def test_rank_through_server_equals_local(capsys, lee_bundle, docs_jsonl):
    from dualvec.server.app import ServerConfig, load_engines, start_server

    cfg = ServerConfig(bundles=(str(lee_bundle),), port=0, workers=2)
    running = start_server(load_engines(cfg), cfg)
    try:
        remote = run_json(capsys, QUERY, str(docs_jsonl), "--addr", running.address, "--bm25-weight", "0.25")
    finally:
        running.stop(grace=None)
    local = run_json(capsys, QUERY, str(docs_jsonl), "--bundle", str(lee_bundle), "--bm25-weight", "0.25")
    assert [d["id"] for d in remote["documents"]] == [d["id"] for d in local["documents"]]
    assert remote["bm25_document_frequencies"] == local["bm25_document_frequencies"]
    for r, loc in zip(remote["documents"], local["documents"]):
        for key in ("score", "desm_in_out", "desm_in_in", "bm25"):
            assert r[key] == pytest.approx(loc[key], abs=1e-4)  # float32 on the wire
        assert r["document_words_found"] == loc["document_words_found"]
