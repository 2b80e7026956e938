"""Reading a model's two spaces from what users have (gensim full models, fastText .bin, word2vec-format pairs), and
refusing, with a sentence naming the problem, every source that has no real OUT space or is malformed.

The models are tiny real ones trained here on gensim's Lee corpus (dim 16, one or two epochs)."""
from __future__ import annotations

import struct
from pathlib import Path

import gensim
import numpy as np
import pytest
from gensim.models import FastText, KeyedVectors, Word2Vec
from gensim.models.fasttext import load_facebook_model, save_facebook_model

from dualvec.kernel.bundle import read_bundle
from dualvec.kernel.errors import ModelError
from dualvec.indexer.build import BuildConfig, build_bundle
from dualvec.indexer.model_readers import is_fasttext_bin, read_model, read_vector_pair
from dualvec.indexer.word2vec_format import detect_binary, read_word2vec, write_word2vec
from dualvec.kernel.spaces import Space
from dualvec.kernel.tokenizer import Tokenizer

GENSIM_DATA = Path(gensim.__file__).parent / "test" / "test_data"
DIM = 16


# ---------------------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def sentences() -> list[list[str]]:
    tok = Tokenizer("simple")
    lines = (GENSIM_DATA / "lee_background.cor").read_text(encoding="utf-8").splitlines()
    return [tok(line) for line in lines if line.strip()]


def _w2v(sentences, **kw) -> Word2Vec:
    params = dict(vector_size=DIM, min_count=5, epochs=2, workers=1, seed=5) | kw
    return Word2Vec(sentences, **params)


@pytest.fixture(scope="module")
def mdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("readers")


@pytest.fixture(scope="module")
def ns_model(sentences, mdir) -> tuple[Path, Word2Vec]:
    """A negative-sampling Word2Vec saved with save(): the normal input."""
    model = _w2v(sentences, negative=5, hs=0)
    path = mdir / "ns.model"
    model.save(str(path))
    return path, model


@pytest.fixture(scope="module")
def hs_model_path(sentences, mdir) -> Path:
    path = mdir / "hs.model"
    _w2v(sentences, hs=1, negative=0).save(str(path))
    return path


@pytest.fixture(scope="module")
def kv_path(ns_model, mdir) -> Path:
    path = mdir / "ns.kv"
    ns_model[1].wv.save(str(path))
    return path


@pytest.fixture(scope="module")
def fasttext_model(sentences) -> FastText:
    return FastText(sentences, vector_size=DIM, min_count=5, epochs=2, workers=1, seed=5, negative=5, bucket=2000)


@pytest.fixture(scope="module")
def zero_out_bin(fasttext_model, mdir) -> Path:
    """A fastText .bin whose output matrix is all zeros, as some published releases are."""
    path = mdir / "zero-output.bin"
    saved = fasttext_model.syn1neg.copy()
    try:
        fasttext_model.syn1neg[:] = 0
        save_facebook_model(fasttext_model, str(path))
    finally:
        fasttext_model.syn1neg[:] = saved
    return path


@pytest.fixture(scope="module")
def hs_fasttext_bin(sentences, mdir) -> Path:
    """A fastText .bin trained with `-loss hs`. The fastText tool writes its default neg (5) in the header even then,
    so the header's neg field is patched to 5 as fastText would have it."""
    model = FastText(sentences, vector_size=DIM, min_count=5, epochs=1, workers=1, seed=5, hs=1, negative=0,
                     bucket=2000)
    path = mdir / "hs-fasttext.bin"
    save_facebook_model(model, str(path))
    data = bytearray(path.read_bytes())
    header = struct.unpack("<9i", data[:36])  # magic, version, dim, ws, epoch, minCount, neg, wordNgrams, loss
    assert header[0] == 793712314 and header[8] == 1
    data[24:28] = struct.pack("<i", 5)
    path.write_bytes(bytes(data))
    return path


def unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------- gensim full models

