"""`dualvec train`, `dualvec build` and `dualvec info` as a user runs them (a subprocess of the console script):
refusals exit non-zero with one clear line on stderr and no traceback (a traceback with --debug), leave nothing at
the target, Ctrl-C and SIGTERM interrupt a build cleanly, and `info --json` describes a bundle for scripts."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import gensim
import numpy as np
import pytest
from gensim.models import FastText, Word2Vec
from gensim.models.fasttext import save_facebook_model

from dualvec.indexer.build import BuildConfig, build_bundle
from dualvec.indexer.model_readers import read_model
from dualvec.indexer.word2vec_format import write_word2vec
from dualvec.kernel.tokenizer import Tokenizer

pytestmark = pytest.mark.slow  # runs dualvec in subprocesses (train, build, info): .ci/run covers it

# the console script of this interpreter's environment (python -m dualvec where it is not installed as a script)
_SCRIPT = Path(sys.executable).with_name("dualvec")
DUALVEC = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "dualvec"]
GENSIM_DATA = Path(gensim.__file__).parent / "test" / "test_data"
LOG_LINE = " INFO "  # progress log lines of a build that got under way (absent with -q)


def dualvec(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*DUALVEC, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def assert_one_error_line(result: subprocess.CompletedProcess, command: str, *needles: str) -> str:
    """Non-zero exit; stderr is one line "dualvec COMMAND: error: ..." (after the build's INFO log lines, if it got
    that far) holding every needle; no traceback."""
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and LOG_LINE not in line]
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert result.stderr.rstrip("\n").endswith(line)
    assert line.startswith(f"dualvec {command}: error: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def nothing_at(target: Path) -> None:
    assert not target.exists()
    assert not [p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.")]


# ---------------------------------------------------------------------------------------------------------- inputs

@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Small real models and files, each wrong in one way, plus one good of each kind."""
    d = tmp_path_factory.mktemp("cli-inputs")
    tok = Tokenizer("simple")
    lines = (GENSIM_DATA / "lee_background.cor").read_text(encoding="utf-8").splitlines()
    sentences = [tok(line) for line in lines if line.strip()]
    common = dict(vector_size=16, min_count=5, epochs=1, workers=1, seed=2)
    files = {}

    ns = Word2Vec(sentences, negative=5, hs=0, **common)
    files["ns"] = d / "ns.model"
    ns.save(str(files["ns"]))
    files["hs"] = d / "hs.model"
    Word2Vec(sentences, hs=1, negative=0, **common).save(str(files["hs"]))
    files["kv"] = d / "ns.kv"
    ns.wv.save(str(files["kv"]))
    nan = Word2Vec(sentences, negative=5, **common)
    nan.syn1neg[12, 3] = np.nan
    files["nan"] = d / "nan.model"
    nan.save(str(files["nan"]))

    ft = FastText(sentences, negative=5, bucket=1000, **common)
    ft.syn1neg[:] = 0.0
    files["zero_out_bin"] = d / "zero-output.bin"
    save_facebook_model(ft, str(files["zero_out_bin"]))

    words = list(ns.wv.index_to_key)
    files["in_txt"] = d / "in.txt"
    write_word2vec(files["in_txt"], words, ns.wv.vectors, binary=False)
    files["out_bin"] = d / "out.bin"
    write_word2vec(files["out_bin"], words, ns.syn1neg, binary=True)
    files["out_order"] = d / "out-order.bin"
    write_word2vec(files["out_order"], [words[1], words[0]] + words[2:], ns.syn1neg, binary=True)
    data = files["out_bin"].read_bytes()
    files["out_truncated"] = d / "out-truncated.bin"
    files["out_truncated"].write_bytes(data[: len(data) - 100])
    files["corpus"] = d / "corpus.txt"
    files["corpus"].write_text("\n".join(lines[:120]) + "\n", encoding="utf-8")
    return files


# ------------------------------------------------------------------------------------------------------- refusals

REFUSALS = {
    "missing path": (["{tmp}/no-such.model"], ["no-such.model: no such file"]),
    "hierarchical softmax only": (["{hs}"], ["hierarchical softmax", "syn1", "negative sampling"]),
    "keyedvectors without --in-only": (["{kv}"], ["IN vectors only", "--in-only"]),
    "fastText output all zeros": (["{zero_out_bin}"], ["output matrix is all zeros"]),
    "non-finite OUT row": (["{nan}"], ["OUT space: non-finite values (NaN or inf)"]),
    "pair in another order": (["--in-vectors", "{in_txt}", "--out-vectors", "{out_order}"],
                              ["same words in a different order: row 1"]),
    "truncated binary": (["--in-vectors", "{in_txt}", "--out-vectors", "{out_truncated}"],
                         ["out-truncated.bin: truncated"]),
    "pair without OUT": (["--in-vectors", "{in_txt}"], ["--out-vectors is missing"]),
    "model and pair": (["{ns}", "--in-vectors", "{in_txt}"], ["either MODEL or --in-vectors/--out-vectors"]),
    "bad index": (["{ns}", "--index", "IVF-nonsense"], ["--index 'IVF-nonsense' is not"]),
    "bad target recall": (["{ns}", "--target-recall", "1.5"], ["--target-recall must be in (0, 1]"]),
}


