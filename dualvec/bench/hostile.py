"""A hostile client: what a running server answers to requests built to hurt it, and what they cost it.

Each case sends one kind of abuse to the server at ADDR and records the status and message it got (the message
truncated, its full length kept), the time it took, and, given the server's pid, the PSS of the server's whole
process tree (dualvec.loadtest.sampling: the `serve --processes` workers too, shared pages once) before and after.
Ordinary queries are answered before the first case and after the last, and compared: a server that survived the
abuse answers them the same.

The cases (``CASES``): a 1 MB word; 100k words in one query; a BatchSearch of 50k queries; BatchSearch 1,024 x
k 1,000 received by a client with gRPC's default 4 MB limit; 10k documents; a 60 MB document; a deadline of 1
microsecond; 500 concurrent calls from one client on one channel; a client that connects and never sends (a raw
socket, held while an ordinary call is made on another connection); random bytes to every method of the service.

Entry point: scripts/hostile.py; docs/operations.md ("Hostile clients") has a table it printed.
"""
from __future__ import annotations

import collections
import json
import random
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import grpc

from dualvec.v1 import dualvec_pb2 as pb
from dualvec.v1 import dualvec_pb2_grpc as pb_grpc

SERVICE = pb.DESCRIPTOR.services_by_name["DualVec"]
MESSAGE_CHARS = 110  # a message is shown this long at most (its length is kept)
BIG_RECEIVE = 256 << 20  # what the cases that are not about the receive limit accept


@dataclass
class Outcome:
    """What one case got: ``status`` (a gRPC code name, or counts of them, or what a raw socket saw), the message
    (truncated; ``message_chars`` its full length), seconds, and the server tree's PSS in MiB before and after."""

    case: str
    what: str
    status: str
    message: str = ""
    message_chars: int = 0
    seconds: float = 0.0
    pss_before_mib: float | None = None
    pss_after_mib: float | None = None
    details: dict = field(default_factory=dict)


def _truncate(text: str) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= MESSAGE_CHARS else text[:MESSAGE_CHARS - 3] + "..."


def _call(fn: Callable[[], object]) -> tuple[str, str, float]:
    """(status, message, seconds) of one unary call."""
    t0 = time.perf_counter()
    try:
        fn()
        return "OK", "", time.perf_counter() - t0
    except grpc.RpcError as exc:
        return exc.code().name, exc.details() or "", time.perf_counter() - t0


def _counted(codes: list[tuple[str, str]]) -> tuple[str, str, int]:
    """A status line of counts by code ("OK 5, RESOURCE_EXHAUSTED 495") and the first message of each code."""
    counts = collections.Counter(c for c, _ in codes)
    first: dict[str, str] = {}
    for code, message in codes:
        if message:
            first.setdefault(code, message)
    status = ", ".join(f"{code} {n}" for code, n in counts.most_common())
    messages = "; ".join(f"{code}: {m}" for code, m in first.items())
    return status, messages, max((len(m) for m in first.values()), default=0)