def test_gensim_word2vec_gives_wv_vectors_as_in_and_syn1neg_as_out(ns_model):
    path, model = ns_model
    source = read_model(path)
    assert source.words == list(model.wv.index_to_key)
    assert source.counts.tolist() == [model.wv.get_vecattr(w, "count") for w in source.words]
    assert np.all(np.diff(source.counts) <= 0), "rows are most frequent first"
    np.testing.assert_array_equal(source.in_vectors, model.wv.vectors)
    np.testing.assert_array_equal(source.out_vectors, model.syn1neg)
    assert source.source["kind"] == "gensim" and source.source["class"] == "Word2Vec"
    assert source.source["negative"] == 5 and source.source["hs"] == 0 and len(source.source["sha256"]) == 64


def test_gensim_fasttext_saved_with_save_gives_syn1neg_as_out(fasttext_model, mdir):
    path = mdir / "ft.model"
    fasttext_model.save(str(path))
    source = read_model(path)
    assert source.source["class"] == "FastText"
    assert source.words == list(fasttext_model.wv.index_to_key)
    np.testing.assert_array_equal(source.out_vectors, fasttext_model.syn1neg)


def test_hierarchical_softmax_only_model_is_refused_for_its_tree_nodes(hs_model_path):
    with pytest.raises(ModelError) as err:
        read_model(hs_model_path)
    message = str(err.value)
    assert "hierarchical softmax" in message and "syn1" in message and "negative sampling" in message
    assert "Huffman-tree nodes, not words" in message and "--in-only" in message


def test_hierarchical_softmax_only_model_gives_in_only_when_asked(hs_model_path):
    source = read_model(hs_model_path, in_only=True)
    assert source.out_vectors is None and source.in_vectors.shape[1] == DIM


def test_saved_keyedvectors_are_refused_unless_in_only(kv_path, ns_model):
    with pytest.raises(ModelError, match=r"saved KeyedVectors hold IN vectors only.*pass --in-only"):
        read_model(kv_path)
    source = read_model(kv_path, in_only=True)
    assert source.out_vectors is None and source.source["class"] == "KeyedVectors"
    np.testing.assert_array_equal(source.in_vectors, ns_model[1].wv.vectors)


def test_a_model_with_an_empty_vocabulary_is_refused(mdir):
    path = mdir / "empty-vocab.model"
    Word2Vec(vector_size=DIM).save(str(path))
    with pytest.raises(ModelError, match="the vocabulary is empty"):
        read_model(path)


# ---------------------------------------------------------------------------------------------------- fastText .bin

@pytest.mark.parametrize("name, n_words, dim", [("lee_fasttext.bin", 1762, 10),        # before fastText 0.2: no magic
                                                ("lee_fasttext_new.bin", 1763, 10),
                                                ("crime-and-punishment.bin", 291, 5)])
def test_fasttext_bin_from_gensim_test_data_is_read_with_its_output_matrix(name, n_words, dim):
    path = GENSIM_DATA / name
    assert is_fasttext_bin(path)
    source = read_model(path)
    reference = load_facebook_model(str(path))
    assert source.source["kind"] == "fasttext-bin"
    assert source.words == list(reference.wv.index_to_key) and len(source.words) == n_words
    assert source.in_vectors.shape == source.out_vectors.shape == (n_words, dim)
    np.testing.assert_array_equal(source.out_vectors, reference.syn1neg)
    np.testing.assert_array_equal(source.in_vectors, reference.wv.vectors)
    assert np.any(source.out_vectors)


def test_supervised_fasttext_bin_is_refused_as_supervised():
    with pytest.raises(ModelError) as err:
        read_model(GENSIM_DATA / "pang_lee_polarity_fasttext.bin")
    message = str(err.value)
    assert "Supervised" in message and "labels, not words" in message and "pang_lee_polarity_fasttext.bin" in message


