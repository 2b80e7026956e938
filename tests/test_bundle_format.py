"""The bundle reader refuses what it should, with a sentence naming the problem (wrong version, damaged or missing
file), and the writer puts a bundle in place atomically. Works on copies of the committed version-1 fixture."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dualvec.kernel.bundle import BundleWriter, read_bundle, read_manifest
from dualvec.kernel.errors import BundleError
from dualvec.kernel.manifest import Manifest
from dualvec.server.host.prefault import prefault_pages, prepare_for_serving

FIXTURES = Path(__file__).parent / "fixtures" / "bundle_v1"


@pytest.fixture
def bundle_copy(tmp_path) -> Path:
    """A fresh copy of the committed HNSW bundle (it has index and hub files as well as vectors)."""
    path = tmp_path / "copy.bundle"
    shutil.copytree(FIXTURES / "hnsw", path)
    return path


def edit_manifest(path: Path, **changes) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    for key, value in changes.items():
        if value is None:
            manifest.pop(key)
        else:
            manifest[key] = value
    (path / "manifest.json").write_text(json.dumps(manifest))


def one_sentence(message: str) -> None:
    assert "\n" not in message and message.strip() == message and len(message) < 400


def test_an_intact_copy_reads(bundle_copy):
    assert read_bundle(bundle_copy).vocab_size == 40


@pytest.mark.parametrize("name", ["in.vectors.npy", "out.index.faiss", "vocab.tsv", "hubs.in-out.npy",
                                  "out.norms.npy"])
def test_a_tampered_file_fails_its_checksum_naming_the_file(bundle_copy, name):
    data = bytearray((bundle_copy / name).read_bytes())
    data[len(data) - 5] ^= 0x01  # same size, one bit different
    (bundle_copy / name).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{name.replace('.', '[.]')} fails its sha256 checksum") as err:
        read_bundle(bundle_copy)
    one_sentence(str(err.value))
    assert str(bundle_copy) in str(err.value)
    # without checksums the size check alone lets the same-size file through (a damaged vocabulary line is
    # still refused by the parser, naming the file)
    try:
        read_bundle(bundle_copy, checksums=False)
    except BundleError as exc:
        assert name == "vocab.tsv" and name in str(exc)


def test_a_file_of_another_size_is_named_even_without_checksums(bundle_copy):
    with open(bundle_copy / "out.vectors.npy", "ab") as fh:
        fh.write(b"\0" * 16)
    with pytest.raises(BundleError, match=r"out[.]vectors[.]npy has 1424 bytes, the manifest says 1408") as err:
        read_bundle(bundle_copy, checksums=False)
    one_sentence(str(err.value))


@pytest.mark.parametrize("name", ["in.vectors.npy", "out.index.faiss", "vocab.tsv", "hubs.out-in.npy"])
def test_a_missing_file_is_named(bundle_copy, name):
    (bundle_copy / name).unlink()
    with pytest.raises(BundleError, match=rf"incomplete: {name.replace('.', '[.]')} is missing") as err:
        read_bundle(bundle_copy)
    one_sentence(str(err.value))


@pytest.mark.parametrize("version", [0, 3, 99, "1"])
def test_another_format_version_is_refused_with_a_sentence(bundle_copy, version):
    edit_manifest(bundle_copy, format_version=version)
    with pytest.raises(BundleError) as err:
        read_bundle(bundle_copy)
    message = str(err.value)
    one_sentence(message)
    assert f"format version {version}" in message and "reads versions 1, 2" in message
    assert "rebuild it with `dualvec build`" in message


def test_a_manifest_without_format_version_is_refused(bundle_copy):
    edit_manifest(bundle_copy, format_version=None)
    with pytest.raises(BundleError, match="reads versions 1, 2"):
        read_manifest(bundle_copy)


def test_not_a_bundle_is_said_so(tmp_path, bundle_copy):
    with pytest.raises(BundleError, match="does not exist"):
        read_bundle(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BundleError, match="is not a bundle directory"):
        read_bundle(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="manifest.json is missing"):
        read_bundle(tmp_path / "empty")
    edit_manifest(bundle_copy, format="something-else")
    with pytest.raises(BundleError, match="is not a dualvec bundle manifest"):
        read_bundle(bundle_copy)
    (bundle_copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="is not valid JSON"):
        read_bundle(bundle_copy)


def test_a_manifest_lacking_a_field_is_refused(bundle_copy):
    edit_manifest(bundle_copy, spaces=None)
    with pytest.raises(BundleError, match="lacks the field 'spaces'"):
        read_bundle(bundle_copy)


def test_an_index_of_another_dimension_is_refused_naming_both(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    indexes = manifest["indexes"]
    indexes["in"]["spec"]["index_dim"] = manifest["dim"] + 8  # says the index works on padded rows; it does not
    edit_manifest(bundle_copy, indexes=indexes)
    with pytest.raises(BundleError) as err:
        read_bundle(bundle_copy)
    one_sentence(str(err.value))
    assert "in.index.faiss" in str(err.value) and f"expected {manifest['dim'] + 8}" in str(err.value)


def test_writer_renames_into_place_only_at_commit(tmp_path):
    target = tmp_path / "new.bundle"
    with BundleWriter(target) as writer:
        writer.write_vocab(["a", "b"], np.array([2, 1], dtype=np.int64))
        assert not target.exists()
        assert writer.tmp.parent == tmp_path and writer.tmp.name.startswith(".new.bundle.partial-")
        writer.commit(Manifest(vocab_size=2, dim=1, spaces=[], indexes={}, files={}))
    assert read_manifest(target).files["vocab.tsv"].bytes == len("a\t2\nb\t1\n")
    assert [p.name for p in tmp_path.iterdir()] == ["new.bundle"]


def test_writer_left_without_commit_removes_everything(tmp_path):
    target = tmp_path / "new.bundle"
    with pytest.raises(KeyboardInterrupt):
        with BundleWriter(target) as writer:
            writer.write_array("in.vectors.npy", np.ones((3, 2), np.float32))
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_writer_keeps_an_existing_target_unless_forced(tmp_path, bundle_copy):
    before = (bundle_copy / "manifest.json").read_bytes()
    with pytest.raises(BundleError, match="already exists; pass --force"):
        BundleWriter(bundle_copy)
    assert (bundle_copy / "manifest.json").read_bytes() == before
    with BundleWriter(bundle_copy, force=True) as writer:
        writer.write_vocab(["a"], np.array([1], dtype=np.int64))
        writer.commit(Manifest(vocab_size=1, dim=1, spaces=[], indexes={}, files={}))
    assert read_manifest(bundle_copy).vocab_size == 1
    assert sorted(p.name for p in bundle_copy.iterdir()) == ["manifest.json", "vocab.tsv"]
    assert [p.name for p in tmp_path.iterdir()] == ["copy.bundle"]  # no .old-* or .partial-* left


def test_writer_never_replaces_something_that_is_not_a_bundle(tmp_path):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(BundleError, match="is not a dualvec bundle; refusing to replace it"):
        BundleWriter(other, force=True)
    assert (other / "cat.jpg").exists()
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    with pytest.raises(BundleError, match="is not a dualvec bundle; refusing to replace it"):
        BundleWriter(a_file, force=True)
    assert a_file.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "photos"]


def _mapped_kib(path: Path) -> tuple[int, int]:
    """(Size, Rss) in KiB of this process's memory maps of one file, from /proc/self/smaps."""
    size = rss = 0
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
            inside = line.endswith(str(path))
        elif inside and fields[0] == "Size:":
            size += int(fields[1])
        elif inside and fields[0] == "Rss:":
            rss += int(fields[1])
    return size, rss


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc")
def test_prefault_pages_maps_every_page_of_a_memory_map(tmp_path):
    path = (tmp_path / "rows.npy").resolve()
    np.save(path, np.arange(1_000_000, dtype=np.float32).reshape(2_500, 400))  # 4 MB
    rows = np.load(path, mmap_mode="r")
    size, rss = _mapped_kib(path)
    assert size >= 3_900 and rss < size // 4  # mapped, untouched: pages fault in on first use
    prefault_pages(np.asarray(rows))
    size, rss = _mapped_kib(path)
    assert rss >= size - 8
    assert float(rows[-1, -1]) == 999_999.0


def test_a_prefaulted_bundle_reads_the_same_values(bundle_copy):
    lazy = read_bundle(bundle_copy, checksums=False)
    eager = read_bundle(bundle_copy, checksums=False)
    prepare_for_serving(eager)
    for space in lazy.vectors:
        assert np.array_equal(eager.vectors[space], lazy.vectors[space])


def test_a_version_2_manifest_without_its_content_id_is_refused(bundle_copy):
    edit_manifest(bundle_copy, format_version=2)
    with pytest.raises(BundleError, match="lacks the field 'content_id' that format version 2 requires") as err:
        read_bundle(bundle_copy)
    one_sentence(str(err.value))
