"""Closed-loop gRPC load for scripts/bench.py: C concurrent clients, each sending one Search at a time and the
next as soon as the answer is back.

Two load generators:
- ``run_load``: Python clients (the ``dualvec`` stubs), spread over several processes (a Python client saturates
  its own GIL long before a server does). Kept apart and light: the worker processes are spawned and import only
  grpc and the generated dualvec stubs. Each call costs the client 0.2-0.4 ms of CPU, taken from the same CPUs
  the server runs on when both share a small machine.
- ``run_load_go``: ``grpc_loadgen.go`` beside this file, compiled once by ``build_go_loadgen`` where a Go
  toolchain and grpc-go's sources are installed (Debian: golang-go, golang-google-grpc-dev). It sends the same
  requests, serialized here, and costs a fraction of that, so it measures what the server can answer.

    result = run_load("127.0.0.1:50051", [("word", "in", "out"), ...], clients=32, processes=4, seconds=10)
    binary, why_not = build_go_loadgen(Path("/tmp/cache"))
    result = run_load_go(binary, "127.0.0.1:50051", search_requests([("word", "in", "out"), ...], k=10),
                         clients=32, seconds=10)
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Sequence

GO_SOURCE = Path(__file__).with_name("grpc_loadgen.go")
DEBIAN_GOPATH = Path("/usr/share/gocode")  # where golang-google-grpc-dev puts google.golang.org/grpc

def search_requests(queries: Sequence[tuple[str, str, str]], k: int) -> list:
    """One SearchRequest per (word, query_space, target_space), as dualvec.Client.search would send it."""
    from dualvec.client import search_request

    return [search_request(w, query_space=q, target_space=t, k=k) for w, q, t in queries]


def _worker(address: str, queries: Sequence[tuple[str, str, str]], threads: int, offset: int, k: int,
            ready, go, times, results) -> None:
    """One process: `threads` clients, each with its own channel, sending prebuilt SearchRequests in a loop.
    Counts the calls that start and end inside [times[0], times[1]] (wall clock shared by all processes)."""
    import threading

    import grpc

    from dualvec.v1 import dualvec_pb2_grpc as pb_grpc

    requests = search_requests(queries, k)
    stubs = []
    for j in range(threads):
        # distinct channel args: gRPC would otherwise share one connection between a process's channels
        channel = grpc.insecure_channel(address, options=[("dualvec.bench.client", offset + j)])
        grpc.channel_ready_future(channel).result(timeout=30)
        stubs.append((channel, pb_grpc.DualVecStub(channel)))
    ready.put(1)
    go.wait()
    start, stop = times[0], times[1]
    out = [None] * threads

    def client(j: int) -> None:
        stub = stubs[j][1]
        i = (offset + j) * 104729
        n, lat, errors = 0, [], Counter()
        clock = time.time
        while True:
            t0 = clock()
            if t0 >= stop:
                break
            try:
                stub.Search(requests[i % len(requests)], timeout=30)
                ok = True
            except grpc.RpcError as exc:
                errors[exc.code().name] += 1
                ok = False
            t1 = clock()
            i += 1
            if t0 >= start and t1 <= stop and ok:
                n += 1
                lat.append(t1 - t0)
        out[j] = (n, lat, errors)

    pool = [threading.Thread(target=client, args=(j,)) for j in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    errors = Counter()
    for _, _, e in out:
        errors.update(e)
    results.put((sum(o[0] for o in out), [x for o in out for x in o[1]], dict(errors)))
    for channel, _ in stubs:
        channel.close()


def run_load(address: str, queries: Sequence[tuple[str, str, str]], *, clients: int, processes: int,
             seconds: float, warmup: float = 1.0, k: int = 10) -> dict:
    """Closed-loop load: `clients` concurrent clients over min(clients, processes) processes for `seconds` after
    `warmup` seconds. queries: (word, query_space, target_space) cycled. Returns qps, latency percentiles (us)
    and error counts by status code."""
    import numpy as np

    ctx = mp.get_context("spawn")
    nproc = max(1, min(clients, processes))
    per = [clients // nproc + (1 if i < clients % nproc else 0) for i in range(nproc)]
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    times = ctx.Array("d", 2)
    procs, offset = [], 0
    for threads in per:
        p = ctx.Process(target=_worker, args=(address, list(queries), threads, offset, k, ready, go, times, results),
                        daemon=True)
        p.start()
        procs.append(p)
        offset += threads
    for _ in procs:
        ready.get(timeout=120)
    now = time.time()
    times[0], times[1] = now + warmup, now + warmup + seconds
    go.set()
    collected = [results.get(timeout=seconds + warmup + 120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    done = sum(c[0] for c in collected)
    lat = np.array([x for c in collected for x in c[1]]) * 1e6
    errors: Counter = Counter()
    for c in collected:
        errors.update(c[2])
    out = {"clients": clients, "processes": nproc, "seconds": seconds, "queries": done, "qps": done / seconds,
           "errors": dict(errors)}
    if lat.size:
        out.update({"p50_us": float(np.percentile(lat, 50)), "p99_us": float(np.percentile(lat, 99))})
    return out


# ------------------------------------------------------------------------------------------- the Go load generator

def _gopath() -> Path | None:
    """A GOPATH holding grpc-go's sources: $GOPATH's first entry if it has them, else Debian's."""
    for entry in (*os.environ.get("GOPATH", "").split(os.pathsep), str(DEBIAN_GOPATH)):
        if entry and (Path(entry) / "src" / "google.golang.org" / "grpc").is_dir():
            return Path(entry)
    return None


