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

The parent supervises, as gunicorn's arbiter does: it reports SERVING once every child is serving, forwards
SIGTERM and SIGINT at once, so that every child drains together (dualvec.server.draining: NOT_SERVING, the drain
delay, the grace period), and exits after the last of them. A child that dies meanwhile (SIGKILL, the OOM killer,
a crash) is reaped and replaced by a new one on its CPU, forked from the same loaded bundles (which it reloads if
their served paths changed since, as the others did); the others serve on, and the new one serves once started.
Clients of the dead one see their connection close and reconnect to a live one. When RESTART_LIMIT children die
within its window, the parent gives up: it stops the others and exits 1. At the stop, a child that has not exited
``grace`` + 10 s after its SIGTERM is killed, and every non-zero exit code is logged.
"""
from __future__ import annotations

import collections
import logging
import os
import select
import signal
import socket
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable

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


# a supervisor that restarts workers gives up when this many die within this many seconds: a worker that cannot
# stay up (a crash at every start, memory exhausted at once) is not restarted forever
RESTART_LIMIT = (5, 60.0)
START_TIMEOUT = 120.0  # seconds a worker may take to start before it counts as failed


@dataclass
class _Child:
    """One worker process as the parent sees it: its pipes (``ready_r``: the child writes a byte once started;
    ``go_w``: the parent writes one when health may turn SERVING) and whether it has started."""

    number: int
    cpu: set[int] | None
    pid: int
    ready_r: int
    go_w: int
    forked: float
    ready: bool = False
    exit_code: int | None = None  # once reaped

    def close(self) -> None:
        for fd in (self.ready_r, self.go_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self.ready_r = self.go_w = -1


def _fork_child(number: int, cpu: set[int] | None, engines, cfg, start_server, others: list[_Child],
                replacement: bool = False) -> _Child:
    """Fork one worker process. SIGTERM and SIGINT wait (blocked, not lost) from before the fork until the child
    has its own handlers: one arriving in between would run the parent's handler in the child, which would then
    serve on until killed."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: serve, then leave without running the parent's exit handlers
            code = 1
            try:
                os.close(ready_r)
                os.close(go_w)
                for other in others:  # the parent's ends of the other workers' pipes
                    other.close()
                code = _serve_child(number, cpu, engines, cfg, ready_w, go_r, start_server, mask, replacement)
            except BaseException:  # noqa: BLE001 - whatever it was, the child must not fall back into the parent
                log.exception("worker process %d failed", number)
            finally:
                os._exit(code)
        os.close(ready_w)
        os.close(go_r)
        return _Child(number, cpu, pid, ready_r, go_w, time.monotonic())
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def serve_in_processes(cfg, engines, start_server, signals: ShutdownSignals,
                       on_exit: Callable[[int], None] | None = None,
                       restart_limit: tuple[int, float] = RESTART_LIMIT) -> int:
    """Fork cfg.processes children serving ``engines`` on one port (each through ``start_server(engines, cfg,
    reuse_port=True)``), pinned as ``child_cpus`` says; supervise until ``signals.first`` is set (SIGTERM or
    SIGINT), then have every child drain. A child that dies meanwhile is reaped (``on_exit(pid)``: the metrics
    forget its live gauges) and replaced by a new one on the same CPU, unless ``restart_limit`` children died
    within its window: then the others are stopped and the server exits 1. Returns the exit code: 0 when every
    child drained and exited 0."""
    port = free_port(cfg.host, cfg.port)
    if cfg.health_port is not None:  # every child serves health on the same port too
        cfg = replace(cfg, health_port=free_port(cfg.host, cfg.health_port))
    cfg = replace(cfg, port=port)
    cpus = child_cpus(cfg.cpus, cfg.processes, available_cpus())
    children: list[_Child] = []
    for number, cpu in enumerate(cpus, 1):
        children.append(_fork_child(number, cpu, engines, cfg, start_server, children))
    address = f"{cfg.host}:{port}"
    if not _wait_ready(children, signals.first):
        if signals.first.is_set():
            log.info("%s received while the worker processes started: stopping them", signals.name)
        else:
            log.error("a worker process did not start; stopping the others")
        codes = _stop_children(children, cfg.drain_delay + cfg.grace_seconds, signals.again, on_exit)
        return 0 if signals.first.is_set() and all(c == 0 for c in codes) else 1
    for child in children:  # every one is up: health turns SERVING
        _go(child)
    placement = ", ".join(format_cpus(c) if c else "any" for c in cpus)
    log.info("serving %s on %s (health SERVING, reflection on; max_k %d, workers %d, max_queue %d; %d processes "
             "on CPUs %s)", ", ".join(engines), address, cfg.max_k, cfg.workers, cfg.max_queue, len(children),
             placement)
    deaths: collections.deque[float] = collections.deque()
    gave_up = False
    while not signals.first.wait(0.2) and not gave_up:
        for child in list(children):
            if not child.ready:
                _check_started(child)
            code = _reap(child)
            if code is None:
                continue
            children.remove(child)
            child.close()
            if on_exit is not None:
                on_exit(child.pid)
            now = time.monotonic()
            deaths.append(now)
            while deaths and deaths[0] < now - restart_limit[1]:
                deaths.popleft()
            if len(deaths) >= restart_limit[0]:
                log.error("worker process %d (pid %d) %s; %d worker processes died within %.0f s: giving up, "
                          "stopping the others", child.number, child.pid, _describe(code), len(deaths),
                          restart_limit[1])
                gave_up = True
                break
            replacement = _fork_child(child.number, child.cpu, engines, cfg, start_server, children,
                                      replacement=True)
            children.append(replacement)
            log.error("worker process %d (pid %d) %s; started pid %d in its place", child.number, child.pid,
                      _describe(code), replacement.pid)
    if not gave_up:
        log.info("%s received: every process draining (delay %.1f s, grace %.1f s)", signals.name,
                 cfg.drain_delay, cfg.grace_seconds)
    codes = _stop_children(children, cfg.drain_delay + cfg.grace_seconds, signals.again, on_exit)
    if not gave_up and all(c == 0 for c in codes):
        log.info("stopped serving on %s", address)
        return 0
    return 1


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name} (exit code {code})"
        except ValueError:
            pass
    return f"exited with code {code}"


