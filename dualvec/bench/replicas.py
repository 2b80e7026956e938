"""Local replicas: several `dualvec serve` processes on one machine behind a client's round_robin, the way a
Kubernetes headless Service puts pods behind one name (docs/scaling.md).

- ``rolling_restart``: client threads call through one target naming every replica (``ipv4:a,b,c``, the default
  service config: round_robin, UNAVAILABLE retried) while each replica in turn gets SIGTERM, is watched through
  its own health service until it exits, and is started again on the same port. Counts every failed call and
  whether each draining replica said NOT_SERVING before it exited.
- ``measure``: for 1, 2, 3... replicas, `dualvec loadtest` through the same kind of target (closed loop, 32
  clients by default), and each replica's memory.

On one machine the replicas share its CPUs (and the load generator takes its share too): more replicas add
processes, not cores. What this measures is the client-side balancing and the cost of running replicas apart
(one Python process per core), not the throughput of replicas on machines of their own.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dualvec.client import Client, ClientError, pick_free_port, wait_until_serving

log = logging.getLogger("dualvec.bench.replicas")

DUALVEC = str(Path(sys.executable).with_name("dualvec"))
STATUS_NAMES = health_pb2.HealthCheckResponse.ServingStatus.Name


@dataclass
class Replica:
    """One `dualvec serve BUNDLE --port PORT --processes 1` subprocess, restartable on the same port. ``args``
    are more serve options (``--drain-delay``, ``--grace``...); its log goes to ``log_path`` (appended)."""

    bundle: str
    port: int
    args: tuple[str, ...] = ()
    log_path: Path | None = None
    proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "Replica":
        out = open(self.log_path, "a") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen([DUALVEC, "serve", self.bundle, "--port", str(self.port), "--processes", "1",
                                      "--cpus", "all", *self.args], stdout=out, stderr=out,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if out is not subprocess.DEVNULL:
            out.close()
        return self

    def wait_serving(self, timeout: float = 60.0) -> "Replica":
        wait_until_serving(self.address, timeout, process=self.proc)
        return self

    def health(self, timeout: float = 1.0) -> str:
        """Health of this replica alone (a connection of its own): a status name, or the error's code name."""
        with grpc.insecure_channel(self.address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            try:
                status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
            except grpc.RpcError as exc:
                return exc.code().name
        return STATUS_NAMES(status.status)

    def terminate_watching(self, timeout: float) -> dict:
        """SIGTERM, then ask health every 50 ms until the process exits. Returns its exit code, the seconds it took,
        and the statuses heard in order (repeats folded)."""
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        heard: list[str] = []
        while self.proc.poll() is None and time.monotonic() - began < timeout:
            status = self.health(timeout=0.5)
            if self.proc.poll() is None and (not heard or heard[-1] != status):
                heard.append(status)
            time.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait()
        return {"port": self.port, "exit_code": code, "seconds": round(time.monotonic() - began, 2), "heard": heard}

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def _processes(self) -> list[psutil.Process]:
        """The server process and its worker processes (`--processes N`)."""
        top = psutil.Process(self.proc.pid)
        return [top, *top.children(recursive=True)]

    def cpu_seconds(self) -> float:
        """User + system CPU time the server's processes have used so far."""
        return sum(t.user + t.system for t in (p.cpu_times() for p in self._processes()))

    def memory(self) -> dict:
        """Memory of the server in MiB: the largest RSS of its processes, PSS and USS summed over them."""
        infos = [p.memory_full_info() for p in self._processes()]
        return {"rss": round(max(i.rss for i in infos) / 2**20, 1), "pss": round(sum(i.pss for i in infos) / 2**20, 1),
                "uss": round(sum(i.uss for i in infos) / 2**20, 1), "processes": len(infos)}


def target_of(replicas: list[Replica]) -> str:
    """One gRPC target naming every replica (what a headless Service's DNS name resolves to)."""
    return "ipv4:" + ",".join(r.address for r in replicas)


def start_replicas(bundle: str, count: int, args: tuple[str, ...] = (), log_dir: Path | None = None,
                   timeout: float = 120.0) -> list[Replica]:
    replicas = [Replica(bundle, pick_free_port(), args, (log_dir / f"replica-{i}.log") if log_dir else None)
                for i in range(count)]
    try:
        for r in replicas:
            r.start()
        for r in replicas:
            r.wait_serving(timeout)
    except BaseException:
        stop_replicas(replicas)
        raise
    return replicas


def stop_replicas(replicas: list[Replica]) -> None:
    for r in replicas:
        if r.proc is not None and r.proc.poll() is None:
            r.proc.send_signal(signal.SIGTERM)
    for r in replicas:
        if r.proc is not None:
            try:
                r.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                r.kill()


@dataclass
class ClientThreads:
    """``threads`` threads, each with its own dualvec.Client on ``target`` (with ``service_config``: None is the
    default), calling Search in a loop until ``finish``; calls and failures are counted."""

    target: str
    threads: int = 6
    words: tuple[str, ...] = ("the",)
    service_config: str | dict | None = None
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.threads)]
        for t in self._threads:
            t.start()

    def _run(self, i: int) -> None:
        spaces = ("in", "out")
        with Client(self.target, timeout=10.0, service_config=self.service_config) as client:
            n = i
            while not self._stop.is_set():
                word = self.words[n % len(self.words)]
                try:
                    client.search([word], query_space=spaces[n % 2], target_space=spaces[(n // 2) % 2], k=10)
                    with self._lock:
                        self.ok += 1
                except ClientError as exc:
                    with self._lock:
                        self.failures.append(f"{exc.code.name}: {exc.details}")
                n += 1

    def finish(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)


def rolling_restart(replicas: list[Replica], *, threads: int = 6, words: tuple[str, ...] = ("the",),
                    settle: float = 1.0, timeout: float = 60.0, service_config: str | dict | None = None) -> dict:
    """Restart each replica in turn (SIGTERM, watched until it exits; started again on its port; SERVING) while
    ``threads`` client threads call through every replica (with ``service_config``, None: the default);
    ``settle`` seconds of load before the first and after each restart. Returns the calls answered, the failures,
    and what each drain looked like."""
    load = ClientThreads(target_of(replicas), threads, words, service_config)
    drains = []
    try:
        time.sleep(settle)
        for r in replicas:
            drains.append(r.terminate_watching(timeout))
            r.start().wait_serving(timeout)
            time.sleep(settle)
    finally:
        load.finish()
    for d in drains:
        d["not_serving_before_exit"] = "NOT_SERVING" in d["heard"]
    return {"target": target_of(replicas), "threads": threads, "calls_ok": load.ok,
            "calls_failed": len(load.failures), "failures": load.failures[:10], "drains": drains}


def loadtest(target: str, *, concurrency: int = 32, duration: float = 10.0, warmup: float = 2.0,
             processes: int = 2, channels: int = 4, extra: tuple[str, ...] = ()) -> dict:
    """`dualvec loadtest TARGET` (closed loop) as a subprocess; its JSON summary."""
    cmd = [DUALVEC, "loadtest", target, "--concurrency", str(concurrency), "--duration", str(duration),
           "--warmup", str(warmup), "--processes", str(processes), "--channels", str(channels), "--json", *extra]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + warmup + 300)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {run.stderr.strip().splitlines()[-1:]}")
    return json.loads(run.stdout)


def measure(bundle: str, counts: tuple[int, ...] = (1, 2, 3), *, concurrency: int = 32, duration: float = 10.0,
            warmup: float = 2.0, processes: int = 2, channels: int = 4, args: tuple[str, ...] = (),
            log_dir: Path | None = None) -> list[dict]:
    """For each replica count: start the replicas, load-test them through one round_robin target, read each
    replica's memory and the servers' CPU time per call (over warm-up and measured window, whose calls are
    counted at the measured rate), stop them. One dict per count."""
    rows = []
    for count in counts:
        replicas = start_replicas(bundle, count, args, log_dir)
        try:
            machine, servers, generator = _busy_seconds(), sum(r.cpu_seconds() for r in replicas), _children_cpu()
            began = time.monotonic()
            result = loadtest(target_of(replicas), concurrency=concurrency, duration=duration, warmup=warmup,
                              processes=processes, channels=channels)
            wall = time.monotonic() - began
            servers = sum(r.cpu_seconds() for r in replicas) - servers
            generator = _children_cpu() - generator
            machine = _busy_seconds() - machine
            memory = [r.memory() for r in replicas]
        finally:
            stop_replicas(replicas)
        calls = result["achieved_rate"] * (duration + warmup)
        cpus = psutil.cpu_count() or 1
        rows.append({"replicas": count, "result": result, "memory_mib": memory,
                     "server_cpu_ms_per_call": round(1000 * servers / calls, 3) if calls else None,
                     # CPU taken by processes other than the servers and the load generator, as a share of the
                     # machine's CPUs over the run: above a few percent, the row measured a busy machine
                     "others_cpu_share": round(max(0.0, machine - servers - generator) / (wall * cpus), 3)})
    return rows


def _busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (not idle, not waiting for I/O), all CPUs summed."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def _children_cpu() -> float:
    """CPU seconds of this process's finished children (the load generator and its processes, once waited)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
