"""Closed-loop gRPC load for scripts/bench.py: C concurrent clients, each sending one Search at a time and the
next as soon as the answer is back, spread over several processes (a Python client saturates its own GIL long
before a server does). Kept apart and light: the worker processes are spawned and import only grpc and the
generated dualvec stubs.

    result = run_load("127.0.0.1:50051", [("word", "in", "out"), ...], clients=32, processes=4, seconds=10)
"""
from __future__ import annotations

import multiprocessing as mp
import time
from collections import Counter
from typing import Sequence

SPACE = {"in": 1, "out": 2}  # dualvec.v1.Space values


def _worker(address: str, queries: Sequence[tuple[str, str, str]], threads: int, offset: int, k: int,
            ready, go, times, results) -> None:
    """One process: `threads` clients, each with its own channel, sending prebuilt SearchRequests in a loop.
    Counts the calls that start and end inside [times[0], times[1]] (wall clock shared by all processes)."""
    import threading

    import grpc

    from dualvec.v1 import dualvec_pb2 as pb
    from dualvec.v1 import dualvec_pb2_grpc as pb_grpc

    requests = [pb.SearchRequest(positive=[w], query_space=SPACE[q], target_space=SPACE[t], k=k)
                for w, q, t in queries]
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