def _go(child: _Child) -> None:
    """Tell a started child that health may turn SERVING."""
    child.ready = True
    try:
        os.write(child.go_w, b"1")
    except OSError:  # it is gone already: reaping it says so
        pass


def _check_started(child: _Child) -> None:
    """A replacement child: once it has started, let it serve; one that does not start within START_TIMEOUT is
    killed (and reaped, and counted, as any dead child)."""
    readable, _, _ = select.select([child.ready_r], [], [], 0)
    if readable and os.read(child.ready_r, 1):
        _go(child)
        log.info("worker process %d (pid %d) serving again", child.number, child.pid)
    elif time.monotonic() - child.forked > START_TIMEOUT:
        log.error("worker process %d (pid %d) did not start in %.0f s; killing it", child.number, child.pid,
                  START_TIMEOUT)
        try:
            os.kill(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _serve_child(number: int, cpu: set[int] | None, engines, cfg, ready_w: int, go_r: int, start_server,
                 mask, replacement: bool = False) -> int:
    parent = os.getppid()
    signals = ShutdownSignals()
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a signal sent since the fork is handled now
    if cpu is not None:
        os.sched_setaffinity(0, cpu)  # the only thread so far: gRPC's threads, made next, inherit it
    running = start_server(engines, cfg, reuse_port=True, serving=False)
    if replacement and hasattr(running, "reload"):
        # the bundles forked here are the ones the parent loaded at start: whatever the others reloaded since
        # (a served path changed), and the token file, this one reloads too before it serves
        running.reload()
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


def _signal_children(children: list[_Child]) -> None:
    for child in children:
        try:
            os.kill(child.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def _wait_ready(children: list[_Child], stop: threading.Event, timeout: float = START_TIMEOUT) -> bool:
    """True once every child wrote its byte; False when one exits first, on a signal, or on timeout."""
    deadline = time.monotonic() + timeout
    waiting = {c.ready_r: c for c in children}
    while waiting:
        if stop.is_set() or time.monotonic() > deadline or any(_reap(c) is not None for c in children):
            return False
        readable, _, _ = select.select(list(waiting), [], [], 0.2)
        for fd in readable:
            if not os.read(fd, 1):  # the write end closed without the byte: the child is gone
                return False
            del waiting[fd]
    return True


def _reap(child: _Child, peek: bool = False) -> int | None:
    """The exit code of a child that has exited (reaped now, or before), or None while it runs."""
    if child.exit_code is not None:
        return child.exit_code
    try:
        done, status = os.waitpid(child.pid, os.WNOHANG)
    except ChildProcessError:  # not ours to wait for any more: its exit code is unknown, so not a success
        log.error("worker process %d (pid %d) could not be waited for; its exit code is unknown", child.number,
                  child.pid)
        child.exit_code = 1
        return 1
    if not done:
        return None
    child.exit_code = os.waitstatus_to_exitcode(status)
    return child.exit_code


def _stop_children(children: list[_Child], grace: float, again: threading.Event | None = None,
                   on_exit: Callable[[int], None] | None = None) -> list[int]:
    """SIGTERM every child at once (each drains), wait for them (``grace`` plus 10 s), SIGKILL the late ones; when
    ``again`` is set meanwhile (a second signal to the parent), SIGTERM them once more (each cuts its drain delay
    short). Each non-zero exit code is logged. Returns their exit codes."""
    _signal_children([c for c in children if c.exit_code is None])
    forwarded_again = False
    codes, deadline = [], time.monotonic() + grace + 10.0
    for child in children:
        while True:
            if again is not None and again.is_set() and not forwarded_again:
                forwarded_again = True
                _signal_children([c for c in children if c.exit_code is None])
            code = _reap(child)
            if code is not None:
                if code != 0:
                    log.error("worker process %d (pid %d) %s", child.number, child.pid, _describe(code))
                break
            if time.monotonic() > deadline:
                try:
                    os.kill(child.pid, signal.SIGKILL)
                    os.waitpid(child.pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
                log.error("worker process %d (pid %d) did not stop in time; killed (exit code -9)", child.number,
                          child.pid)
                code = child.exit_code = -9
                break
            time.sleep(0.05)
        codes.append(code)
        child.close()
        if on_exit is not None:
            on_exit(child.pid)
    return codes
