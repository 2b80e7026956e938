"""What a new user meets first. `dualvec train` warns (one line) when the corpus is too small for its settings and
trains skip-gram unless told --cbow; progress shows as a bar on a terminal and as log lines elsewhere; a closed
stdout (`| head`) ends any command quietly; numbers out of range are refused at the command line in one line; a
build reports its whole wall time; `rank` prints the same header whether a bundle or a server scored; unscored
documents are marked and ranked after the scored ones (rank and the demo); the demo's analogy says whether it came
out right; and every option default is read from the config that owns it."""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from gensim.models import Word2Vec

from dualvec.cli import defaults as cli_defaults
from dualvec.cli.demo import analogy_lines, desm_table
from dualvec.cli.info import bundle_summary, format_summary, seconds
from dualvec.cli.main import build_parser, main
from dualvec.cli.query import run_query
from dualvec.indexer import training
from dualvec.indexer.training import MIN_SIGHTINGS, TrainConfig, corpus_warning, train
from dualvec.kernel.bundle import read_bundle
from dualvec.kernel.errors import DualvecError
from dualvec.kernel.results import DocumentScore, Neighbor

from conftest import LEE_CORPUS

_SCRIPT = Path(sys.executable).with_name("dualvec")
DUALVEC = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "dualvec"]
QUERY = "Australian Democrats senator leadership"
# lee_background.cor at the default min_count 5: tokens of vocabulary words and vocabulary size
LEE_TOKENS, LEE_WORDS = 51_234, 1_831


def dualvec(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*DUALVEC, *map(str, args)], capture_output=True, text=True, timeout=180, **kwargs)


def mean_cosines(model_path: Path, pairs: int = 3000) -> tuple[float, float]:
    """Mean cosine of random word pairs, IN with IN and IN with OUT."""
    model = Word2Vec.load(str(model_path))
    unit_in = model.wv.vectors / np.linalg.norm(model.wv.vectors, axis=1, keepdims=True)
    unit_out = model.syn1neg / np.linalg.norm(model.syn1neg, axis=1, keepdims=True)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, len(unit_in), pairs), rng.integers(0, len(unit_in), pairs)
    return float(np.mean(np.sum(unit_in[a] * unit_in[b], 1))), float(np.mean(np.sum(unit_in[a] * unit_out[b], 1)))


def warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " WARNING " in line]