def _expand(args: list[str], inputs: dict, tmp: Path) -> list[str]:
    return [a.format(tmp=tmp, **{k: str(v) for k, v in inputs.items()}) for a in args]


@pytest.mark.parametrize("case", list(REFUSALS))
def test_build_refusal_is_one_line_without_traceback_and_leaves_nothing(inputs, tmp_path, case):
    args, needles = REFUSALS[case]
    target = tmp_path / "out.bundle"
    result = dualvec("build", *_expand(args, inputs, tmp_path), "-o", target)
    assert_one_error_line(result, "build", *needles)
    nothing_at(target)


@pytest.mark.parametrize("case", ["hierarchical softmax only", "pair in another order", "missing path"])
def test_build_refusal_with_quiet_is_exactly_one_line(inputs, tmp_path, case):
    args, needles = REFUSALS[case]
    result = dualvec("build", "-q", *_expand(args, inputs, tmp_path), "-o", tmp_path / "b")
    assert_one_error_line(result, "build", *needles)
    assert len(result.stderr.splitlines()) == 1 and result.stdout == ""


def test_a_refusal_midway_with_quiet_is_exactly_one_line(inputs, tmp_path):
    """The NaN row is in OUT, found after IN was normalized and indexed: still one line, nothing left."""
    result = dualvec("build", "-q", inputs["nan"], "-o", tmp_path / "b")
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert_one_error_line(result, "build", "OUT space: non-finite values")
    nothing_at(tmp_path / "b")


@pytest.mark.parametrize("case", ["hierarchical softmax only", "truncated binary", "non-finite OUT row"])
def test_debug_shows_the_traceback(inputs, tmp_path, case):
    args, needles = REFUSALS[case]
    result = dualvec("build", "--debug", *_expand(args, inputs, tmp_path), "-o", tmp_path / "b")
    assert result.returncode != 0
    assert "Traceback (most recent call last)" in result.stderr and "dualvec.kernel.errors.ModelError" in result.stderr
    assert needles[0] in result.stderr
    nothing_at(tmp_path / "b")


def test_existing_target_is_kept_unless_force(inputs, tmp_path):
    target = tmp_path / "b.bundle"
    assert dualvec("build", "-q", inputs["ns"], "-o", target).returncode == 0
    before = (target / "manifest.json").read_bytes()
    assert_one_error_line(dualvec("build", "-q", inputs["ns"], "-o", target), "build",
                          "already exists; pass --force to replace it")
    assert (target / "manifest.json").read_bytes() == before
    # a forced rebuild that fails keeps the old bundle too
    assert_one_error_line(dualvec("build", "-q", inputs["nan"], "-o", target, "--force"), "build", "non-finite")
    assert (target / "manifest.json").read_bytes() == before
    result = dualvec("build", "-q", "--in-vectors", inputs["in_txt"], "--out-vectors", inputs["out_bin"], "-o",
                     target, "--force")
    assert result.returncode == 0, result.stderr
    assert json.loads((target / "manifest.json").read_text())["source"]["kind"] == "word2vec-pair"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bundle"]


# ------------------------------------------------------------------------------------------------- a clean build

def test_in_only_build_and_info_say_there_is_no_out(inputs, tmp_path):
    target = tmp_path / "in-only.bundle"
    result = dualvec("build", "-q", inputs["kv"], "--in-only", "-o", target)
    assert result.returncode == 0, result.stderr
    assert "spaces IN," in result.stdout and "OUT" not in result.stdout
    info = json.loads(dualvec("info", target, "--json").stdout)
    assert info["spaces"] == ["in"] and info["has_out"] is False and list(info["pairs"]) == ["in-in"]
    assert list(info["indexes"]) == ["in"]
    text = dualvec("info", target)
    assert text.returncode == 0 and "IN only: no OUT space" in text.stdout


def test_mixed_text_and_binary_pair_builds_through_the_cli(inputs, tmp_path):
    target = tmp_path / "pair.bundle"
    result = dualvec("build", "-q", "--in-vectors", inputs["in_txt"], "--out-vectors", inputs["out_bin"], "-o",
                     target, "--index", "flat")
    assert result.returncode == 0, result.stderr
    info = json.loads(dualvec("info", target, "--json").stdout)
    model = Word2Vec.load(str(inputs["ns"]))
    assert info["vocab_size"] == len(model.wv) and info["dim"] == 16 and info["spaces"] == ["in", "out"]
    assert info["source"]["kind"] == "word2vec-pair"


