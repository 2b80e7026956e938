"""Building, starting and stopping the gRPC server.

``start_server`` returns a running server and the port it bound (port 0 picks a free one: tests use that).
Health turns SERVING only once the bundles are loaded and the port is bound; on SIGTERM or SIGINT the server
drains (dualvec.server.draining): health NOT_SERVING at once, calls still answered for ``drain_delay`` seconds,
then new calls refused and in-flight calls given ``grace_seconds`` before the process exits 0.

Who may call: ``auth_token_file`` (bearer tokens, dualvec.server.auth) and TLS (``tls_cert``/``tls_key``, with
``tls_client_ca`` for mutual TLS). SIGHUP calls ``RunningServer.reload`` in every server process: it re-reads the
token file, then runs the ``reloaders``: the bundle reload (dualvec.server.reload), which loads, verifies and swaps
in a bundle whose served path changed; ``watch`` seconds > 0 also polls the served paths. ``metrics_port`` serves
Prometheus metrics (dualvec.server.metrics).
"""
from __future__ import annotations

import gc
import ipaddress
import logging
import os
import signal
import threading
from concurrent import futures
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

import faiss
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from dualvec.kernel.desm import DesmLimits
from dualvec.kernel.errors import DualvecError
from dualvec.server.admission import AdmissionControl
from dualvec.server.malformed import MalformedRequests
from dualvec.server.draining import DrainingHealth, ShutdownSignals, check_timings, drain, serve_health_only
from dualvec.server.auth import TokenAuth, check_tls, read_tokens, tls_server_credentials
from dualvec.server.metrics import ServerMetrics
from dualvec.server.reload import BundleReloader, ServedBundle, ServedSet, bundle_names, disk_identity, load_bundle
from dualvec.server.host.cpu_affinity import available_cpus, pin_process
from dualvec.kernel.search import Limits, SearchEngine
from dualvec.server.servicer import DualVecServicer
from dualvec.server.host.worker_processes import resolve_processes, serve_in_processes
from dualvec.v1 import dualvec_pb2 as pb
from dualvec.v1 import dualvec_pb2_grpc as pb_grpc

log = logging.getLogger("dualvec.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DualVec"].full_name
# the largest answer the server sends: above the largest one the default limits allow (dualvec.kernel.search
# Limits.max_results), and what dualvec.Client receives
MAX_SEND_MESSAGE_BYTES = 64 << 20


@dataclass(frozen=True)
class ServerConfig:
    """Options of `dualvec serve`, fixed at start."""

    bundles: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = 50051
    max_k: int = 1000
    max_batch: int = 1024
    # the other sizes a client controls (each default written once, in dualvec.kernel.search.Limits and
    # dualvec.kernel.desm.DesmLimits); past one, INVALID_ARGUMENT naming the field, the limit and the flag
    max_results: int = Limits.max_results        # neighbours one BatchSearch asks for in all (sum of its k)
    max_words: int = Limits.max_words            # words per query and per GetVectors, pairs per Similarity
    max_word_bytes: int = Limits.max_word_bytes  # UTF-8 bytes of one word
    max_documents: int = DesmLimits.max_documents              # documents per ScoreDocuments
    max_document_tokens: int = DesmLimits.max_document_tokens  # tokens (or text) of one document
    max_query_tokens: int = DesmLimits.max_query_tokens        # tokens (or text) of a ScoreDocuments query
    max_message_bytes: int = 16 << 20  # one request; larger: RESOURCE_EXHAUSTED from gRPC, naming both sizes
    workers: int = 16          # calls worked on at once (dualvec.server.admission)
    max_queue: int = 256       # calls admitted at once (running or waiting for a worker); more: RESOURCE_EXHAUSTED
    max_streams: int = 64      # SearchStream calls open at once (each batch admitted by cost); more: RESOURCE_EXHAUSTED
    checksums: bool = True
    grace_seconds: float = 5.0
    faiss_threads: int = 1     # per search call: one query with many OpenMP threads is slower than with one
    batch_size: int = 64       # concurrent Search calls answered by one FAISS call (1 = no batching)
    concurrent_batches: int = 2  # FAISS calls running at once (one per core)
    prefault: bool = True      # map every page of the vectors at load (dualvec.server.host.prefault)
    cpus: str = "auto"         # CPUs `dualvec serve` runs on (dualvec.server.host.cpu_affinity)
    processes: int = 0         # server processes on the port, one CPU each; 0 = auto (dualvec.server.host.worker_processes)
    auth_token_file: str | None = None  # bearer tokens, one a line (dualvec.server.auth); None: no token asked
    tls_cert: str | None = None         # PEM certificate chain: serve TLS (with tls_key)
    tls_key: str | None = None
    tls_client_ca: str | None = None    # PEM CA: clients must present a certificate it signed (mutual TLS)
    metrics_port: int | None = None     # Prometheus /metrics on host:PORT (0: a free port); None: no metrics
    drain_delay: float = 5.0   # seconds still answering after SIGTERM, health NOT_SERVING (dualvec.server.draining)
    health_port: int | None = None      # plaintext grpc.health.v1 alone on host:PORT, for probes; None: none
    max_connection_age: float = 0.0     # seconds before a connection is closed (clients re-resolve); 0: never
    watch: float = 0.0         # seconds between looks at each served path, reloading a changed bundle; 0: SIGHUP only


def search_limits(cfg: ServerConfig) -> Limits:
    """The limits every search engine of the server checks requests against."""
    return Limits(max_k=cfg.max_k, max_batch=cfg.max_batch, max_words=cfg.max_words,
                  max_word_bytes=cfg.max_word_bytes, max_results=cfg.max_results)


def desm_limits(cfg: ServerConfig) -> DesmLimits:
    """The limits of ScoreDocuments calls."""
    return DesmLimits(max_documents=cfg.max_documents, max_document_tokens=cfg.max_document_tokens,
                      max_query_tokens=cfg.max_query_tokens)


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: DrainingHealth
    servicer: DualVecServicer
    address: str
    admission: AdmissionControl | None = None
    auth: TokenAuth | None = None
    metrics: ServerMetrics | None = None
    # run by reload() after the token file, in order: a bundle reload plugs in here; each returns True on success
    reloaders: list[Callable[[], bool]] = field(default_factory=list)
    health_server: grpc.Server | None = None  # the health-only listener (ServerConfig.health_port)
    health_port: int | None = None
    bundles: BundleReloader | None = None  # reloads the served bundles (one of the reloaders; --watch polls)

    def reload(self) -> bool:
        """What SIGHUP does: re-read the token file, then run the reloaders. A failed step is logged by itself,
        counted in the metrics, and leaves what it would have replaced serving. True when every step succeeded."""
        ok = True
        if self.auth is not None and not self.auth.reload():
            ok = False
            if self.metrics is not None:
                self.metrics.reload_failed("auth_tokens")
        for reloader in self.reloaders:
            try:
                ok = bool(reloader()) and ok
            except Exception:  # noqa: BLE001 - a failed reload must not take the server down
                log.exception("reload failed; what was served before keeps serving")
                ok = False
        return ok

    def set_serving(self) -> None:
        """Health SERVING, for the server as a whole ("") and for the DualVec service."""
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float | None = 5.0) -> None:
        """Health NOT_SERVING, refuse new calls, let in-flight calls finish within ``grace`` seconds."""
        if self.bundles is not None:
            self.bundles.stop()
        drain(self, 0.0, 0.0 if grace is None else grace)

    def drain(self, delay: float, grace: float, cut_short: threading.Event | None = None) -> None:
        """What SIGTERM does (dualvec.server.draining.drain): NOT_SERVING, answer ``delay`` seconds more, then stop
        with ``grace``."""
        if self.bundles is not None:
            self.bundles.stop()
        drain(self, delay, grace, cut_short)


def load_bundles(cfg: ServerConfig, metrics: ServerMetrics | None = None) -> dict[str, ServedBundle]:
    """Read each bundle (memory-mapped, from the directory its path resolves to now) and name it by its path's
    last part (made unique); each keeps its served path, which a reload looks at again."""
    limits = search_limits(cfg)
    bundles: dict[str, ServedBundle] = {}
    for name, path in bundle_names(cfg.bundles):
        served = bundles[name] = load_bundle(name, path, limits=limits, checksums=cfg.checksums,
                                             prefault=cfg.prefault)
        bundle = served.bundle
        if metrics is not None:
            metrics.bundle_loaded(name)
        log.info("loaded bundle %s as %r: %d words x %d dims, spaces %s, content_id %s (%.1f s)", bundle.path, name,
                 bundle.vocab_size, bundle.dim, ",".join(s.upper() for s in bundle.manifest.spaces),
                 served.content_id, served.seconds)
    return bundles


