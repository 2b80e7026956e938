"""Prometheus metrics of `dualvec serve` (``--metrics-port PORT`` serves them as text on ``/metrics``).

Every DualVec call passes ``MetricsInterceptor``, the outermost server interceptor, so a call is counted whatever
ended it (a refused token, an overloaded server, a bad request, a search); nothing else in the server counts
calls. Series (all prefixed ``dualvec_``):

- ``calls_total{rpc, code, pair, model}``: finished calls by method, gRPC status code, space pair ("in-out";
  "mixed" for a BatchSearch over several pairs, "" where a method has none) and bundle name;
- ``call_seconds{rpc, pair}``: latency histogram, from the call reaching Python to its answer;
- ``calls_in_flight{rpc}``; ``calls_refused_overloaded_total{rpc}`` (RESOURCE_EXHAUSTED: admission control's
  refusals beyond ``--max-queue``);
- ``search_batch_size{model}``: queries per FAISS call of the Search batcher (dualvec.server.batching);
- ``bundle_loads_total{model}``, ``reload_failures_total{what}`` ("bundle", "auth_tokens");
- ``bundle_info{model, content_id, created, path}`` (1 for the bundle being served, 0 once replaced);
- ``pair_recall{model, pair, distribution}``: the recall@10 each pair was tuned to at build (its manifest).

Labels only ever hold values from a fixed set (a method this server has, a served bundle's name, a pair of the two
spaces), never a string a client chose, so a client cannot grow the number of series.

With ``--processes`` > 1 the series live in prometheus-client's multiprocess mode: the parent makes a private
directory (``PROMETHEUS_MULTIPROC_DIR``) before anything is counted, each process writes its own files there,
the parent serves ``/metrics`` summed over them, and removes the directory when the server stops.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import grpc

from dualvec.kernel.errors import DualvecError
from dualvec.v1 import dualvec_pb2 as pb

log = logging.getLogger("dualvec.server.metrics")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DualVec"].full_name
RPCS = tuple(m.name for m in pb.DESCRIPTOR.services_by_name["DualVec"].methods)
LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_SPACE = {pb.SPACE_UNSPECIFIED: "in", pb.IN: "in", pb.OUT: "out"}
_DOC_SPACE = {pb.SPACE_UNSPECIFIED: "out", pb.IN: "in", pb.OUT: "out"}
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _as_dict(manifest) -> Mapping:
    """A manifest as its JSON object (a typed manifest has ``to_dict``)."""
    return manifest.to_dict() if hasattr(manifest, "to_dict") else manifest


def content_id(manifest) -> str:
    """The id of a bundle's content: the manifest's own ``content_id`` when it records one, else the first 16 hex
    digits of the sha256 of its file list (every file's name, size and sha256)."""
    manifest = _as_dict(manifest)
    recorded = manifest.get("content_id")
    if recorded:
        return str(recorded)
    files = json.dumps(manifest.get("files", {}), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(files.encode("utf-8")).hexdigest()[:16]


_manifest_content_id = content_id  # for ServerMetrics.serving, whose argument of that name shadows it


@dataclass
class ServerMetrics:
    """The metrics of one server (all its processes). Make it with ``ServerMetrics.create`` before the bundles
    load; ``serve(host, port)`` starts the /metrics endpoint; ``close()`` stops it and removes the multiprocess
    directory. ``registry`` is None in multiprocess mode (the endpoint reads the processes' files)."""

    multiprocess_dir: str | None
    registry: object | None
    calls: object = field(repr=False)
    latency: object = field(repr=False)
    in_flight: object = field(repr=False)
    overloaded: object = field(repr=False)
    batch_size: object = field(repr=False)
    bundle_loads: object = field(repr=False)
    reload_failures: object = field(repr=False)
    bundle_info: object = field(repr=False)
    pair_recall: object = field(repr=False)
    _httpd: object = field(default=None, repr=False)
    _bundles: dict = field(default_factory=dict, repr=False)   # model -> labels of its bundle_info series
    _closed: bool = field(default=False, repr=False)

    @classmethod
    def create(cls, multiprocess: bool = False) -> "ServerMetrics":
        """multiprocess: the series are shared by the processes `serve --processes` forks after this call."""
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, values

        disable_created_metrics()  # the *_created series only repeat the server's start time

        directory = None
        if multiprocess:
            directory = tempfile.mkdtemp(prefix="dualvec-metrics-")
            os.environ[MULTIPROC_ENV] = directory
        # prometheus-client picks file-backed values by the environment when it is first imported; choose here,
        # so that the mode follows this call whatever imported it before
        values.ValueClass = values.MultiProcessValue() if multiprocess else values.MutexValue
        registry = None if multiprocess else CollectorRegistry()
        if registry is not None:
            from prometheus_client import ProcessCollector
            ProcessCollector(registry=registry)
        kw = {"registry": registry}
        return cls(
            multiprocess_dir=directory, registry=registry,
            calls=Counter("dualvec_calls", "Finished DualVec calls by method, status code, space pair and bundle",
                          ("rpc", "code", "pair", "model"), **kw),
            latency=Histogram("dualvec_call_seconds", "Latency of DualVec calls in the server, by method and pair",
                              ("rpc", "pair"), buckets=LATENCY_BUCKETS, **kw),
            in_flight=Gauge("dualvec_calls_in_flight", "DualVec calls in the server now", ("rpc",),
                            multiprocess_mode="livesum", **kw),
            overloaded=Counter("dualvec_calls_refused_overloaded",
                               "Calls refused with RESOURCE_EXHAUSTED: the server was overloaded", ("rpc",), **kw),
            batch_size=Histogram("dualvec_search_batch_size", "Queries answered by one FAISS call of the Search "
                                 "batcher", ("model",), buckets=BATCH_BUCKETS, **kw),
            bundle_loads=Counter("dualvec_bundle_loads", "Bundles loaded", ("model",), **kw),
            reload_failures=Counter("dualvec_reload_failures", "Reloads refused (the old one kept serving)",
                                    ("what",), **kw),
            bundle_info=Gauge("dualvec_bundle_info", "The bundle served under each name (1), by content id",
                              ("model", "content_id", "created", "path"), multiprocess_mode="livemax", **kw),
            pair_recall=Gauge("dualvec_pair_recall", "Recall@10 of each space pair, measured at build",
                              ("model", "pair", "distribution"), multiprocess_mode="livemax", **kw),
        )

    # ----------------------------------------------------------------------------------------- what is served
    def bundle_loaded(self, model: str) -> None:
        self.bundle_loads.labels(model).inc()

    def reload_failed(self, what: str) -> None:
        """A reload refused ("bundle", "auth_tokens"); the old one keeps serving."""
        self.reload_failures.labels(what).inc()

    def serving(self, model: str, manifest, path: str = "", content_id: str | None = None) -> None:
        """``model`` now serves the bundle of ``manifest`` (call again with the new one after a reload);
        ``content_id``: the id the server tells in GetInfo (by default ``content_id(manifest)``)."""
        manifest = _as_dict(manifest)
        labels = (model, content_id or _manifest_content_id(manifest), str(manifest.get("created", "")),
                  str(path))
        old = self._bundles.get(model)
        if old is not None and old != labels:
            self.bundle_info.labels(*old).set(0)
        self.bundle_info.labels(*labels).set(1)
        self._bundles[model] = labels
        for pair, entry in (manifest.get("pairs") or {}).items():
            for distribution in ("uniform", "frequency"):
                value = entry.get(f"recall_{distribution}")
                if value is not None:
                    self.pair_recall.labels(model, pair, distribution).set(float(value))

    def batch_observer(self, model: str):
        """A callable taking a batch size, for dualvec.server.batching.Batcher's ``on_batch``."""
        return self.batch_size.labels(model).observe

    def interceptor(self, models: Iterable[str]) -> "MetricsInterceptor":
        """The server interceptor counting calls; ``models``: the served bundle names, the default first."""
        return MetricsInterceptor(self, list(models))

    def process_exited(self, pid: int) -> None:
        """Drop a dead worker process's live gauges (multiprocess mode; a supervisor calls this when it reaps)."""
        if self.multiprocess_dir:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, self.multiprocess_dir)

    # --------------------------------------------------------------------------------------------- endpoint
    def serve(self, host: str, port: int) -> int:
        """Serve /metrics on host:port (0 picks a free port) from a daemon thread; returns the port. Raises
        DualvecError naming the address when it cannot be bound."""
        from prometheus_client import CollectorRegistry, start_http_server

        registry = self.registry
        if registry is None:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)
        try:
            self._httpd, _ = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise DualvecError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
        return self._httpd.server_port

    def forget_endpoint(self) -> None:
        """In a process forked after ``serve``: close this copy of the endpoint's socket (the parent serves it)."""
        if self._httpd is not None:
            self._httpd.socket.close()
            self._httpd = None

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop the endpoint; remove the multiprocess directory (and forget it in this process's environment)."""
        self._closed = True
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self.multiprocess_dir:
            shutil.rmtree(self.multiprocess_dir, ignore_errors=True)
            if os.environ.get(MULTIPROC_ENV) == self.multiprocess_dir:
                del os.environ[MULTIPROC_ENV]
            self.multiprocess_dir = None


def _labels(rpc: str, request, models: list[str]) -> tuple[str, str]:
    """(pair, model) labels of a call, from its request; a model name no bundle has is "unknown"."""
    if not hasattr(request, "DESCRIPTOR"):  # refused before deserializing (a bad token): raw bytes
        return "", ""
    pair = ""
    if rpc == "Search":
        pair = f"{_SPACE.get(request.query_space, 'invalid')}-{_SPACE.get(request.target_space, 'invalid')}"
    elif rpc == "ScoreDocuments":
        pair = f"{_SPACE.get(request.query_space, 'invalid')}-{_DOC_SPACE.get(request.document_space, 'invalid')}"
    elif rpc == "BatchSearch":
        pairs = {(r.query_space or pb.IN, r.target_space or pb.IN) for r in request.requests}
        if len(pairs) == 1:
            q, t = next(iter(pairs))
            pair = f"{_SPACE.get(q, 'invalid')}-{_SPACE.get(t, 'invalid')}"
        elif pairs:
            pair = "mixed"
        names = {r.model for r in request.requests}
        name = names.pop() if len(names) == 1 else None
        if name is None:
            return pair, "mixed" if request.requests else models[0]
        return pair, (name or models[0]) if (not name or name in models) else "unknown"
    name = getattr(request, "model", "")
    return pair, (name or models[0]) if (not name or name in models) else "unknown"


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts and times every DualVec call (the outermost interceptor: it sees refusals of the others too)."""

    def __init__(self, metrics: ServerMetrics, models: list[str]):
        if not models:
            raise ValueError("no bundle to serve")
        self.metrics = metrics
        self.models = models
        self._prefix = f"/{SERVICE_NAME}/"
        self._wrapped: dict[tuple[str, object], grpc.RpcMethodHandler] = {}

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or not method.startswith(self._prefix):
            return handler
        rpc = method[len(self._prefix):]
        if rpc not in RPCS:
            return handler
        key = (rpc, handler)  # the handlers below are few and long-lived (admission's, the auth refusal)
        wrapped = self._wrapped.get(key)
        if wrapped is None:
            wrapped = grpc.unary_unary_rpc_method_handler(
                self._measured(rpc, handler.unary_unary), request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
            if len(self._wrapped) < 64:  # a handler made anew per call would otherwise grow the cache
                self._wrapped[key] = wrapped
        return wrapped

    def _measured(self, rpc: str, behavior):
        m = self.metrics
        in_flight = m.in_flight.labels(rpc)
        overloaded = m.overloaded.labels(rpc)

        def measured(request, context):
            started = time.perf_counter()
            in_flight.inc()
            code = grpc.StatusCode.OK
            try:
                response = behavior(request, context)
                code = context.code() or grpc.StatusCode.OK
                return response
            except BaseException:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                in_flight.dec()
                try:
                    pair, model = _labels(rpc, request, self.models)
                except Exception:  # noqa: BLE001 - a request the labels cannot read is still counted
                    pair, model = "", ""
                m.latency.labels(rpc, pair).observe(time.perf_counter() - started)
                m.calls.labels(rpc, _code_name(code), pair, model).inc()
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    overloaded.inc()

        return measured


def _code_name(code) -> str:
    if isinstance(code, grpc.StatusCode):
        return code.name
    return str(code)
