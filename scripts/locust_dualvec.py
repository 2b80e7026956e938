"""An independent load generator for a dualvec server: a locust scenario (locust is in the `bench` extra), used
to cross-check `dualvec loadtest` and to check answers under load. It shares no code with dualvec.loadtest: it
builds its requests with the generated protobuf classes (spaces converted by dualvec.wire) and times each call
itself.

    locust -f scripts/locust_dualvec.py --headless -u 32 -r 32 -t 20s --host 127.0.0.1:50051 --only-summary

Each user sends Search calls, one at a time, over the four space pairs (IN->IN, IN->OUT, OUT->IN, OUT->OUT) for
words drawn from the server's 1,000 most frequent (found with one exact search restricted to them). Before the
load, the idle answer of every query is fetched; under load every answer is compared with it, and a different
answer fails the call ("wrong answer"). Environment:

    DUALVEC_WORDS=100          distinct words (x 4 pairs = the queries)
    DUALVEC_USER_RATE=0        calls per second per user (locust's constant_throughput); 0 = closed loop
    DUALVEC_SUMMARY=out.json   also write the summary there

At the end it prints a summary computed from every call's own time (exact percentiles, not locust's rounded
ones), beside locust's usual statistics.
"""
from __future__ import annotations

import json
import os
import random
import time

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from gevent.lock import BoundedSemaphore  # noqa: E402
from locust import User, constant, constant_throughput, events, task  # noqa: E402

from dualvec.kernel.spaces import ALL_PAIRS, pair_name  # noqa: E402
from dualvec.v1 import dualvec_pb2 as pb  # noqa: E402
from dualvec.v1 import dualvec_pb2_grpc as pb_grpc  # noqa: E402
from dualvec.wire import space_to_pb  # noqa: E402

# name -> (query_space, target_space) enum values: in-in, in-out, out-in, out-out
PAIRS = {pair_name(q, t): (space_to_pb(q), space_to_pb(t)) for q, t in ALL_PAIRS}
N_WORDS = int(os.environ.get("DUALVEC_WORDS", "100"))
USER_RATE = float(os.environ.get("DUALVEC_USER_RATE", "0"))

QUERIES: list[tuple[str, pb.SearchRequest, list[tuple[int, float]]]] = []
SAMPLES: list[float] = []          # ms of every successful call inside the measured time
WRONG: list[str] = []
STATE = {"start": 0.0, "stop": 0.0}
PREPARING = BoundedSemaphore(1)


def answer_of(resp: pb.SearchResponse) -> list[tuple[int, float]]:
    return [(n.id, n.score) for n in resp.neighbors]


def same(a: list[tuple[int, float]], b: list[tuple[int, float]], tol: float = 1e-5) -> bool:
    """Same ids in the same order with scores within tol (ids may swap only where scores tie)."""
    if len(a) != len(b):
        return False
    for (ia, sa), (ib, sb) in zip(a, b):
        if abs(sa - sb) > tol:
            return False
        if ia != ib and not any(abs(s - sa) <= tol for i, s in b if i == ia):
            return False
    return True


def prepare(host: str) -> None:
    """The queries and their idle answers, fetched one at a time before any load (by the first user to start:
    a blocking gRPC call inside locust's test_start hook hangs under gevent)."""
    with grpc.insecure_channel(host) as channel:
        stub = pb_grpc.DualVecStub(channel)
        info = stub.GetInfo(pb.GetInfoRequest(), timeout=10)
        top = int(min(info.max_k or 1000, info.vocab_size, 1000))
        probe = pb.SearchRequest(vector=[1.0] * info.dim, k=top, restrict_vocab=top, exact=True)
        words = sorted(n.word for n in stub.Search(probe, timeout=30).neighbors)
        rnd = random.Random(7)
        chosen = rnd.sample(words, min(N_WORDS, len(words)))
        for word in chosen:
            for name, (q, t) in PAIRS.items():
                req = pb.SearchRequest(positive=[word], query_space=q, target_space=t, k=10)
                QUERIES.append((name, req, answer_of(stub.Search(req, timeout=10))))
    STATE["start"] = time.perf_counter()
    print(f"locust_dualvec: {len(QUERIES)} queries ({len(chosen)} words x 4 pairs), idle answers fetched")


class DualVecUser(User):
    """One client: one channel, one call at a time."""

    wait_time = constant_throughput(USER_RATE) if USER_RATE > 0 else constant(0)

    def on_start(self):
        with PREPARING:
            if not QUERIES:
                prepare(self.environment.host)
        self.channel = grpc.insecure_channel(self.environment.host)
        self.stub = pb_grpc.DualVecStub(self.channel)
        self.rnd = random.Random(id(self))

    def on_stop(self):
        self.channel.close()

    @task
    def search(self):
        name, req, idle = QUERIES[self.rnd.randrange(len(QUERIES))]
        t0 = time.perf_counter()
        exc = None
        length = 0
        try:
            resp = self.stub.Search(req, timeout=5)
            length = resp.ByteSize()
            if not same(answer_of(resp), idle):
                WRONG.append(f"{name} {req.positive[0]}")
                exc = AssertionError(f"wrong answer to {name} {req.positive[0]!r}")
        except grpc.RpcError as e:
            exc = e
        ms = (time.perf_counter() - t0) * 1000.0
        if exc is None:
            SAMPLES.append(ms)
        events.request.fire(request_type="grpc", name=name, response_time=ms, response_length=length,
                            exception=exc, context={})


@events.test_stop.add_listener
def summary(environment, **_kw):
    stats = environment.stats.total
    elapsed = time.perf_counter() - STATE["start"]
    ms = np.array(SAMPLES)
    out = {"users": getattr(environment.parsed_options, "num_users", None),
           "requests": stats.num_requests, "failures": stats.num_failures, "wrong_answers": len(WRONG),
           "seconds": round(elapsed, 2), "rate": round(len(ms) / elapsed, 1) if elapsed else None,
           "latency_ms_exact": {q: round(float(np.percentile(ms, float(q[1:]), method="inverted_cdf")), 3)
                                for q in ("p50", "p90", "p99", "p99.9")} if len(ms) else {},
           "max_ms": round(float(ms.max()), 3) if len(ms) else None,
           "locust_percentiles_ms": {f"p{int(q * 100) if q < 0.999 else 99.9}": stats.get_response_time_percentile(q)
                                     for q in (0.5, 0.9, 0.99, 0.999)},
           "locust_rps": round(stats.total_rps, 1)}
    print("locust_dualvec summary: " + json.dumps(out))
    path = os.environ.get("DUALVEC_SUMMARY")
    if path:
        with open(path, "w") as fh:
            json.dump(out, fh, indent=1)