def build_go_loadgen(cache_dir: Path) -> tuple[Path | None, str]:
    """Compile grpc_loadgen.go into cache_dir (once per version of the source). Returns (binary, "") or
    (None, why it cannot be built). Builds offline, in GOPATH mode, from installed sources only."""
    go = shutil.which("go")
    if go is None:
        return None, "no Go toolchain (apt-get install golang-go golang-google-grpc-dev)"
    gopath = _gopath()
    if gopath is None:
        return None, (f"grpc-go's sources are not under $GOPATH or {DEBIAN_GOPATH} "
                      "(apt-get install golang-google-grpc-dev)")
    digest = hashlib.sha256(GO_SOURCE.read_bytes()).hexdigest()[:12]
    binary = cache_dir / f"grpc_loadgen-{digest}"
    if binary.is_file():
        return binary, ""
    cache_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOPATH": str(gopath), "GO111MODULE": "off", "GOFLAGS": "", "GOPROXY": "off",
           "GOCACHE": str(cache_dir / "go-build-cache")}
    partial = binary.with_name(binary.name + ".partial")
    proc = subprocess.run([go, "build", "-o", str(partial), str(GO_SOURCE)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        return None, f"go build of {GO_SOURCE.name} failed: {proc.stderr.strip()[-800:]}"
    partial.replace(binary)
    return binary, ""


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def write_requests(path: Path, requests: Sequence) -> None:
    """Serialized protobuf messages back to back, each after its length as a uvarint (grpc_loadgen's -requests)."""
    with open(path, "wb") as f:
        for r in requests:
            data = r.SerializeToString()
            f.write(_uvarint(len(data)) + data)


SEARCH_METHOD = "/dualvec.v1.DualVec/Search"
HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"  # a unary call that does no work: gRPC's own cost


def health_check_requests() -> list:
    """One empty health Check request (the server's overall status)."""
    from grpc_health.v1 import health_pb2

    return [health_pb2.HealthCheckRequest()]


def run_load_go(binary: Path, address: str, requests: Sequence, *, clients: int, seconds: float,
                warmup: float = 1.0, method: str = SEARCH_METHOD) -> dict:
    """run_load's measurement from the compiled load generator: one process, a goroutine and a connection per
    client, cycling through ``requests`` (protobuf messages of ``method``, e.g. ``search_requests(queries, k)``).
    Also returns the generator's own CPU time per call (client_cpu_us_per_call)."""
    with tempfile.TemporaryDirectory(prefix="dualvec-load-") as tmp:
        reqs = Path(tmp) / "requests.bin"
        write_requests(reqs, requests)
        cmd = [str(binary), "-addr", address, "-method", method, "-requests", str(reqs), "-clients", str(clients),
               "-duration", str(seconds), "-warmup", str(warmup)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + warmup + 120)
    if proc.returncode != 0:
        raise RuntimeError(f"{binary.name} exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
    out = json.loads(proc.stdout)
    out["processes"] = 1
    return out