def test_gensim_fasttext_bin_round_trip_keeps_out(fasttext_model, mdir):
    path = mdir / "ft.bin"
    save_facebook_model(fasttext_model, str(path))
    source = read_model(path)
    np.testing.assert_array_equal(source.out_vectors, fasttext_model.syn1neg)


def test_fasttext_bin_with_all_zero_output_matrix_is_refused(zero_out_bin):
    with pytest.raises(ModelError, match=r"output matrix is all zeros.*no OUT space.*--in-only"):
        read_model(zero_out_bin)
    source = read_model(zero_out_bin, in_only=True)
    assert source.out_vectors is None and np.any(source.in_vectors)


def test_fasttext_bin_trained_with_hierarchical_softmax_is_refused_despite_neg_in_header(hs_fasttext_bin):
    with pytest.raises(ModelError) as err:
        read_model(hs_fasttext_bin)
    message = str(err.value)
    assert "hierarchical softmax" in message and "Huffman-tree nodes" in message and "negative sampling" in message


def test_truncated_fasttext_bin_is_refused(fasttext_model, mdir):
    path = mdir / "ft-truncated.bin"
    save_facebook_model(fasttext_model, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ModelError, match=r"ft-truncated.bin: cannot be read, the file is truncated or malformed"):
        read_model(path)


def test_model_format_is_detected_from_bytes_not_names(ns_model, mdir):
    assert not is_fasttext_bin(ns_model[0])
    vec = mdir / "looks-like.bin"
    write_word2vec(vec, ["a", "b"], np.ones((2, 3)), binary=False)
    assert not is_fasttext_bin(vec)
    with pytest.raises(ModelError, match="not a gensim model saved with save.*--in-vectors/--out-vectors"):
        read_model(vec)


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"", "the file is empty"),
    (b"this is not a model\n" * 10, "not a gensim model saved with save"),
])
def test_missing_empty_or_foreign_model_file_is_refused(tmp_path, content, message):
    path = tmp_path / "model.model"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelError, match=message) as err:
        read_model(path)
    assert str(path) in str(err.value)


def test_a_directory_or_truncated_gensim_model_is_refused(tmp_path, ns_model):
    with pytest.raises(ModelError, match="is a directory, expected a file"):
        read_model(tmp_path)
    truncated = tmp_path / "truncated.model"
    truncated.write_bytes(ns_model[0].read_bytes()[:5000])
    with pytest.raises(ModelError, match="not a gensim model saved with save.*truncated"):
        read_model(truncated)


# ---------------------------------------------------------------------------------------- word2vec-format file pairs

def _write(path: Path, words, rows, binary: bool, writer: str) -> Path:
    if writer == "dualvec":
        write_word2vec(path, words, rows, binary=binary)
    else:
        kv = KeyedVectors(rows.shape[1])
        kv.add_vectors(list(words), np.asarray(rows, dtype=np.float32))
        kv.save_word2vec_format(str(path), binary=binary)
    return path


@pytest.mark.parametrize("writer", ["dualvec", "gensim"])
@pytest.mark.parametrize("in_binary, out_binary", [(False, False), (True, True), (False, True), (True, False)])
def test_word2vec_pair_round_trips_and_builds_the_model_normalized(tmp_path, ns_model, writer, in_binary,
                                                                   out_binary):
    _, model = ns_model
    words = list(model.wv.index_to_key)
    in_path = _write(tmp_path / "in.vec", words, model.wv.vectors, in_binary, writer)
    out_path = _write(tmp_path / "out.vec", words, model.syn1neg, out_binary, writer)
    assert detect_binary(in_path) == in_binary and detect_binary(out_path) == out_binary

    source = read_vector_pair(in_path, out_path)
    assert source.words == words and source.source["kind"] == "word2vec-pair"
    # binary is exact; so is text (gensim writes each float32's shortest repr, dualvec 9 significant digits)
    np.testing.assert_array_equal(source.in_vectors, model.wv.vectors)
    np.testing.assert_array_equal(source.out_vectors, model.syn1neg)

    bundle_path = tmp_path / "pair.bundle"
    build_bundle(source, bundle_path, BuildConfig(index="flat", quiet=True))
    bundle = read_bundle(bundle_path)
    assert bundle.vocab.words == words and bundle.manifest.spaces == ["in", "out"]
    np.testing.assert_allclose(bundle.vectors[Space.IN], unit(model.wv.vectors), atol=1e-6)
    np.testing.assert_allclose(bundle.vectors[Space.OUT], unit(model.syn1neg), atol=1e-6)
    np.testing.assert_allclose(bundle.norms[Space.OUT], np.linalg.norm(model.syn1neg, axis=1), rtol=1e-5)


