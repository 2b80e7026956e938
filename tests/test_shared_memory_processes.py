"""`dualvec serve BUNDLE --processes 2` holds the bundle's vectors once: after both worker processes have searched
every row of both spaces, each maps the whole of each vectors file and its pages are shared (Shared_Clean in
/proc/PID/smaps covers the file; nothing of it is private or dirty; its proportional share is at most half), and
each worker's smaps_rollup counts at least the vectors' size as shared clean memory. The bundle is 2 x 6 MiB of
vectors, exact (every search reads every row of its target space)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from dualvec.indexer.build import BuildConfig, build_bundle
from dualvec.indexer.source_model import SourceModel
from dualvec.v1 import dualvec_pb2 as pb
from dualvec.v1 import dualvec_pb2_grpc as pb_grpc

from test_server_process import ServeProcess
from test_worker_processes import children_of, needs_two_cpus

pytestmark = pytest.mark.slow  # starts server processes and signals them: .ci/run covers it, the fast loop does not

N, D = 16_384, 96  # 6 MiB of float32 per space
FIELDS = ("Rss", "Pss", "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty")


@pytest.fixture(scope="module")
def big_bundle(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    source = SourceModel(words=[f"w{i}" for i in range(N)], counts=np.arange(N, 0, -1, dtype=np.int64),
                         in_vectors=rng.normal(size=(N, D)).astype(np.float32),
                         out_vectors=rng.normal(size=(N, D)).astype(np.float32), source={"kind": "test"})
    path = tmp_path_factory.mktemp("shared") / "big.bundle"
    build_bundle(source, path, BuildConfig(index="flat", quiet=True))
    for f in path.iterdir():  # written back to disk: page-cache pages of a freshly written file count as dirty
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    return path


def file_mapping(pid: int, path: Path) -> dict[str, int]:
    """Sum of each FIELDS (bytes) over the mappings of ``path`` in /proc/PID/smaps."""
    totals = dict.fromkeys(FIELDS, 0)
    inside = False
    target = str(path.resolve())
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and ":" not in head[0]:  # a mapping's first line
            inside = len(head) >= 6 and head[5] == target
        elif inside and head and head[0].rstrip(":") in FIELDS:
            totals[head[0].rstrip(":")] += int(head[1]) * 1024
    return totals


def rollup(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        out[name] = int(value.split()[0]) * 1024
    return out


@needs_two_cpus
@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs /proc/PID/smaps_rollup")
def test_two_worker_processes_share_the_pages_of_the_vectors(big_bundle):
    files = [big_bundle / "in.vectors.npy", big_bundle / "out.vectors.npy"]
    sizes = {f: f.stat().st_size for f in files}
    server = ServeProcess(big_bundle, "--processes", "2", "--skip-checksums")
    try:
        address = server.wait_started()
        kids = children_of(server.proc.pid)
        assert len(kids) == 2, server.log()
        # new connections until both workers have searched both spaces (the kernel spreads connections over them)
        deadline = time.monotonic() + 60
        while True:
            with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                stub = pb_grpc.DualVecStub(ch)
                for target in (pb.IN, pb.OUT):
                    resp = stub.Search(pb.SearchRequest(positive=["w7"], query_space=pb.IN, target_space=target,
                                                        k=5, exact=True), timeout=30)
                    assert len(resp.neighbors) == 5
            maps = {(k, f): file_mapping(k, f) for k in kids for f in files}
            if all(m["Rss"] >= 0.95 * sizes[f] for (_, f), m in maps.items()):
                break
            assert time.monotonic() < deadline, f"a worker never read all the vectors: {maps}"
        for (kid, f), m in maps.items():
            what = f"worker {kid}, {f.name} ({sizes[f]} bytes): {m}"
            assert m["Shared_Clean"] >= 0.95 * sizes[f], what
            assert m["Private_Dirty"] == 0 and m["Shared_Dirty"] == 0, what
            assert m["Private_Clean"] <= 0.05 * sizes[f], what
            assert m["Pss"] <= 0.55 * m["Rss"], what  # each page counted for two processes or more
        for kid in kids:
            assert rollup(kid)["Shared_Clean"] >= 0.95 * sum(sizes.values()), rollup(kid)
    finally:
        server.kill()
