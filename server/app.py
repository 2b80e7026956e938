"""Building, starting and stopping the gRPC server.

``start_server`` returns a running server and the port it bound (port 0 picks a free one: tests use that).
Health turns SERVING only once the bundles are loaded and the port is bound; on SIGTERM or SIGINT health turns
NOT_SERVING first, new calls are refused, and in-flight calls get a grace period before the process exits 0.
"""
from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass, replace
from pathlib import Path

import faiss
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from dualvec.kernel.bundle import read_bundle
from dualvec.kernel.errors import DualvecError
from dualvec.server.admission import AdmissionControl
from dualvec.server.host.cpu_affinity import available_cpus, pin_process
from dualvec.kernel.search import Limits, SearchEngine
from dualvec.server.servicer import DualVecServicer
from dualvec.server.host.worker_processes import resolve_processes, serve_in_processes
from dualvec.v1 import dualvec_pb2 as pb
from dualvec.v1 import dualvec_pb2_grpc as pb_grpc

log = logging.getLogger("dualvec.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DualVec"].full_name


@dataclass(frozen=True)
class ServerConfig:
    """Options of `dualvec serve`, fixed at start."""

    bundles: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = 50051
    max_k: int = 1000
    max_batch: int = 1024
    workers: int = 16          # calls worked on at once (dualvec.server.admission)
    max_queue: int = 256       # calls admitted at once (running or waiting for a worker); more: RESOURCE_EXHAUSTED
    checksums: bool = True
    grace_seconds: float = 5.0
    faiss_threads: int = 1     # per search call: one query with many OpenMP threads is slower than with one
    batch_size: int = 64       # concurrent Search calls answered by one FAISS call (1 = no batching)
    concurrent_batches: int = 2  # FAISS calls running at once (one per core)
    prefault: bool = True      # map every page of the vectors at load (dualvec.kernel.bundle.prefault_pages)
    cpus: str = "auto"         # CPUs `dualvec serve` runs on (dualvec.server.host.cpu_affinity)
    processes: int = 0         # server processes on the port, one CPU each; 0 = auto (dualvec.server.host.worker_processes)


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    servicer: DualVecServicer
    address: str
    admission: AdmissionControl | None = None

    def set_serving(self) -> None:
        """Health SERVING, for the server as a whole ("") and for the DualVec service."""
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float | None = 5.0) -> None:
        """Health NOT_SERVING, refuse new calls, let in-flight calls finish within ``grace`` seconds."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


def load_engines(cfg: ServerConfig) -> dict[str, SearchEngine]:
    """Read each bundle (memory-mapped) and name it by its directory name (made unique)."""
    limits = Limits(max_k=cfg.max_k, max_batch=cfg.max_batch)
    engines: dict[str, SearchEngine] = {}
    for path in cfg.bundles:
        name = Path(path).name
        base, i = name, 2
        while name in engines:
            name, i = f"{base}-{i}", i + 1
        started = time.perf_counter()
        bundle = read_bundle(path, checksums=cfg.checksums, prefault=cfg.prefault)
        engines[name] = SearchEngine(bundle, limits)
        log.info("loaded bundle %s as %r: %d words x %d dims, spaces %s (%.1f s)", bundle.path, name,
                 bundle.vocab_size, bundle.dim, ",".join(s.upper() for s in bundle.manifest["spaces"]),
                 time.perf_counter() - started)
    return engines


def start_server(engines: dict[str, SearchEngine], cfg: ServerConfig, *, reuse_port: bool = False,
                 serving: bool = True) -> RunningServer:
    """Bind, start, and report SERVING. Raises DualvecError when the address cannot be bound. reuse_port: share
    the port with the other processes of `serve --processes` (SO_REUSEPORT). serving=False: health stays
    NOT_SERVING until ``running.set_serving()`` (`serve --processes`: once every process is up)."""
    # admission control bounds the DualVec calls (fast "server overloaded" refusals beyond max_queue, deadlines
    # honoured while waiting); the pool has a thread for every call taken, so health never queues behind searches
    admission = AdmissionControl(cfg.max_queue, cfg.workers, (SERVICE_NAME,))
    # OpenMP's thread count is per thread: set it in every worker, where FAISS runs (setting it here would only
    # cover this thread, and each single-query search would wake, then spin, a second OpenMP thread)
    threads = max(1, cfg.faiss_threads)
    pool = futures.ThreadPoolExecutor(max_workers=admission.threads, thread_name_prefix="dualvec-rpc",
                                      initializer=faiss.omp_set_num_threads, initargs=(threads,))
    server = grpc.server(pool,
                         interceptors=(admission,), maximum_concurrent_rpcs=admission.threads,
                         options=[("grpc.max_receive_message_length", 64 << 20),
                                  ("grpc.max_send_message_length", 64 << 20),
                                  ("grpc.so_reuseport", 1 if reuse_port else 0),
                                  ("grpc.server.max_pending_requests", admission.backlog_limits[0]),
                                  ("grpc.server.max_pending_requests_hard_limit", admission.backlog_limits[1])])
    servicer = DualVecServicer(engines, batch_size=cfg.batch_size, concurrent_batches=cfg.concurrent_batches)
    pb_grpc.add_DualVecServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{cfg.host}:{cfg.port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise DualvecError(f"cannot listen on {address}: {exc}") from None
    if port == 0:
        raise DualvecError(f"cannot listen on {address} (in use, or not an address of this machine)")
    server.start()
    running = RunningServer(server, port, health_servicer, servicer, f"{cfg.host}:{port}", admission)
    if serving:
        running.set_serving()
    return running


def serve_forever(cfg: ServerConfig) -> int:
    """`dualvec serve`: load, serve until SIGTERM/SIGINT, drain, exit 0."""
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum, frame):
        received.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    cfg = replace(cfg, processes=resolve_processes(cfg.processes, cfg.cpus, available_cpus()))  # checks --cpus
    if cfg.processes == 1:
        pin_process(cfg.cpus)  # before any server thread exists: they inherit it
    engines = load_engines(cfg)
    # a bundle's vocabulary is millions of long-lived objects: leave them out of every later garbage collection
    # (and, with --processes, keep the collector from writing to pages the children share)
    gc.freeze()
    if cfg.processes > 1:
        return serve_in_processes(cfg, engines, start_server, stop, received)
    running = start_server(engines, cfg)
    log.info("serving %s on %s (health SERVING, reflection on; max_k %d, workers %d, max_queue %d)",
             ", ".join(engines), running.address, cfg.max_k, cfg.workers, cfg.max_queue)
    while not stop.wait(0.5):
        pass
    name = signal.Signals(received[0]).name if received else "signal"
    log.info("%s received: NOT_SERVING, draining in-flight calls (grace %.1f s)", name, cfg.grace_seconds)
    running.stop(cfg.grace_seconds)
    log.info("stopped serving on %s", running.address)
    return 0
