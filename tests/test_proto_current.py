"""The committed generated code is what `scripts/gen_proto.py` makes of proto/dualvec/v1/dualvec.proto today,
byte for byte (with the grpcio-tools version pinned in pyproject.toml's [test] extra)."""
from __future__ import annotations

import difflib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "proto" / "dualvec" / "v1"
GENERATED = ("dualvec_pb2.py", "dualvec_pb2_grpc.py", "dualvec_pb2.pyi")


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gen_proto")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"scripts/gen_proto.py failed:\n{proc.stdout}\n{proc.stderr}"
    return out / "dualvec" / "v1"


@pytest.mark.parametrize("name", GENERATED)
def test_committed_generated_code_is_current(regenerated, name):
    fresh = (regenerated / name).read_bytes()
    committed = (COMMITTED / name).read_bytes()
    if fresh != committed:
        diff = "".join(list(difflib.unified_diff(
            committed.decode("utf-8", "replace").splitlines(True), fresh.decode("utf-8", "replace").splitlines(True),
            f"committed/{name}", f"regenerated/{name}"))[:40])
        pytest.fail(f"proto/dualvec/v1/{name} is stale: it differs from what dualvec.proto generates now. Run "
                    f"`python scripts/gen_proto.py` and commit the result.\n{diff}", pytrace=False)


def test_generated_code_describes_the_committed_proto():
    from dualvec.v1 import dualvec_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["DualVec"]
    assert pb.DESCRIPTOR.package == "dualvec.v1"
    assert [m.name for m in service.methods][:6] == ["Search", "BatchSearch", "GetVectors", "Similarity",
                                                     "ScoreDocuments", "GetInfo"]
    fields = {f.name: f.number for f in pb.SearchRequest.DESCRIPTOR.fields}
    assert fields == {"positive": 1, "negative": 2, "vector": 3, "query_space": 4, "target_space": 5, "k": 6,
                      "include_query_words": 7, "restrict_vocab": 8, "exact": 9, "model": 10}
    assert {v.name: v.number for v in pb.Space.DESCRIPTOR.values} == {"SPACE_UNSPECIFIED": 0, "IN": 1, "OUT": 2}