def test_text_and_binary_files_of_the_same_rows_read_the_same_and_a_forced_wrong_format_is_refused(tmp_path):
    rows = np.random.default_rng(0).normal(size=(50, 7)).astype(np.float32)
    words = [f"w{i}" for i in range(50)]
    text, binary = tmp_path / "v.txt", tmp_path / "v.bin"
    write_word2vec(text, words, rows, binary=False)
    write_word2vec(binary, words, rows, binary=True)
    assert not detect_binary(text) and detect_binary(binary)
    for path in (text, binary):
        got_words, got_rows = read_word2vec(path)
        assert got_words == words
        np.testing.assert_array_equal(got_rows, rows)
    with pytest.raises(ModelError, match="bytes after the 50 rows"):
        read_word2vec(text, binary=True)
    with pytest.raises(ModelError, match="not valid UTF-8 text"):
        read_word2vec(binary, binary=False)


@pytest.fixture(scope="module")
def pair_files(ns_model, mdir) -> dict[str, Path]:
    """A good IN text file and OUT files each wrong in one way."""
    _, model = ns_model
    words = list(model.wv.index_to_key)
    out = model.syn1neg
    d = mdir / "pairs"
    d.mkdir()
    files = {"in": d / "in.txt", "out": d / "out.bin"}
    write_word2vec(files["in"], words, model.wv.vectors, binary=False)
    write_word2vec(files["out"], words, out, binary=True)

    def add(name, w, rows, binary=False):
        files[name] = d / name
        write_word2vec(files[name], w, rows, binary=binary)

    add("order", [words[0], words[2], words[1]] + words[3:], out, binary=True)
    add("count", words[:-1], out[:-1])
    add("dim", words, out[:, : DIM // 2], binary=True)
    add("words", words[:-1] + ["zzzunseen"], out)
    add("dup", words[:-1] + [words[10]], out)
    nan = out.copy()
    nan[7, 3] = np.nan
    add("nan", words, nan)
    inf = out.copy()
    inf[9, 0] = -np.inf
    add("inf", words, inf, binary=True)
    zero = out.copy()
    zero[4] = 0.0
    add("zero", words, zero)
    data = files["out"].read_bytes()
    files["truncated"] = d / "truncated.bin"
    files["truncated"].write_bytes(data[: len(data) - 3 * 4 * DIM])
    lines = files["in"].read_text().splitlines()
    files["truncated_text"] = d / "truncated.txt"
    files["truncated_text"].write_text("\n".join(lines[:-3]) + "\n")
    bad = list(lines)
    bad[5] = bad[5].rsplit(" ", 1)[0] + " 0.1x"
    files["not_a_number"] = d / "not-a-number.txt"
    files["not_a_number"].write_text("\n".join(bad) + "\n")
    short = list(lines)
    short[6] = short[6].rsplit(" ", 1)[0]
    files["short_row"] = d / "short-row.txt"
    files["short_row"].write_text("\n".join(short) + "\n")
    files["bad_header"] = d / "bad-header.txt"
    files["bad_header"].write_text("hello world\n" + "\n".join(lines[1:]) + "\n")
    files["empty_vocab"] = d / "empty.txt"
    files["empty_vocab"].write_text(f"0 {DIM}\n")
    files["extra"] = d / "extra.bin"
    files["extra"].write_bytes(data + b"surplus 1 2 3\n")
    return files


def test_the_good_pair_reads(pair_files):
    source = read_vector_pair(pair_files["in"], pair_files["out"])
    assert source.out_vectors.shape == source.in_vectors.shape
    assert not source.counts.any()  # word2vec files carry no counts


@pytest.mark.parametrize("out, message", [
    ("order", r"IN and OUT list the same words in a different order: row 2 is '\w+' in IN but '\w+' in OUT"),
    ("count", r"IN has \d+ words but OUT has \d+"),
    ("dim", rf"IN has dimension {DIM} but OUT has {DIM // 2}"),
    ("words", r"OUT has words that IN lacks: 'zzzunseen'"),
    ("dup", r"dup: duplicate words: '\w+'"),
    ("truncated", r"truncated.bin: truncated: row \d+ of \d+ \('\w+'\) needs 64 bytes of vector"),
    ("truncated_text", r"truncated.txt: truncated: the header announces \d+ rows, the file has \d+"),
    ("not_a_number", r"not-a-number.txt: row 5 \('\w+'\) has a value that is not a number"),
    ("short_row", rf"short-row.txt: row 6 \('\w+'\) has {DIM - 1} values, expected {DIM}"),
    ("bad_header", r"bad-header.txt: not a word2vec-format file \(header is b'hello world', expected 'WORDS DIM'\)"),
    ("empty_vocab", r"empty.txt: the vocabulary is empty \(header says 0 words\)"),
    ("extra", r"extra.bin: \d+ bytes after the \d+ rows the header announces"),
])
def test_a_bad_out_file_is_refused_naming_the_problem(pair_files, out, message):
    with pytest.raises(ModelError, match=message) as err:
        read_vector_pair(pair_files["in"], pair_files[out])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["nan", "inf"])
def test_a_non_finite_out_file_is_refused_when_normalized_naming_the_space_and_word(pair_files, tmp_path, name):
    source = read_vector_pair(pair_files["in"], pair_files[name])
    with pytest.raises(ModelError, match=r"OUT space: non-finite values \(NaN or inf\) in the vectors of '\w+'"):
        build_bundle(source, tmp_path / "b", BuildConfig(index="flat", quiet=True))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["truncated", "truncated_text", "dup", "empty_vocab"])