@pytest.fixture(scope="module")
def docs_jsonl(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("front-door") / "docs.jsonl"
    rows = [{"id": "senate", "text": "The Democrats senator said the party leadership would change."},
            {"id": "gibberish", "tokens": ["qqxyzzy", "zzwwq"]},
            {"id": "fire", "text": "Fire crews fought the bushfires near Sydney overnight."},
            {"id": "cricket", "text": "Australia won the test match after the batsmen scored quickly."}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------- 1. train on a small corpus

def test_corpus_warning_follows_the_measured_sightings_per_word_and_names_the_epochs_that_work():
    five = corpus_warning(LEE_TOKENS, LEE_WORDS, TrainConfig(epochs=5))
    assert five is not None and "--epochs 15 or more" in five and "1,831 words 140 times" in five
    assert corpus_warning(LEE_TOKENS, LEE_WORDS, TrainConfig(epochs=5, dim=300)) == five  # dimension: no effect
    assert corpus_warning(LEE_TOKENS, LEE_WORDS, TrainConfig(epochs=14)) is not None
    assert corpus_warning(LEE_TOKENS, LEE_WORDS, TrainConfig(epochs=15)) is None  # 420 >= MIN_SIGHTINGS[True]
    cbow = corpus_warning(LEE_TOKENS, LEE_WORDS, TrainConfig(epochs=35, sg=False))
    assert cbow is not None and "CBOW" in cbow and "--epochs 36 or more" in cbow and "--epochs 15" in cbow
    assert corpus_warning(LEE_TOKENS, LEE_WORDS, TrainConfig(epochs=36, sg=False)) is None
    assert MIN_SIGHTINGS[False] > MIN_SIGHTINGS[True]
    # the demo's corpus and settings (471k tokens of 9,819 words, 10 epochs of skip-gram) are left alone
    assert corpus_warning(470_991, 9_819, TrainConfig(epochs=10)) is None


@pytest.mark.slow  # trains a skip-gram model of the Lee corpus
def test_the_readme_train_command_on_a_small_corpus_warns_once_and_its_vectors_are_indeed_all_alike(tmp_path):
    model = tmp_path / "my.model"
    result = dualvec("train", LEE_CORPUS, "-o", model, "--dim", 300, "--epochs", 5)
    assert result.returncode == 0, result.stderr
    warnings = warning_lines(result.stderr)
    assert len(warnings) == 1, result.stderr
    assert "corpus is small" in warnings[0] and "--epochs 15 or more" in warnings[0]
    in_in, in_out = mean_cosines(model)
    assert in_in > 0.9 and in_out < -0.9  # what the warning warns of


@pytest.mark.slow  # trains a skip-gram model of the Lee corpus
def test_train_with_the_advised_epochs_is_silent_trains_skip_gram_and_gives_distinct_vectors(tmp_path):
    model = tmp_path / "my.model"
    result = dualvec("train", LEE_CORPUS, "-o", model, "--epochs", 20)
    assert result.returncode == 0, result.stderr
    assert warning_lines(result.stderr) == []
    assert Word2Vec.load(str(model)).sg == 1
    in_in, in_out = mean_cosines(model)
    assert in_in < 0.5 and in_out > -0.5


def test_skip_gram_is_the_default_and_cbow_a_flag():
    parser = build_parser()
    parse = lambda *extra: cli_defaults.resolve_defaults(parser.parse_args(["train", "c.txt", "-o", "m", *extra]))  # noqa: E731
    assert parse().sg is True is TrainConfig().sg
    assert parse("--cbow").sg is False and parse("--sg").sg is True
    with pytest.raises(SystemExit) as err:
        parse("--sg", "--cbow")
    assert err.value.code == 2
    help_text = dualvec("train", "--help").stdout
    assert "--cbow" in help_text and "skip-gram, the default" in help_text


# ---------------------------------------------------------------------------------------- 6. training progress

@pytest.mark.slow
def test_training_progress_is_logged_at_intervals_when_stderr_is_not_a_terminal(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(training, "PROGRESS_SECONDS", 0.05)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a file or a pipe: no terminal
    with caplog.at_level(logging.INFO, logger="dualvec.indexer.training"):
        train(LEE_CORPUS, tmp_path / "m.model", TrainConfig(dim=48, epochs=10, workers=1))
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train word2vec: epoch")]
    assert progress, [r.getMessage() for r in caplog.records]
    assert re.fullmatch(r"train word2vec: epoch \d+ of 10, \d+s elapsed(, about \d+s left)?", progress[-1])
    assert "train word2vec" not in sys.stderr.getvalue()  # no bar where nobody watches one


@pytest.mark.slow
def test_training_shows_a_bar_on_a_terminal_and_no_progress_log_lines(tmp_path, monkeypatch, caplog):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(training, "PROGRESS_SECONDS", 0.05)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with caplog.at_level(logging.INFO, logger="dualvec.indexer.training"):
        train(LEE_CORPUS, tmp_path / "m.model", TrainConfig(dim=48, epochs=10, workers=1))
    assert "train word2vec" in terminal.getvalue() and "epoch" in terminal.getvalue()
    assert not [r for r in caplog.records if r.getMessage().startswith("train word2vec: epoch")]


# ------------------------------------------------------------------------------------------ 2. a closed stdout

def _with_closed_stdout(*args) -> subprocess.CompletedProcess:
    """Run dualvec with stdout a pipe whose reader has already gone, as `| head` leaves it."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([*DUALVEC, *map(str, args)], stdout=write_end, stderr=subprocess.PIPE, text=True,
                              timeout=180)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("command", ["info", "info --json", "rank --bundle", "rank --addr", "query", "build",
                                     "train", "--help"])
@pytest.mark.slow
def test_a_closed_stdout_ends_every_printing_command_quietly(command, lee_bundle, lee_model, lee_server,
                                                             docs_jsonl, tmp_path):
    args = {"info": ["info", lee_bundle], "info --json": ["info", lee_bundle, "--json"],
            "rank --bundle": ["rank", QUERY, docs_jsonl, "--bundle", lee_bundle],
            "rank --addr": ["rank", QUERY, docs_jsonl, "--addr", lee_server.address],
            "query": ["query", "police", "--addr", lee_server.address],
            "build": ["build", lee_model, "-o", tmp_path / "b", "--index", "flat"],
            "train": ["train", LEE_CORPUS, "-o", tmp_path / "m.model", "--dim", 16, "--epochs", 15],
            "--help": ["--help"]}[command]
    result = _with_closed_stdout(*args, *(["-q"] if command != "--help" else []))
    assert result.returncode in (0, 141), result.stderr
    assert "Broken pipe" not in result.stderr and "error" not in result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr


# ------------------------------------------------------------------------------- 3. numbers out of range, in query

@pytest.mark.parametrize("args,flag,span", [
    (["-k", "-3"], "-k", "from 1 to 4294967295"),
    (["-k", "99999999999"], "-k", "from 1 to 4294967295"),
    (["-k", "ten"], "-k", "from 1 to 4294967295"),
    (["--restrict-vocab", "-1"], "--restrict-vocab", "from 0 to 4294967295"),
    (["--timeout", "-2"], "--timeout", "above 0"),
])
def test_query_refuses_a_number_out_of_range_in_one_line_naming_the_flag_and_the_range(args, flag, span):
    result = dualvec("query", "fire", *args, "--addr", "127.0.0.1:1")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"dualvec query: error: argument {flag}") and span in lines[0], lines[0]


def test_train_refuses_zero_epochs_at_the_command_line():
    result = dualvec("train", LEE_CORPUS, "-o", "never.model", "--epochs", "0")
    assert result.returncode == 2 and "--epochs" in result.stderr and "of at least 1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_what_reaches_the_client_cannot_traceback(lee_server):
    args = argparse.Namespace(words=["police"], negative=[], addr=lee_server.address, timeout=10.0, model="",
                              query_space="in", target_space="in", k=-3, restrict_vocab=0, exact=False, json=False)
    with pytest.raises(DualvecError, match="cannot be sent"):
        run_query(args)
    result = subprocess.run([*DUALVEC, "query", b"\xff\xfe", "--addr", lee_server.address], capture_output=True,
                            timeout=60)
    assert result.returncode == 1 and b"Traceback" not in result.stderr
    assert result.stderr.decode().strip() == "dualvec query: error: the word '\\xff\\xfe' is not valid UTF-8"


# ------------------------------------------------------------------------------------------ 4. build wall time

def test_build_reports_the_wall_time_of_the_whole_build_reading_the_model_included(lee_model, tmp_path,
                                                                                      monkeypatch, capsys):
    from dualvec.indexer import model_readers

    read_model = model_readers.read_model

    def slow_read(*args, **kwargs):
        time.sleep(0.4)
        return read_model(*args, **kwargs)

    monkeypatch.setattr(model_readers, "read_model", slow_read)
    started = time.perf_counter()
    assert main(["build", str(lee_model), "-o", str(tmp_path / "b"), "--index", "flat", "-q"]) == 0
    wall = time.perf_counter() - started
    reported = float(re.search(r", in (\d+(?:\.\d+)?) s$", capsys.readouterr().out.strip())[1])
    assert 0.4 <= reported <= wall


def test_short_times_keep_their_digits_and_info_says_what_the_manifest_timed(lee_bundle):
    assert (seconds(0.012), seconds(0.8), seconds(14.06)) == ("0.012 s", "0.8 s", "14.1 s")
    summary = bundle_summary(read_bundle(lee_bundle))
    line = next(x for x in format_summary(summary).splitlines() if x.startswith("indexed in"))
    assert seconds(summary["build"]["seconds"]) in line and " 0.0 s" not in line


# ------------------------------------------------------------------------------------- 5. and 7. rank and demo

def test_rank_prints_the_same_header_from_a_bundle_and_from_a_server(capsys, lee_bundle, lee_server, docs_jsonl):
    assert main(["rank", QUERY, str(docs_jsonl), "--bundle", str(lee_bundle), "-q"]) == 0
    local = capsys.readouterr().out.splitlines()
    assert main(["rank", QUERY, str(docs_jsonl), "--addr", lee_server.address, "-q"]) == 0
    remote = capsys.readouterr().out.splitlines()
    assert local[:3] == remote[:3]
    assert re.fullmatch(re.escape(f"query {QUERY!r} (tokens: australian democrats senator leadership; ") +
                        r"\d of 4 known\)", local[0]), local[0]
    assert [line.split()[1] for line in local[3:]] == [line.split()[1] for line in remote[3:]]


@pytest.mark.parametrize("where", ["--bundle", "--addr"])
@pytest.mark.parametrize("extra", [[], ["--bm25-weight", "0.5"], ["--space", "in-in"]])
def test_rank_marks_an_unscored_document_and_ranks_it_after_every_scored_one(capsys, lee_bundle, lee_server,
                                                                             docs_jsonl, where, extra):
    target = str(lee_bundle) if where == "--bundle" else lee_server.address
    assert main(["rank", QUERY, str(docs_jsonl), where, target, "-q", "--json", *extra]) == 0
    docs = json.loads(capsys.readouterr().out)["documents"]
    assert [d["scored"] for d in docs] == [True, True, True, False] and docs[-1]["id"] == "gibberish"
    scores = [d["score"] for d in docs[:-1]]
    assert scores == sorted(scores, reverse=True)
    assert main(["rank", QUERY, str(docs_jsonl), where, target, "-q", *extra]) == 0
    last = capsys.readouterr().out.splitlines()[-1].split()
    assert last[:5] == ["4", "gibberish", "unscored", "-", "-"]


def test_the_demo_table_marks_an_unscored_document_and_puts_it_last():
    scores = [DocumentScore("unknown", 0.0, 0.0, 0.0, 3, 0), DocumentScore("music", -0.41, -0.41, 0.0, 3, 12),
              DocumentScore("fire", -0.12, -0.12, 1.0, 3, 15)]
    rows = desm_table(scores, {"unknown": 0.0, "music": 0.49, "fire": 0.7})
    assert [row.split()[0] for row in rows[1:]] == ["fire", "music", "unknown"]
    assert rows[-1].split()[1:4] == ["unscored", "-", "0"]


def test_the_demo_analogy_says_whether_the_expected_word_came_first():
    hit = analogy_lines([Neighbor("portuguese", 1, 0.74), Neighbor("serbian", 2, 0.66)], "portuguese")
    assert "<- expected" in hit[0] and hit[-1].strip() == "portuguese comes first"
    second = analogy_lines([Neighbor("italy", 1, 0.602), Neighbor("queen", 2, 0.601)], "queen")
    assert "queen is at rank 2" in second[-1]
    missed = analogy_lines([Neighbor("italy", 1, 0.6)], "queen")
    assert "queen is not in the top 1" in missed[-1]


# ------------------------------------------------------------------------------------------ 8. defaults, once

def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", ["train", "build", "serve", "query", "rank", "evaluate"])
def test_every_numeric_option_default_is_read_from_the_config_that_owns_it(command):
    sub = _subparsers(build_parser())[command]
    literal = [a.option_strings for a in sub._actions
               if isinstance(a.default, (int, float)) and not isinstance(a.default, bool)]
    assert literal == [], f"written in argparse instead of read from the config: {literal}"
    for action in sub._actions:
        if isinstance(action.default, cli_defaults.ConfigDefault):
            action.default.value  # every owner and field exists


def test_parsed_defaults_equal_the_configs_defaults():
    from dualvec.client import Client
    from dualvec.evaluation import EvaluateConfig
    from dualvec.indexer.build import BuildConfig
    from dualvec.kernel.manifest import TuningConfig
    from dualvec.kernel.search import SearchQuery
    from dualvec.server.app import ServerConfig

    parser = build_parser()
    parse = lambda *argv: cli_defaults.resolve_defaults(parser.parse_args(list(argv)))  # noqa: E731
    serve, server = parse("serve", "b"), ServerConfig(bundles=("b",))
    for option, field in (("port", "port"), ("max_k", "max_k"), ("max_batch", "max_batch"), ("workers", "workers"),
                          ("max_queue", "max_queue"), ("batch_size", "batch_size"), ("grace", "grace_seconds"),
                          ("concurrent_batches", "concurrent_batches"), ("host", "host"), ("cpus", "cpus"),
                          ("processes", "processes")):
        assert getattr(serve, option) == getattr(server, field), option
    build = parse("build", "m", "-o", "b")
    assert (build.target_recall, build.tune_queries, build.eval_queries) == (
        TuningConfig().target_recall, TuningConfig().tune_queries, TuningConfig().eval_queries)
    assert (build.index, build.threads) == (BuildConfig().index, BuildConfig().threads)
    trained, config = parse("train", "c", "-o", "m"), TrainConfig()
    assert all(getattr(trained, f) == getattr(config, f) for f in ("dim", "window", "min_count", "epochs", "sg",
                                                                    "negative", "sample", "workers", "seed"))
    query = parse("query", "fire")
    assert (query.k, query.restrict_vocab) == (SearchQuery().k, SearchQuery().restrict_vocab)
    assert query.addr == "127.0.0.1:50051" == f"{server.host}:{server.port}"
    assert query.timeout == Client.__init__.__kwdefaults__["timeout"]
    assert parse("evaluate", "b").analogy_limit == EvaluateConfig(bundles=()).analogy_limit


def test_building_the_parser_imports_no_config_it_reads_defaults_from_nor_gensim():
    code = ("import sys; from dualvec.cli.main import build_parser; build_parser(); "
            "print(sorted(m for m in ('gensim', 'dualvec.server.app', 'dualvec.indexer.training', "
            "'dualvec.indexer.build', 'dualvec.evaluation', 'dualvec.cli.rank') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr
