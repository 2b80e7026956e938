"""`dualvec serve --processes N`: N server processes on one port, each on its own CPU, sharing one loaded bundle.

One Python process runs Python on one core at a time, and a gRPC call costs more Python than search; under load
a single server saturates its core while the machine has more. Here the parent loads the bundles once (vectors
prefaulted, graph on huge pages, vocabulary frozen out of the garbage collector), checks that the port is free,
then forks N children before any gRPC object exists. Their memory is the parent's until written
(copy-on-write), so the graph and the vectors are held once. Each child pins itself to one CPU and serves the same
port with SO_REUSEPORT, and the kernel spreads connections over them: one client (one channel, one connection)
talks to one child, many clients spread. Measured at 1M x 300 on a 2-CPU machine, clients on the same machine:
two processes (one per CPU) answered 1,934-1,997 queries/s to 32 clients where one process answered
1,307-1,368 (docs/performance.md).

The parent supervises: it reports SERVING once every child is serving, forwards SIGTERM and SIGINT at once, so
that every child drains together (dualvec.server.draining: NOT_SERVING, the drain delay, the grace period), exits
after the last of them, and stops them all, exiting 1, if one of them dies.
"""
from __future__ import annotations

import logging
import os
import select
import signal
import socket
import threading
import time
from dataclasses import replace

from dualvec.kernel.errors import DualvecError
from dualvec.server.draining import ShutdownSignals
from dualvec.server.host.cpu_affinity import AUTO_PIN_MAX_CPUS, available_cpus, format_cpus, parse_cpus

log = logging.getLogger("dualvec.server")


def resolve_processes(requested: int, spec: str, available: set[int] | None) -> int:
    """How many server processes ``--processes`` asks for: a number as given, or 0 for auto: one per CPU of the
    ``--cpus`` set on machines that give this process AUTO_PIN_MAX_CPUS CPUs or fewer (measured there: the same
    single-query latency, 1.6x the throughput under many clients), else 1 (not measured on bigger machines)."""
    if requested < 0:
        raise DualvecError(f"--processes must be >= 0 (0: auto), got {requested}")
    pool = _cpu_pool(spec, available)  # parsed even when not needed: a bad --cpus fails before the bundles load
    if requested:
        return requested
    if pool is None or available is None or len(available) > AUTO_PIN_MAX_CPUS:
        return 1
    return len(pool)


def child_cpus(spec: str, processes: int, available: set[int] | None) -> list[set[int] | None]:
    """The CPU set of each child: one CPU each, in turn, from the ``--cpus`` set (``auto``: every available CPU;
    ``all``: no pinning)."""
    pool = _cpu_pool(spec, available)
    if pool is None:
        return [None] * processes
    return [{pool[i % len(pool)]} for i in range(processes)]


def _cpu_pool(spec: str, available: set[int] | None) -> list[int] | None:
    """The CPUs the workers take turns on, sorted: every available one for ``auto``, the list ``--cpus`` names,
    or None for ``all`` or a platform without CPU affinity (no pinning)."""
    text = spec.strip().lower()
    if text == "all" or available is None:
        return None
    return sorted(available if text == "auto" else parse_cpus(spec, available) or available)


def free_port(host: str, port: int) -> int:
    """``port`` (or a free one for 0), checked free now by a bind without SO_REUSEPORT, so that a port held by any
    server, this one's kind included, is refused. With SO_REUSEADDR, as gRPC binds: the connections of a server
    that just stopped on this port (TIME_WAIT, about a minute) do not hold it. Raises DualvecError naming the
    address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise DualvecError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        return probe.getsockname()[1]


def serve_in_processes(cfg, engines, start_server, signals: ShutdownSignals) -> int:
    """Fork cfg.processes children serving ``engines`` on one port (each through ``start_server(engines, cfg,
    reuse_port=True)``), pinned as ``child_cpus`` says; supervise until ``signals.first`` is set (SIGTERM or
    SIGINT), then have every child drain. Returns the exit code: 0 when every child drained and exited 0."""
    port = free_port(cfg.host, cfg.port)
    if cfg.health_port is not None:  # every child serves health on the same port too
        cfg = replace(cfg, health_port=free_port(cfg.host, cfg.health_port))
    cpus = child_cpus(cfg.cpus, cfg.processes, available_cpus())
    # SIGTERM and SIGINT wait (blocked, not lost) from before each fork until the child has its own handlers: one
    # arriving in between would run the parent's handler in the child, which would then serve on until killed
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    ready_r, ready_w = os.pipe()  # each child writes a byte once it is started
    go_r, go_w = os.pipe()  # then the parent writes one byte per child: every one is up, health turns SERVING
    children: dict[int, int] = {}  # pid -> child number
    for number, cpu in enumerate(cpus, 1):
        pid = os.fork()
        if pid == 0:  # the child: serve, then leave without running the parent's exit handlers
            os.close(ready_r)
            os.close(go_w)
            code = 1
            try:
                code = _serve_child(number, cpu, engines, replace(cfg, port=port), ready_w, go_r, start_server, mask)
            except BaseException:  # noqa: BLE001 - whatever it was, the child must not fall back into the parent
                log.exception("worker process %d failed", number)
            finally:
                os._exit(code)
        children[pid] = number
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    os.close(ready_w)
    os.close(go_r)
    address = f"{cfg.host}:{port}"
    if not _wait_ready(ready_r, len(children), children, signals.first):
        if signals.first.is_set():
            log.info("%s received while the worker processes started: stopping them", signals.name)
        else:
            log.error("a worker process did not start; stopping the others")
        codes = _stop_children(children, cfg.drain_delay + cfg.grace_seconds, signals.again)
        os.close(ready_r)  # after the children are gone: none of them writes to a pipe nobody reads
        os.close(go_w)
        return 0 if signals.first.is_set() and all(c == 0 for c in codes) else 1
    os.close(ready_r)
    os.write(go_w, b"1" * len(children))
    os.close(go_w)
    placement = ", ".join(format_cpus(c) if c else "any" for c in cpus)
    log.info("serving %s on %s (health SERVING, reflection on; max_k %d, workers %d, max_queue %d; %d processes "
             "on CPUs %s)", ", ".join(engines), address, cfg.max_k, cfg.workers, cfg.max_queue, len(children),
             placement)
    failed = None
    while not signals.first.wait(0.5):
        failed = _exited_child(children)
        if failed is not None:
            pid, code = failed
            log.error("worker process %d (pid %d) exited with code %d; stopping the others", children.pop(pid),
                      pid, code)
            break
    if failed is None:
        log.info("%s received: every process draining (delay %.1f s, grace %.1f s)", signals.name,
                 cfg.drain_delay, cfg.grace_seconds)
    codes = _stop_children(children, cfg.drain_delay + cfg.grace_seconds, signals.again)
    if failed is None and all(c == 0 for c in codes):
        log.info("stopped serving on %s", address)
        return 0
    return 1


def _serve_child(number: int, cpu: set[int] | None, engines, cfg, ready_w: int, go_r: int, start_server,
                 mask) -> int:
    parent = os.getppid()
    signals = ShutdownSignals()
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a signal sent since the fork is handled now
    if cpu is not None:
        os.sched_setaffinity(0, cpu)  # the only thread so far: gRPC's threads, made next, inherit it
    running = start_server(engines, cfg, reuse_port=True, serving=False)
    log.info("worker process %d (pid %d) ready on CPU %s", number, os.getpid(), format_cpus(cpu) if cpu else "any")
    os.write(ready_w, b"1")
    os.close(ready_w)
    # health turns SERVING only once the parent has heard from every process: the server as a whole is up
    while not signals.first.is_set():
        if select.select([go_r], [], [], 0.5)[0]:
            if os.read(go_r, 1):  # nothing: the parent is gone
                running.set_serving()
            break
    os.close(go_r)
    while not signals.first.wait(0.5):
        if os.getppid() != parent:  # the parent is gone: nobody will forward a signal (it may itself be pid 1)
            break
    running.drain(cfg.drain_delay, cfg.grace_seconds, signals.again)
    return 0


def _signal_children(children: dict[int, int]) -> None:
    for pid in children:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def _wait_ready(ready_r: int, count: int, children: dict[int, int], stop: threading.Event,
                timeout: float = 120.0) -> bool:
    """True once ``count`` children wrote their byte; False when one exits first, on a signal, or on timeout."""
    got, deadline = 0, time.monotonic() + timeout
    while got < count:
        if stop.is_set() or time.monotonic() > deadline or _exited_child(children, peek=True) is not None:
            return False
        readable, _, _ = select.select([ready_r], [], [], 0.2)
        if readable:
            data = os.read(ready_r, count - got)
            if not data:  # every write end closed without the bytes: the children are gone
                return False
            got += len(data)
    return True


def _exited_child(children: dict[int, int], peek: bool = False) -> tuple[int, int] | None:
    """(pid, exit code) of a child that has exited, reaped, or None."""
    for pid in list(children):
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return pid, 1
        if done:
            code = os.waitstatus_to_exitcode(status)
            if peek:
                children.pop(pid, None)
            return pid, code
    return None


def _stop_children(children: dict[int, int], grace: float, again: threading.Event | None = None) -> list[int]:
    """SIGTERM every child at once (each drains), wait for them (``grace`` plus 10 s), SIGKILL the late ones; when
    ``again`` is set meanwhile (a second signal to the parent), SIGTERM them once more (each cuts its drain delay
    short). Returns their exit codes."""
    _signal_children(children)
    forwarded_again = False
    codes, deadline = [], time.monotonic() + grace + 10.0
    for pid in list(children):
        while True:
            if again is not None and again.is_set() and not forwarded_again:
                forwarded_again = True
                _signal_children(children)
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not ours to wait for any more: its exit code is unknown, so not a success
                log.error("worker process pid %d could not be waited for; its exit code is unknown", pid)
                codes.append(1)
                break
            if done:
                codes.append(os.waitstatus_to_exitcode(status))
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                log.error("worker process pid %d did not stop in time; killed", pid)
                codes.append(-9)
                break
            time.sleep(0.05)
    return codes
