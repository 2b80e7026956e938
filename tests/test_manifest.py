"""The typed manifest: every field of every part survives a JSON round trip (a field added to a dataclass is
written and read back without anyone listing it again), unknown keys are refused by name, and from format version
2 a changed byte anywhere in manifest.json is refused like a changed byte in a data file."""
from __future__ import annotations

import json
import shutil
from dataclasses import fields
from pathlib import Path

import pytest

from dualvec.kernel.ann import IndexSpec, SearchParams
from dualvec.kernel.bundle import read_bundle, read_manifest
from dualvec.kernel.errors import BundleError
from dualvec.kernel.manifest import (BuildRecord, FileEntry, IndexEntry, Manifest, PairEntry, TuningConfig,
                                     canonical_sha256)


def full_manifest() -> Manifest:
    """A manifest whose every field differs from its default."""
    tuning = TuningConfig(**{f.name: (f.default + 1 if isinstance(f.default, int) else f.default / 2)
                             for f in fields(TuningConfig)})
    return Manifest(
        vocab_size=3, dim=4, spaces=["in", "out"],
        indexes={"in": IndexEntry(IndexSpec("hnsw", "HNSW32,SQ8", ef_construction=40, index_dim=8), "graph", 1.5,
                                  "in.index.faiss")},
        files={"vocab.tsv": FileEntry(12, "ab" * 32)}, source={"kind": "gensim", "path": "m.model"},
        pairs={"in-out": PairEntry(SearchParams(ef_search=48, hubs=2048, rerank=2), 0.99, 0.97, True, False, 103.0,
                                   5000, [{"params": {"ef_search": 48}, "tune_recall": 0.99}])},
        tuning=tuning, tokenizer={"lowercase": True},
        build=BuildRecord(12.5, {"in": 6.0, "tuning": 3.0}, 900.0, 2, "1.9.0"), counts_known=False,
        dualvec_version="9.9", created="2026-01-01T00:00:00Z")


def test_every_field_survives_a_json_round_trip():
    m = full_manifest().sealed()
    again = Manifest.from_dict(json.loads(json.dumps(m.to_dict())))
    assert again == m
    assert again.tuning == m.tuning and len(json.loads(json.dumps(m.to_dict()))["tuning"]) == len(fields(TuningConfig))


def test_a_new_field_of_the_tuning_or_the_index_spec_survives(monkeypatch):
    """The parts are written with dataclasses.asdict and read by field name, so nothing lists the fields twice:
    a dataclass with one more field round-trips it."""
    from dataclasses import make_dataclass

    import dualvec.kernel.manifest as manifest_module

    Wider = make_dataclass("TuningConfig", [("new_knob", int, 0)], bases=(TuningConfig,), frozen=True)
    monkeypatch.setattr(manifest_module, "TuningConfig", Wider)
    m = Manifest(vocab_size=1, dim=1, spaces=["in"], indexes={}, files={}, tuning=Wider(new_knob=7))
    assert Manifest.from_dict(json.loads(json.dumps(m.to_dict()))).tuning.new_knob == 7
    spec = IndexSpec("hnsw", "HNSW32")
    entry = IndexEntry(spec, "x")
    assert IndexEntry.from_dict(json.loads(json.dumps(entry.to_dict())), "indexes.in") == entry


@pytest.mark.parametrize("where, patch", [
    ("tuning", {"tuning": {"target_recall": 0.9, "unheard_of": 1}}),
    ("indexes.in.spec", {"indexes": {"in": {"spec": {"kind": "flat", "colour": "red"}}}}),
    ("manifest.json", {"surprise": 1}),
])
def test_an_unknown_key_is_refused_by_name(where, patch):
    data = Manifest(vocab_size=1, dim=1, spaces=["in"], indexes={"in": IndexEntry(IndexSpec("flat"))},
                    files={}).to_dict()
    data.update(patch)
    with pytest.raises(BundleError, match="this dualvec does not know") as err:
        Manifest.from_dict(data)
    assert where in str(err.value)


def test_a_changed_byte_in_a_version_2_manifest_is_refused(lee_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(lee_bundle, copy)
    assert read_manifest(copy).content_id == canonical_sha256(
        {k: v for k, v in json.loads((copy / "manifest.json").read_text()).items() if k != "content_id"})
    text = (copy / "manifest.json").read_text()
    assert '"dim": ' in text
    dim = read_manifest(copy).dim
    (copy / "manifest.json").write_text(text.replace(f'"vocab_size": ', '"vocab_size": 1', 1))
    with pytest.raises(BundleError, match="manifest.json does not match its content_id"):
        read_bundle(copy)
    (copy / "manifest.json").write_text(text)
    assert read_bundle(copy).dim == dim


def test_the_committed_version_1_fixtures_still_load():
    for kind in ("flat", "hnsw", "ivf"):
        bundle = read_bundle(Path(__file__).parent / "fixtures" / "bundle_v1" / kind)
        assert bundle.manifest.format_version == 1 and bundle.manifest.content_id == ""