def load_engines(cfg: ServerConfig, metrics: ServerMetrics | None = None) -> dict[str, SearchEngine]:
    """The engines of ``load_bundles``, by name (served from their bundles' directories)."""
    return {name: served.engine for name, served in load_bundles(cfg, metrics).items()}


def start_server(engines: Mapping[str, SearchEngine | ServedBundle], cfg: ServerConfig, *, reuse_port: bool = False,
                 serving: bool = True, metrics: ServerMetrics | None = None) -> RunningServer:
    """Bind, start, and report SERVING. Raises DualvecError when the address cannot be bound. engines: by name, the
    first the default (ServedBundles from ``load_bundles``, or engines served from their bundles' directories).
    reuse_port: share the port with the other processes of `serve --processes` (SO_REUSEPORT). serving=False:
    health stays NOT_SERVING until ``running.set_serving()`` (`serve --processes`: once every process is up).
    metrics: count this server's calls there. Raises DualvecError when the token file or a TLS file cannot be
    used. The bundle reload is the last of ``running.reloaders``; ``cfg.watch`` > 0 starts its polling."""
    # interceptors run in order: metrics counts every call (refusals too), then the token check refuses a call
    # before admission control (or anything else) spends work on it; a request that does not parse is answered
    # INVALID_ARGUMENT next (dualvec.server.malformed), before it takes a place in admission's queue
    auth = TokenAuth(cfg.auth_token_file) if cfg.auth_token_file else None
    credentials = (tls_server_credentials(cfg.tls_cert, cfg.tls_key or "", cfg.tls_client_ca)
                   if cfg.tls_cert else None)
    # admission control bounds the DualVec calls (fast "server overloaded" refusals beyond max_queue, deadlines
    # honoured while waiting); the pool has a thread for every call taken, so health never queues behind searches
    admission = AdmissionControl(cfg.max_queue, cfg.workers, (SERVICE_NAME,), max_streams=cfg.max_streams)
    malformed = MalformedRequests()
    # OpenMP's thread count is per thread: set it in every worker, where FAISS runs (setting it here would only
    # cover this thread, and each single-query search would wake, then spin, a second OpenMP thread)
    threads = max(1, cfg.faiss_threads)
    pool = futures.ThreadPoolExecutor(max_workers=admission.threads, thread_name_prefix="dualvec-rpc",
                                      initializer=faiss.omp_set_num_threads, initargs=(threads,))
    server = grpc.server(pool,
                         interceptors=[i for i in (metrics and metrics.interceptor(engines), auth, malformed, admission)
                                       if i],
                         maximum_concurrent_rpcs=admission.concurrent_rpcs,
                         options=[("grpc.max_receive_message_length", cfg.max_message_bytes),
                                  ("grpc.max_send_message_length", MAX_SEND_MESSAGE_BYTES),
                                  ("grpc.so_reuseport", 1 if reuse_port else 0),
                                  *_connection_age_options(cfg),
                                  ("grpc.server.max_pending_requests", admission.backlog_limits[0]),
                                  ("grpc.server.max_pending_requests_hard_limit", admission.backlog_limits[1])])
    served = ServedSet.of(engines, batch_size=cfg.batch_size, concurrent_batches=cfg.concurrent_batches,
                          on_batch=metrics.batch_observer if metrics is not None else None)
    servicer = DualVecServicer(served, desm_limits(cfg))
    pb_grpc.add_DualVecServicer_to_server(servicer, server)
    if metrics is not None:
        for name, bundle in served.bundles.items():
            metrics.serving(name, bundle.bundle.manifest, bundle.path, content_id=bundle.content_id)
    health_servicer = DrainingHealth(("", SERVICE_NAME))  # NOT_SERVING until set_serving()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{cfg.host}:{cfg.port}"
    try:
        port = (server.add_secure_port(address, credentials) if credentials is not None
                else server.add_insecure_port(address))
    except RuntimeError as exc:
        raise DualvecError(f"cannot listen on {address}: {exc}") from None
    if port == 0:
        raise DualvecError(f"cannot listen on {address} (in use, or not an address of this machine)")
    health_server = health_port = None
    if cfg.health_port is not None:
        try:
            health_server, health_port = serve_health_only(health_servicer, f"{cfg.host}:{cfg.health_port}",
                                                           reuse_port=reuse_port)
        except RuntimeError as exc:
            server.stop(0)
            raise DualvecError(f"--health-port: {exc}") from None
    server.start()
    bundles = BundleReloader(servicer, metrics=metrics, prefault=cfg.prefault)
    running = RunningServer(server, port, health_servicer, servicer, f"{cfg.host}:{port}", admission, auth,
                            metrics, reloaders=[bundles.reload], health_server=health_server,
                            health_port=health_port, bundles=bundles)
    bundles.watch(cfg.watch)
    if serving:
        running.set_serving()
    return running


def _connection_age_options(cfg: ServerConfig) -> list[tuple[str, int]]:
    """Close each connection (GOAWAY, calls in flight given the grace period) after ``max_connection_age``
    seconds, so that clients resolve the target again and find servers added since they connected."""
    if cfg.max_connection_age <= 0:
        return []
    return [("grpc.max_connection_age_ms", int(cfg.max_connection_age * 1000)),
            ("grpc.max_connection_age_grace_ms", int(cfg.grace_seconds * 1000))]


def check_access(cfg: ServerConfig) -> None:
    """Before anything loads: the token file and the TLS files must be usable (DualvecError naming the file and
    the problem otherwise), and an address other hosts can reach without either gets a warning."""
    if cfg.tls_key and not cfg.tls_cert or cfg.tls_cert and not cfg.tls_key:
        raise DualvecError("--tls-cert and --tls-key go together: give both")
    if cfg.tls_client_ca and not cfg.tls_cert:
        raise DualvecError("--tls-client-ca asks clients for certificates over TLS: give --tls-cert and --tls-key")
    if cfg.auth_token_file:
        read_tokens(cfg.auth_token_file)
    if cfg.tls_cert:
        check_tls(cfg.tls_cert, cfg.tls_key or "", cfg.tls_client_ca)
    if not (cfg.auth_token_file or cfg.tls_cert) and not _is_loopback(cfg.host):
        log.warning("serving on %s without --auth-token-file or --tls-cert: any host that can reach this address "
                    "may call the server, and calls travel unencrypted", cfg.host)


def _is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: loopback only if it is localhost
        return False


class _Hangup:
    """SIGHUP runs an action on a thread of its own (the handler only sets an event); a signal that arrives before
    the action is given is kept, and acted on once it is."""

    def __init__(self):
        self._wake = threading.Event()
        signal.signal(signal.SIGHUP, lambda *_: self._wake.set())

    def run(self, action: Callable[[], object]) -> None:
        threading.Thread(target=self._loop, args=(action,), name="dualvec-reload", daemon=True).start()

    def _loop(self, action: Callable[[], object]) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            log.info("SIGHUP received: reloading")
            try:
                action()
            except Exception:  # noqa: BLE001 - a failed reload must not take the server down
                log.exception("reload failed; what was served before keeps serving")


def _forward_hangup_to_children() -> None:
    """The `serve --processes` parent's SIGHUP: each worker process reloads on its own (the parent holds no
    server). A child that has not yet set its own handler inherits this one, and has no children: a no-op."""
    import psutil

    me = psutil.Process()

    def forward(signum, frame):
        for child in me.children():
            try:
                os.kill(child.pid, signal.SIGHUP)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGHUP, forward)


def _child_start_server(metrics: ServerMetrics | None):
    """``start_server`` as each worker process of `serve --processes` calls it: metrics counted in that process,
    SIGHUP reloading that process."""
    def start(engines, cfg, **kwargs):
        if metrics is not None:
            metrics.forget_endpoint()  # the parent's /metrics socket, inherited: not this process's to serve
        hangup = _Hangup()
        running = start_server(engines, cfg, metrics=metrics, **kwargs)
        if any(disk_identity(b.path) != b.identity for b in running.servicer.served.bundles.values()):
            running.bundles.reload()  # a path changed since the parent loaded it (a worker started after a reload)
        hangup.run(running.reload)
        return running
    return start