def test_a_bad_in_file_is_refused_too(pair_files, name):
    with pytest.raises(ModelError):
        read_vector_pair(pair_files[name], pair_files["out"])


def test_zero_vectors_pass_reading_and_are_refused_when_normalized(pair_files, tmp_path):
    source = read_vector_pair(pair_files["in"], pair_files["zero"])
    with pytest.raises(ModelError, match=r"OUT space: zero vectors cannot be normalized: '\w+'"):
        build_bundle(source, tmp_path / "b", BuildConfig(index="flat", quiet=True))
    assert list(tmp_path.iterdir()) == []


def test_missing_paths_are_named(pair_files, tmp_path):
    with pytest.raises(ModelError, match=r"--in-vectors .*nothere.txt: no such file"):
        read_vector_pair(tmp_path / "nothere.txt", pair_files["out"])
    with pytest.raises(ModelError, match=r"--out-vectors .*nothere.bin: no such file"):
        read_vector_pair(pair_files["in"], tmp_path / "nothere.bin")
    with pytest.raises(ModelError, match="no such file"):
        read_word2vec(tmp_path / "nothere.txt")


def test_in_file_alone_is_refused_unless_in_only(pair_files):
    with pytest.raises(ModelError, match="--out-vectors is missing.*--in-only"):
        read_vector_pair(pair_files["in"], None)
    source = read_vector_pair(pair_files["in"], None, in_only=True)
    assert source.out_vectors is None