@pytest.mark.slow
def test_train_then_build_then_info_json(inputs, tmp_path):
    model = tmp_path / "small.model"
    result = dualvec("train", inputs["corpus"], "-o", model, "--dim", 16, "--epochs", 2, "--min-count", 3,
                     "--workers", 1, "--seed", 4, "-q")
    assert result.returncode == 0, result.stderr
    gensim_model = Word2Vec.load(str(model))
    assert gensim_model.negative > 0 and gensim_model.hs == 0
    assert gensim_model.syn1neg.shape == (len(gensim_model.wv), 16)
    assert_one_error_line(dualvec("train", inputs["corpus"], "-o", model, "-q"), "train", "already exists")
    assert_one_error_line(dualvec("train", inputs["corpus"], "-o", tmp_path / "x.model", "--negative", 0, "-q"),
                          "train", "--negative must be > 0")

    bundle = tmp_path / "small.bundle"
    result = dualvec("build", model, "-o", bundle, "--index", "ivf", "--tune-queries", 100, "--eval-queries", 300,
                     "-q")
    assert result.returncode == 0, result.stderr
    info = json.loads(dualvec("info", bundle, "--json").stdout)
    assert info["vocab_size"] == len(gensim_model.wv) and info["dim"] == 16
    assert info["spaces"] == ["in", "out"] and info["has_out"] is True
    assert info["format_version"] == 2 and info["source"]["class"] == "Word2Vec"
    assert {s["kind"] for s in info["indexes"].values()} == {"ivf"}
    assert set(info["pairs"]) == {"in-in", "in-out", "out-in", "out-out"}
    for name, pair in info["pairs"].items():
        assert 0.95 <= pair["recall_uniform"] <= 1.0 and 0.95 <= pair["recall_frequency"] <= 1.0, name
        assert pair["params"]["nprobe"] >= 1, name
    assert info["tokenizer"] == {"kind": "simple"} and info["document_frequencies"] is True
    assert info["bytes"] > 0 and info["build"]["seconds"] > 0
    text = dualvec("info", bundle).stdout
    for needle in (f"{len(gensim_model.wv):,} words", "dimension   16", "spaces      IN, OUT", "IN->OUT", "OUT->IN"):
        assert needle in text, needle


# -------------------------------------------------------------------------------------------------- info refusals

@pytest.fixture(scope="module")
def small_bundle(inputs, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli-bundle") / "small.bundle"
    build_bundle(read_model(inputs["ns"]), path, BuildConfig(index="flat", quiet=True))
    return path


def test_info_refuses_a_damaged_bundle_in_one_line(small_bundle, tmp_path):
    copy = tmp_path / "copy.bundle"
    shutil.copytree(small_bundle, copy)
    data = bytearray((copy / "out.vectors.npy").read_bytes())
    data[-1] ^= 0xFF
    (copy / "out.vectors.npy").write_bytes(bytes(data))
    assert_one_error_line(dualvec("info", copy), "info", "out.vectors.npy fails its sha256 checksum")
    assert dualvec("info", copy, "--skip-checksums").returncode == 0
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 7
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert_one_error_line(dualvec("info", copy), "info", "bundle format version 7", "reads versions 1, 2")
    assert_one_error_line(dualvec("info", tmp_path / "nothing"), "info", "does not exist")


# ---------------------------------------------------------------------------------------------------- interruption

@contextmanager
def sigint_not_ignored():
    """Children started inside get SIGINT at its default action. A shell without job control starts background jobs
    (`.ci/run &` in a script) with SIGINT ignored; an ignored signal stays ignored across exec, Python then installs
    no KeyboardInterrupt handler, and the build would never see the test's SIGINT. A handled signal is reset to its
    default on exec."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_build_leaves_nothing_and_keeps_an_existing_bundle(lee_model, small_bundle, tmp_path,
                                                                          signum):
    """A build of the 4k-word model with HNSW and default tuning runs for seconds; the signal arrives once its
    partial directory exists. Nothing is left but what was there before: nothing (SIGINT), or the bundle a --force
    rebuild was replacing (SIGTERM)."""
    target = tmp_path / "lee.bundle"
    keep = signum == signal.SIGTERM
    if keep:
        shutil.copytree(small_bundle, target)
    before = (target / "manifest.json").read_bytes() if keep else None
    with sigint_not_ignored():
        proc = subprocess.Popen([*DUALVEC, "build", str(lee_model), "-o", str(target), "--index", "hnsw", "-q",
                                 *(["--force"] if keep else [])],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not any(p.name.startswith(".lee.bundle.partial-") for p in tmp_path.iterdir()):
            assert proc.poll() is None, f"the build ended before it could be interrupted: {proc.communicate()}"
            assert time.monotonic() < deadline, "the build never started writing"
            time.sleep(0.02)
        time.sleep(0.3)  # well into normalizing, indexing or tuning
        assert proc.poll() is None, "the build finished before it could be interrupted"
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "dualvec: interrupted"
    if keep:
        assert (target / "manifest.json").read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["lee.bundle"]
    else:
        nothing_at(target)
        assert list(tmp_path.iterdir()) == []