def _start_metrics_after_forks(metrics: ServerMetrics, host: str, port: int, processes: int) -> None:
    """The parent serves /metrics once it has forked its ``processes`` children (no thread of it is copied into
    one); a later fork (a replaced child) closes its copy of the socket (``_child_start_server``)."""
    forks = [0]

    def after_fork_in_parent():
        forks[0] += 1
        if forks[0] == processes and not metrics.closed:
            try:
                bound = metrics.serve(host, port)
            except DualvecError as exc:
                log.error("%s", exc)
                return
            log.info("metrics on http://%s:%d/metrics (%d processes)", host, bound, processes)

    os.register_at_fork(after_in_parent=after_fork_in_parent)


def serve_forever(cfg: ServerConfig) -> int:
    """`dualvec serve`: check the access options, load, serve until SIGTERM/SIGINT, drain, exit 0. SIGHUP
    reloads (``RunningServer.reload``) in every server process."""
    check_access(cfg)
    check_timings(cfg.drain_delay, cfg.grace_seconds, cfg.max_connection_age)
    if not cfg.watch >= 0:  # NaN too
        raise DualvecError(f"--watch must be >= 0 seconds (0: reload on SIGHUP only), got {cfg.watch:g}")
    cfg = replace(cfg, processes=resolve_processes(cfg.processes, cfg.cpus, available_cpus()))  # checks --cpus
    _forward_hangup_to_children()  # from now on SIGHUP does not end the server; one process replaces it below
    metrics = ServerMetrics.create(multiprocess=cfg.processes > 1) if cfg.metrics_port is not None else None
    try:
        return _serve(cfg, metrics)
    finally:
        if metrics is not None:
            metrics.close()


def _serve(cfg: ServerConfig, metrics: ServerMetrics | None) -> int:
    """Load, serve until SIGTERM/SIGINT, drain, exit 0."""
    signals = ShutdownSignals()
    cfg = replace(cfg, processes=resolve_processes(cfg.processes, cfg.cpus, available_cpus()))  # checks --cpus
    if cfg.processes == 1:
        pin_process(cfg.cpus)  # before any server thread exists: they inherit it
    engines = load_bundles(cfg, metrics)
    # a bundle's vocabulary is millions of long-lived objects: leave them out of every later garbage collection
    # (and, with --processes, keep the collector from writing to pages the children share)
    gc.freeze()
    if cfg.watch > 0:
        log.info("watching %s every %g s: a bundle that changes there is reloaded", ", ".join(cfg.bundles),
                 cfg.watch)
    if cfg.processes > 1:
        if metrics is not None:
            _start_metrics_after_forks(metrics, cfg.host, cfg.metrics_port, cfg.processes)
        return serve_in_processes(cfg, engines, _child_start_server(metrics), signals,
                                  on_exit=metrics.process_exited if metrics is not None else None)
    running = start_server(engines, cfg, metrics=metrics)
    names = ", ".join(engines)
    del engines  # the servicer holds what is served: a reload releases the bundles loaded here
    _Hangup().run(running.reload)
    if metrics is not None:
        log.info("metrics on http://%s:%d/metrics", cfg.host, metrics.serve(cfg.host, cfg.metrics_port))
    log.info("serving %s on %s (health SERVING, reflection on; max_k %d, workers %d, max_queue %d)",
             names, running.address, cfg.max_k, cfg.workers, cfg.max_queue)
    # a timed wait: a signal the kernel hands to another thread (a gRPC one) runs its Python handler only once this
    # thread runs again, and SIGHUP's would otherwise wait for the next SIGTERM
    while not signals.first.wait(0.5):
        pass
    log.info("%s received: draining (delay %.1f s, grace %.1f s)", signals.name, cfg.drain_delay, cfg.grace_seconds)
    running.drain(cfg.drain_delay, cfg.grace_seconds, signals.again)
    log.info("stopped serving on %s", running.address)
    return 0