class Hostile:
    """The cases against one server. ``server_pid``: sample the PSS of its process tree around each case."""

    def __init__(self, address: str, server_pid: int | None = None, *, timeout: float = 120.0,
                 hold_seconds: float = 5.0, seed: int = 14):
        self.address = address
        self.server_pid = server_pid
        self.timeout = timeout
        self.hold_seconds = hold_seconds
        self.rng = random.Random(seed)
        self._channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", BIG_RECEIVE),
                                                                ("grpc.max_send_message_length", -1)])
        self.stub = pb_grpc.DualVecStub(self._channel)
        self.words: list[str] = []

    def close(self) -> None:
        self._channel.close()

    # ------------------------------------------------------------------------------------------------ helpers
    def pss_mib(self) -> float | None:
        if self.server_pid is None:
            return None
        from dualvec.loadtest.sampling import tree_memory

        try:
            return round(tree_memory(self.server_pid).bytes / 2**20, 1)
        except Exception:  # noqa: BLE001 - the server is gone: nothing to measure
            return None

    def discover(self) -> list[str]:
        """Words of the served vocabulary: the neighbours of an arbitrary vector."""
        info = self.stub.GetInfo(pb.GetInfoRequest(), timeout=30)
        found = self.stub.Search(pb.SearchRequest(vector=[1.0] * info.dim, k=50), timeout=30)
        self.words = [n.word for n in found.neighbors]
        return self.words

    def ordinary_answers(self) -> list[list[str]]:
        """The neighbours of a few words: what must not change."""
        return [[n.word for n in self.stub.Search(pb.SearchRequest(positive=[w], k=10), timeout=30).neighbors]
                for w in self.words[:5]]

    def _fresh_channel(self, *options) -> grpc.Channel:
        return grpc.insecure_channel(self.address, options=[("grpc.use_local_subchannel_pool", 1), *options])

    # -------------------------------------------------------------------------------------------------- cases
    def word_1mb(self) -> Outcome:
        word = "w" * 1_000_000
        return self._unary("word_1mb", "Search, one positive word of 1 MB",
                           lambda: self.stub.Search(pb.SearchRequest(positive=[word]), timeout=self.timeout))

    def words_100k(self) -> Outcome:
        words = [self.words[i % len(self.words)] for i in range(100_000)]
        return self._unary("words_100k", "Search, 100,000 words in one query",
                           lambda: self.stub.Search(pb.SearchRequest(positive=words), timeout=self.timeout))

    def batch_50k(self) -> Outcome:
        reqs = [pb.SearchRequest(positive=[self.words[i % len(self.words)]]) for i in range(50_000)]
        return self._unary("batch_50k", "BatchSearch of 50,000 queries",
                           lambda: self.stub.BatchSearch(pb.BatchSearchRequest(requests=reqs), timeout=self.timeout))

    def batch_1024_k1000(self) -> Outcome:
        reqs = [pb.SearchRequest(positive=[self.words[i % len(self.words)]], k=1000) for i in range(1024)]
        channel = self._fresh_channel()  # gRPC's default receive limit (4 MB), as a default client has
        try:
            stub = pb_grpc.DualVecStub(channel)
            return self._unary("batch_1024_k1000", "BatchSearch 1,024 x k 1,000 (client: default 4 MB receive)",
                               lambda: stub.BatchSearch(pb.BatchSearchRequest(requests=reqs), timeout=self.timeout))
        finally:
            channel.close()

    def documents_10k(self) -> Outcome:
        text = " ".join(self.words[:8])
        docs = [pb.Document(id=str(i), text=text) for i in range(10_000)]
        return self._unary("documents_10k", "ScoreDocuments, 10,000 documents",
                           lambda: self.stub.ScoreDocuments(pb.ScoreDocumentsRequest(query=self.words[0],
                                                                                     documents=docs),
                                                            timeout=self.timeout))

    def document_60mb(self) -> Outcome:
        unit = " ".join(self.words[:8]) + " "
        text = unit * (60_000_000 // len(unit) + 1)
        doc = pb.Document(id="big", text=text[:60_000_000])
        return self._unary("document_60mb", "ScoreDocuments, one document of 60 MB",
                           lambda: self.stub.ScoreDocuments(pb.ScoreDocumentsRequest(query=self.words[0],
                                                                                     documents=[doc]),
                                                            timeout=self.timeout))

    def deadline_1us(self) -> Outcome:
        return self._unary("deadline_1us", "Search with a deadline of 1 microsecond",
                           lambda: self.stub.Search(pb.SearchRequest(positive=[self.words[0]]), timeout=1e-6))

    def concurrent_500(self) -> Outcome:
        before = self.pss_mib()
        channel = self._fresh_channel()
        try:
            stub = pb_grpc.DualVecStub(channel)
            grpc.channel_ready_future(channel).result(timeout=30)
            t0 = time.perf_counter()
            futures = [stub.Search.future(pb.SearchRequest(positive=[self.words[i % len(self.words)]], k=10),
                                          timeout=self.timeout) for i in range(500)]
            codes = []
            for f in futures:
                exc = f.exception()
                codes.append(("OK", "") if exc is None else (exc.code().name, exc.details() or ""))
            seconds = time.perf_counter() - t0
        finally:
            channel.close()
        status, message, chars = _counted(codes)
        return Outcome("concurrent_500", "500 concurrent Search calls on one channel", status, _truncate(message),
                       chars, round(seconds, 3), before, self.pss_mib())

    def silent_connection(self) -> Outcome:
        """Connect, send nothing, hold the socket ``hold_seconds``; meanwhile an ordinary call on another
        connection. Status: whether the server closed the silent connection, and when."""
        before = self.pss_mib()
        host, port = self.address.rsplit(":", 1)
        t0 = time.perf_counter()
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
        closed_after = None
        ordinary = None
        try:
            sock.settimeout(0.1)
            while time.perf_counter() - t0 < self.hold_seconds:
                if ordinary is None and time.perf_counter() - t0 > 0.5:
                    code, _, secs = _call(lambda: self.stub.Search(pb.SearchRequest(positive=[self.words[0]]),
                                                                   timeout=10))
                    ordinary = f"{code} in {secs * 1000:.0f} ms"
                try:
                    data = sock.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    data = b""
                if not data:
                    closed_after = time.perf_counter() - t0
                    break
        finally:
            sock.close()
        held = time.perf_counter() - t0
        status = (f"closed by the server after {closed_after:.1f} s" if closed_after is not None
                  else f"still open after {held:.1f} s (closed by the client)")
        return Outcome("silent_connection", f"a raw TCP connection that never sends, held {self.hold_seconds:g} s",
                       status, f"meanwhile an ordinary Search on another connection: {ordinary}", 0,
                       round(held, 3), before, self.pss_mib())

    def random_bytes(self, per_method: int = 20) -> Outcome:
        before = self.pss_mib()
        codes: list[tuple[str, str]] = []
        by_method: dict[str, dict[str, int]] = {}
        t0 = time.perf_counter()
        for method in SERVICE.methods:
            path = f"/{SERVICE.full_name}/{method.name}"
            seen: collections.Counter = collections.Counter()
            for i in range(per_method):
                size = self.rng.choice((1, 7, 64, 512, 4096))
                payload = self.rng.randbytes(size)
                if method.server_streaming or method.client_streaming:
                    call = self._channel.stream_stream(path, request_serializer=None, response_deserializer=None)
                    fn = lambda c=call, p=payload: list(c(iter([p]), timeout=10))  # noqa: E731
                else:
                    call = self._channel.unary_unary(path, request_serializer=None, response_deserializer=None)
                    fn = lambda c=call, p=payload: c(p, timeout=10)  # noqa: E731
                code, message, _ = _call(fn)
                codes.append((code, message))
                seen[code] += 1
            by_method[method.name] = dict(seen)
        seconds = time.perf_counter() - t0
        status, message, chars = _counted(codes)
        return Outcome("random_bytes", f"random bytes to every method ({per_method} calls each, 1-4,096 bytes)",
                       status, _truncate(message), chars, round(seconds, 3), before, self.pss_mib(),
                       {"by_method": by_method})

    def _unary(self, case: str, what: str, fn: Callable[[], object]) -> Outcome:
        before = self.pss_mib()
        status, message, seconds = _call(fn)
        return Outcome(case, what, status, _truncate(message), len(message), round(seconds, 5), before,
                       self.pss_mib())

    # ---------------------------------------------------------------------------------------------------- run
    def run(self, names: list[str] | None = None, progress: Callable[[Outcome], None] | None = None) -> dict:
        """Every case (or those named), in order; returns {"address", "cases": [Outcome dicts], "ordinary_answers":
        "unchanged" or what changed}."""
        if not self.words:
            self.discover()
        before = self.ordinary_answers()
        outcomes = []
        for name in names or CASES:
            if name not in CASES:
                raise ValueError(f"unknown case {name!r} (known: {', '.join(CASES)})")
            try:
                outcome = getattr(self, name)()
            except Exception as exc:  # noqa: BLE001 - a case that broke the client is reported, not fatal
                outcome = Outcome(name, name, f"client error: {type(exc).__name__}", _truncate(str(exc)),
                                  len(str(exc)))
            outcomes.append(outcome)
            if progress is not None:
                progress(outcome)
        time.sleep(0.5)
        try:
            after = self.ordinary_answers()
            unchanged = "unchanged" if after == before else "changed"
        except grpc.RpcError as exc:
            unchanged = f"not answered: {exc.code().name} {_truncate(exc.details() or '')}"
        return {"address": self.address, "server_pid": self.server_pid, "pss_mib_end": self.pss_mib(),
                "cases": [asdict(o) for o in outcomes], "ordinary_answers": unchanged}


CASES = ("word_1mb", "words_100k", "batch_50k", "batch_1024_k1000", "documents_10k", "document_60mb",
         "deadline_1us", "concurrent_500", "silent_connection", "random_bytes")


def _mib(v: float | None) -> str:
    return "" if v is None else f"{v:,.0f}"


def format_table(result: dict) -> str:
    """A Markdown table of the outcomes."""
    lines = ["| case | status | message (truncated) | time | tree PSS before → after (MiB) |",
             "|---|---|---|---|---|"]
    for o in result["cases"]:
        message = o["message"].replace("|", "\\|")
        if o["message_chars"] > MESSAGE_CHARS:
            message += f" ({o['message_chars']:,} chars)"
        pss = (f"{_mib(o['pss_before_mib'])} → {_mib(o['pss_after_mib'])}" if o["pss_before_mib"] is not None
               else "")
        seconds = o["seconds"]
        shown = f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"
        lines.append(f"| {o['what']} | {o['status']} | {message} | {shown} | {pss} |")
    lines.append("")
    lines.append(f"Ordinary queries after every case: {result['ordinary_answers']}.")
    return "\n".join(lines)


def to_json(result: dict) -> str:
    return json.dumps(result, indent=1)
