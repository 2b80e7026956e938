#!/usr/bin/env python3
"""Benchmark one dualvec bundle against the targets of DESIGN.md section 3, with peers measured side by side.

    python scripts/bench.py BUNDLE [--model GENSIM_MODEL] [--quick] [--queries N] [--out DIR]
                            [--phases search,throughput,sweep] [--peers gensim,hnswlib,qdrant] ...

In one run, printed as one table (each section followed by the command that reproduces it), written as
OUT/bench.json, OUT/bench.png (recall vs latency, one curve per space pair) and OUT/latency.png (where a served
query's median time goes: the bare gRPC call, the engine's search, the rest):

  search      recall@10 against exact search of the 4 pairs (IN->IN, IN->OUT, OUT->IN, OUT->OUT) for query words
              drawn uniformly from the vocabulary and by word frequency, query word excluded, ann-benchmarks' tie
              rule; in-process (the server's SearchEngine with the bundle's tuned parameters) and served (the
              answers of a `dualvec serve` subprocess through gRPC); single-query latency p50/p99 of both and of
              the FAISS index alone; server memory (RSS, USS).
  throughput  gRPC at 1, 8 and 32 concurrent closed-loop clients, from Python clients (spread over processes)
              and, where Go and grpc-go are installed, from a compiled load generator that leaves the CPUs to the
              server (dualvec/bench/grpc_loadgen.go); the same FAISS indexes in-process: threads calling
              SpaceIndex.search one query at a time, and batches of 64.
  sweep       nprobe / efSearch around each pair's tuned value: recall vs latency (the plot).
  peers       gensim most_similar (IN->IN), hnswlib tuned to dualvec's recall per pair, Qdrant local mode with
              named vectors "in"/"out" (all four pairs; capped by --peer-sample): ratios to dualvec.

Build time, bundle size and the build's peak memory come from the bundle's manifest. Measuring is in
dualvec.bench.measure and dualvec.bench.load, the peers' adapters in dualvec.bench.peers, table/JSON/plot in dualvec.bench.report.
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# the report finds each timed phase's CPU shares by these names
from dualvec.bench.report import BUSY_SHARE, SEARCH_PHASE, THROUGHPUT_PHASE
from dualvec.kernel.truth import exact_truth, recall as recall_of

PHASES = ("search", "throughput", "sweep")
PEERS = ("gensim", "hnswlib", "qdrant")
LOAD_GENERATORS = ("python", "go")

log = logging.getLogger("bench")


@dataclass(frozen=True)
class BenchConfig:
    """Everything a run depends on, fixed once from the command line."""

    bundle: str
    model: str | None = None
    out: str = ""
    quick: bool = False
    phases: tuple[str, ...] = PHASES
    peers: tuple[str, ...] = PEERS
    k: int = 10
    queries: int = 1000
    seed: int = 2024
    duration: float = 10.0
    clients: tuple[int, ...] = (1, 8, 32)
    client_processes: int = 4
    load_generators: tuple[str, ...] = LOAD_GENERATORS
    batch: int = 64
    sweep_queries: int = 300
    gensim_queries: int = 50
    peer_sample: int = 100_000
    peer_queries: int = 50
    hnsw_m: int = 16
    hnsw_ef_construction: int = 200
    hnsw_spaces: tuple[str, ...] = ("in", "out")
    hnsw_tune_queries: int = 200
    hnsw_max_ef: int = 4096
    server_args: tuple[str, ...] = ()
    serve_command: str = ""
    quiet: bool = False

    @classmethod
    def quick_defaults(cls) -> dict:
        """What --quick changes (unless the option is given explicitly)."""
        return {"queries": 100, "duration": 2.0, "sweep_queries": 50, "gensim_queries": 20, "peer_sample": 5000,
                "peer_queries": 10, "hnsw_ef_construction": 100, "hnsw_tune_queries": 50,
                "hnsw_max_ef": 1024}


def parse_args(argv: list[str] | None) -> BenchConfig:
    p = argparse.ArgumentParser(prog="bench.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="--quick sets --queries 100 --duration 2 --sweep-queries 50 --gensim-queries "
                                       "20 --peer-sample 5000 --peer-queries 10 --hnsw-ef-construction 100 "
                                       "--hnsw-tune-queries 50 --hnsw-max-ef 1024 (explicit options win).")
    p.add_argument("bundle", help="bundle directory (dualvec build)")
    p.add_argument("--model", help="gensim model for the gensim baseline (default: KeyedVectors from the bundle's "
                   "IN rows)")
    p.add_argument("--quick", action="store_true", help="smoke run: few queries, short throughput runs, small peers")
    p.add_argument("--out", help="directory for bench.json and bench.png (default: $TMPDIR/dualvec-bench/NAME)")
    p.add_argument("--phases", default=",".join(PHASES), help=f"dualvec phases to run, of {','.join(PHASES)}")
    p.add_argument("--peers", default=",".join(PEERS), help=f"peers to measure, of {','.join(PEERS)}, or none")
    p.add_argument("-k", type=int, default=10, help="neighbours per query (10)")
    p.add_argument("--queries", type=int, help="query words per distribution (1000)")
    p.add_argument("--seed", type=int, default=2024, help="query sampling seed (2024)")
    p.add_argument("--duration", type=float, help="seconds per throughput measurement (10)")
    p.add_argument("--clients", default="1,8,32", help="concurrent gRPC clients to measure (1,8,32)")
    p.add_argument("--client-processes", type=int, default=4, help="processes the gRPC clients are spread over (4)")
    p.add_argument("--load-generators", default=",".join(LOAD_GENERATORS),
                   help="gRPC load generators of the throughput phase, of python,go (both; go is skipped, with "
                        "the reason, where it cannot be built: it needs apt-get install golang-go "
                        "golang-google-grpc-dev)")
    p.add_argument("--batch", type=int, default=64, help="queries per call of the batched in-process run (64)")
    p.add_argument("--sweep-queries", type=int, help="query words per distribution in the sweep (300)")
    p.add_argument("--gensim-queries", type=int, help="most_similar calls timed (50)")
    p.add_argument("--peer-sample", type=int, help="most frequent words loaded into Qdrant (100000)")
    p.add_argument("--peer-queries", type=int, help="Qdrant queries per pair and distribution (50)")
    p.add_argument("--hnsw-m", type=int, default=16, help="hnswlib M (16)")
    p.add_argument("--hnsw-ef-construction", type=int, help="hnswlib ef_construction (200)")
    p.add_argument("--hnsw-spaces", default="in,out", help="spaces hnswlib indexes (in,out: all four pairs)")
    p.add_argument("--hnsw-tune-queries", type=int, help="query words per distribution to tune hnswlib's ef (200)")
    p.add_argument("--hnsw-max-ef", type=int, help="largest ef tried when tuning hnswlib (4096)")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for `dualvec serve` (repeatable), e.g. --server-arg=--workers=8")
    p.add_argument("--serve-command", default="", metavar="CMD",
                   help="what runs `serve` (default: the dualvec script beside this Python); e.g. another checkout's "
                        "'/path/venv/bin/dualvec' to compare server variants on the same bundle")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="debug logs")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.debug else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s bench: %(message)s", datefmt="%H:%M:%S")
    phases = _choices(a.phases, PHASES, "--phases", p)
    peers = _choices(a.peers, PEERS, "--peers", p)
    generators = _choices(a.load_generators, LOAD_GENERATORS, "--load-generators", p)
    base = BenchConfig(bundle=a.bundle)
    quick = BenchConfig.quick_defaults() if a.quick else {}

    def pick(name: str):
        given = getattr(a, name)
        return given if given is not None else quick.get(name, getattr(base, name))

    out = a.out or str(Path(tempfile.gettempdir()) / "dualvec-bench" / Path(a.bundle).resolve().name)
    try:
        clients = tuple(int(c) for c in a.clients.split(",") if c.strip())
    except ValueError:
        p.error(f"--clients: expected numbers like 1,8,32, got {a.clients!r}")
    return BenchConfig(bundle=a.bundle, model=a.model, out=out, quick=a.quick, phases=phases, peers=peers, k=a.k,
                       queries=pick("queries"), seed=a.seed, duration=pick("duration"), clients=clients,
                       client_processes=a.client_processes, load_generators=generators, batch=a.batch,
                       sweep_queries=pick("sweep_queries"),
                       gensim_queries=pick("gensim_queries"), peer_sample=pick("peer_sample"),
                       peer_queries=pick("peer_queries"), hnsw_m=a.hnsw_m,
                       hnsw_ef_construction=pick("hnsw_ef_construction"),
                       hnsw_spaces=tuple(s.strip() for s in a.hnsw_spaces.split(",") if s.strip()),
                       hnsw_tune_queries=pick("hnsw_tune_queries"), hnsw_max_ef=pick("hnsw_max_ef"),
                       server_args=tuple(a.server_arg), serve_command=a.serve_command, quiet=a.quiet)


def _choices(text: str, allowed: tuple[str, ...], flag: str, parser: argparse.ArgumentParser) -> tuple[str, ...]:
    items = tuple(x.strip().lower() for x in text.split(",") if x.strip())
    if items in ((), ("none",)):
        return ()
    bad = [x for x in items if x not in allowed]
    if bad:
        parser.error(f"{flag}: unknown {', '.join(bad)} (choose from {', '.join(allowed)}, or none)")
    return tuple(x for x in allowed if x in items)


# ------------------------------------------------------------------------------------------------------------ run

class Bench:
    """One benchmark run: holds the bundle, the query samples, their exact truth and the result dict."""

    def __init__(self, cfg: BenchConfig):
        import faiss
        import numpy as np

        from dualvec.kernel.bundle import read_bundle
        from dualvec.server.host.prefault import prepare_for_serving
        import dualvec.bench.measure as M

        self.cfg, self.np, self.faiss, self.M = cfg, np, faiss, M
        self.ncpu = os.cpu_count() or 1
        self.result: dict = {"command": self.repro(), "config": _config_dict(cfg), "phase_seconds": {},
                             "machine": {"cpus": self.ncpu, "python": sys.version.split()[0],
                                         "faiss": faiss.__version__, "load_average_at_start": os.getloadavg(),
                                         "others_cpu_share": {}, "steal_cpu_share": {}}, "problems": []}
        self.server = None
        with self.phase("load bundle and ground truth"):
            self.bundle = read_bundle(cfg.bundle, checksums=False)
            prepare_for_serving(self.bundle)  # as the server readies it
            b = self.bundle
            self.pairs = [p for p in ("in-in", "in-out", "out-in", "out-out")
                          if all(b.has_space(s) for s in _spaces(p))]
            self.qids = M.draw_queries(b, cfg.queries, cfg.seed)
            self.truth = self.compute_truth(self.qids)
            self.result["bundle"] = {
                "path": str(b.path), "vocab_size": b.vocab_size, "dim": b.dim, "spaces": b.manifest.spaces,
                "indexes": {s: b.manifest.indexes[s].description for s in b.manifest.spaces},
                "tuned": {p: b.pair_tuning(p).params.to_dict() for p in self.pairs},
                "tuned_recall": {p: {"uniform": b.pair_tuning(p).recall_uniform,
                                     "frequency": b.pair_tuning(p).recall_frequency} for p in self.pairs}}

    # ------------------------------------------------------------------------------------------------ plumbing
    @contextmanager
    def phase(self, name: str, timed: bool = False):
        """Time a phase; timed=True: also measure the CPU share other processes and the hypervisor took meanwhile
        (a busy machine makes latency and throughput pessimistic) and note it as a problem above BUSY_SHARE."""
        log.info("phase: %s", name)
        t0 = time.perf_counter()
        load = self.M.OtherLoad(lambda: [self.server.pid] if self.server is not None and self.server.alive()
                                else []).start()
        try:
            yield
        finally:
            self.result["phase_seconds"][name] = round(time.perf_counter() - t0, 2)
            share = load.stop() if time.perf_counter() - t0 >= 0.5 else 0.0  # too short to tell
            steal = load.steal_share
            self.result["machine"]["others_cpu_share"][name] = round(share, 3)
            self.result["machine"]["steal_cpu_share"][name] = round(steal, 3)
            log.info("phase: %s done in %.1f s (other processes used %.0f%% of the CPUs, the hypervisor %.0f%%)",
                     name, time.perf_counter() - t0, 100 * share, 100 * steal)
            if timed and share + steal > BUSY_SHARE:
                self.result["problems"].append(
                    f"machine busy during '{name}': other processes used {share:.0%} of the {self.ncpu} CPUs and "
                    f"the hypervisor {steal:.0%} (load average {os.getloadavg()[0]:.1f}); its latency/throughput "
                    f"numbers are pessimistic")

    def repro(self, phases: tuple[str, ...] | None = None, peers: tuple[str, ...] | None = None,
              extra: list[str] | None = None) -> str:
        """The command that reproduces a section: the same bundle, sample and seed, restricted to phases/peers."""
        c = self.cfg
        args = [sys.executable, sys.argv[0] if sys.argv and sys.argv[0].endswith(".py") else "scripts/bench.py",
                c.bundle, "--seed", str(c.seed), "--queries", str(c.queries)]
        if c.quick:
            args.append("--quick")
        args += ["--phases", ",".join(c.phases if phases is None else phases) or "none",
                 "--peers", ",".join(c.peers if peers is None else peers) or "none"]
        if c.model and (peers is None or "gensim" in peers):
            args += ["--model", c.model]
        if c.load_generators != LOAD_GENERATORS and (phases is None or "throughput" in phases):
            args += ["--load-generators", ",".join(c.load_generators) or "none"]
        args += [f"--server-arg={a}" for a in c.server_args]
        if c.serve_command:
            args += ["--serve-command", c.serve_command]
        return shlex.join(args + (extra or []))

    def compute_truth(self, qids: dict, limit: int | None = None) -> dict:
        """{pair: {dist: Truth}} exact, with every core."""
        self.faiss.omp_set_num_threads(self.ncpu)
        out = {}
        for p in self.pairs:
            _, t = _spaces(p)
            out[p] = {d: exact_truth(self.bundle.spaces[t].vectors, self.M.query_sample(self.bundle, p, ids),
                                     self.cfg.k, limit) for d, ids in qids.items()}
        return out

    def measure(self, adapter, qids: dict, truth: dict, pairs=None, desc: str = "",
                between=None) -> dict:
        """Run an adapter over every (pair, distribution) sample one query at a time, the pairs interleaved
        (bench_measure.run_interleaved): recall and latency. ``between``: a reference call made and timed once per
        round of pairs; its latency is returned as "between_us"."""
        M, np = self.M, self.np
        pairs = list(pairs or self.pairs)
        recall, lat, found = {p: {} for p in pairs}, {}, {p: {} for p in pairs}
        times: dict[str, list] = {p: [] for p in pairs}
        by_draw: dict[str, dict] = {p: {} for p in pairs}
        reference = []
        for d, ids in qids.items():
            runs, ref = M.run_interleaved(adapter.query, pairs, ids, self.cfg.k, between=between,
                                          desc=f"{desc} {d}", quiet=self.cfg.quiet)
            reference.append(ref)
            for p, run in runs.items():
                _, t = _spaces(p)
                recall[p][d] = recall_of(self.bundle.spaces[t].vectors, M.query_sample(self.bundle, p, ids),
                                         truth[p][d], run.found)
                found[p][d] = run.found
                times[p].append(run.seconds)
                by_draw[p][d] = M.percentiles_us(run.seconds)
                if run.errors:
                    self.result["problems"].append(f"{adapter.name} {p} {d}: {run.errors} of {len(ids)} queries "
                                                   f"failed, e.g. {run.first_error[:200]}")
        for p in pairs:
            lat[p] = M.percentiles_us(np.concatenate(times[p]))
        lat["all"] = M.percentiles_us(np.concatenate([t for p in pairs for t in times[p]])) if pairs else {"n": 0}
        out = {"recall": recall, "latency_us": lat, "latency_us_by_draw": by_draw, "_found": found}
        if between is not None:
            out["between_us"] = M.percentiles_us(np.concatenate(reference))
        return out

    # ------------------------------------------------------------------------------------------------- phases
    def run(self) -> dict:
        cfg, r = self.cfg, self.result
        self.build_info()
        with self.phase("index diagnostics"):
            r["problems"].extend(self.M.index_diagnostics(self.bundle, cfg.k))
        server = None
        try:
            if "search" in cfg.phases or "throughput" in cfg.phases:
                with self.phase("server start"):
                    server = self.server = self.M.ServerProcess(cfg.bundle, cfg.server_args,
                                                                prefix=shlex.split(cfg.serve_command)).start()
                    r["server"] = {"command": shlex.join(server.command), "address": server.address,
                                   "pid": server.pid}
                    r["memory"] = {"after_load": server.memory(), "load_seconds": server.load_seconds,
                                   "command": self.repro(("search",), ())}
            if "search" in cfg.phases:
                with self.phase(SEARCH_PHASE, timed=True):
                    self.search_phase(server)
                r["memory"]["after_search"] = server.memory()
            if "throughput" in cfg.phases:
                with self.phase(THROUGHPUT_PHASE, timed=True):
                    self.throughput_phase(server)
            if server is not None:
                if not server.alive():
                    r["problems"].append(f"the server exited during the benchmark (code {server.proc.returncode});"
                                         f" its last log lines: {''.join(list(server.log_tail)[-5:])}")
                else:
                    r["memory"]["after_benchmark"] = server.memory()
        finally:
            if server is not None:
                code = server.stop()
                r.setdefault("server", {})["exit_code"] = code
                r["server"]["log_errors"] = server.errors[-20:]
                if code not in (0, None):
                    r["problems"].append(f"`dualvec serve` exited with code {code} on SIGTERM (expected 0)")
                if server.errors:
                    r["problems"].append(f"the server logged {len(server.errors)} warnings/errors, e.g. "
                                         f"{server.errors[0][:200]}")
        if "sweep" in cfg.phases:
            with self.phase("sweep", timed=True):
                self.sweep_phase()
        r["peers"] = {}
        for name in cfg.peers:
            with self.phase(f"peer {name}", timed=True):
                try:
                    getattr(self, f"peer_{name}")()
                except Exception as exc:  # a peer failing must not lose the rest of the run
                    log.exception("peer %s failed", name)
                    r["peers"][name] = {"error": f"{type(exc).__name__}: {exc}"}
        from dualvec.bench.report import judge_targets

        r["targets"] = judge_targets(r)
        return r

    def build_info(self) -> None:
        m, b = self.bundle.manifest, self.bundle
        build = m.build
        by_kind: dict[str, int] = {}
        for f in Path(b.path).iterdir():
            if f.is_file():
                kind = ("index" if f.name.endswith(".faiss") else "vectors" if ".vectors." in f.name else
                        "hubs" if f.name.startswith("hubs.") else "other")
                by_kind[kind] = by_kind.get(kind, 0) + f.stat().st_size
        per_space = {s: float(m.indexes[s].build_seconds or 0) for s in m.spaces}
        src = m.source.get("path", "MODEL")
        factory = {s: m.indexes[s].spec.factory or m.indexes[s].spec.kind for s in m.spaces}
        index_opt = next(iter(factory.values()))
        self.result["build"] = {
            "seconds": float(build.seconds or 0), "per_space_seconds": per_space,
            "index_seconds": sum(per_space.values()),
            "tuning_seconds": float(build.phases.get("tuning") or 0),
            "peak_memory_mib": build.peak_memory_mib, "faiss_threads": build.faiss_threads,
            "bundle_bytes": self.M.directory_bytes(b.path), "bytes_by_kind": by_kind,
            "command": f"dualvec info {shlex.quote(str(b.path))}   (built by: dualvec build {shlex.quote(src)} -o "
                       f"{shlex.quote(str(b.path))} --index {shlex.quote(index_opt)})"}

    def search_phase(self, server) -> None:
        from dualvec.bench.peers import DualvecEngine, DualvecGrpc, DualvecIndex

        cfg, np, M = self.cfg, self.np, self.M
        self.faiss.omp_set_num_threads(1)  # as the server runs FAISS
        out: dict = {"command": self.repro(("search",), ()),
                     "params": {p: str(self.bundle.tuning(*_spaces(p)).params) for p in self.pairs}}
        index = DualvecIndex(self.bundle)
        M.warm_up(index.query, self.pairs, self.qids["uniform"], cfg.k, 50)
        res = self.measure(index, self.qids, self.truth, desc="index")
        out["index"] = {"recall": res["recall"], "latency_us": res["latency_us"]}
        engine = DualvecEngine(self.bundle)
        M.warm_up(engine.query, self.pairs, self.qids["uniform"], cfg.k, 50)
        res = self.measure(engine, self.qids, self.truth, desc="engine")
        found_local = res.pop("_found")
        out["inprocess"] = res
        grpc_adapter = DualvecGrpc(self.bundle, server.address)
        try:
            M.warm_up(grpc_adapter.query, self.pairs, self.qids["frequency"], cfg.k, 200)
            # a bare call (health Check) after every round of pairs: what gRPC in Python costs alone, measured
            # in the same moments as the searches
            res = self.measure(grpc_adapter, self.qids, self.truth, desc="gRPC", between=grpc_adapter.client.health)
            res["bare_rpc_us"] = res.pop("between_us")
        finally:
            grpc_adapter.close()
        found_grpc = res.pop("_found")
        same = [np.all(found_local[p][d] == found_grpc[p][d], axis=1) for p in self.pairs for d in self.qids]
        res["same_answers"] = float(np.concatenate(same).mean())
        out["grpc"] = res
        self.result["search"] = out
        if res["same_answers"] < 1.0:
            self.result["problems"].append(f"gRPC answers differ from in-process answers for "
                                           f"{1 - res['same_answers']:.1%} of queries (same engine, same params)")
        for p in self.pairs:
            for d in self.qids:
                tuned = self.result["bundle"]["tuned_recall"][p][d]
                got = out["inprocess"]["recall"][p][d]
                if tuned is not None and got < tuned - 0.02:
                    self.result["problems"].append(
                        f"{p} {d}: recall@10 {got:.3f} on this run's queries, below the {tuned:.3f} the bundle "
                        f"recorded at build (held-out queries)")

    def throughput_phase(self, server) -> None:
        from dualvec.bench.load import (HEALTH_CHECK_METHOD, build_go_loadgen, health_check_requests, run_load, run_load_go,
                                search_requests)

        cfg, M = self.cfg, self.M
        words = self.bundle.vocab.words
        mix = list(self.qids["uniform"]) + list(self.qids["frequency"])
        rng = self.np.random.default_rng(cfg.seed + 7)
        rng.shuffle(mix)
        queries = [(words[w], *_spaces_str(self.pairs[i % len(self.pairs)])) for i, w in enumerate(mix)]
        out: dict = {"command": self.repro(("throughput",), (), ["--duration", str(cfg.duration)]), "grpc": {},
                     "inprocess": {}}
        if "python" in cfg.load_generators:
            for c in cfg.clients:
                log.info("gRPC load, Python clients: %d clients for %.0f s", c, cfg.duration)
                res = self.with_server_cpu(server, lambda: run_load(
                    server.address, queries, clients=c, processes=cfg.client_processes, seconds=cfg.duration,
                    k=cfg.k))
                out["grpc"][str(c)] = res
                if res["errors"]:
                    self.result["problems"].append(f"gRPC load with {c} Python clients: errors {res['errors']}")
        if "go" in cfg.load_generators:
            cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dualvec"
            binary, why_not = build_go_loadgen(cache)
            if binary is None:
                out["grpc_go_unavailable"] = why_not
                log.info("no Go load generator: %s", why_not)
            else:
                out["grpc_go"] = {}
                requests = search_requests(queries, cfg.k)
                for c in cfg.clients:
                    log.info("gRPC load, Go load generator: %d clients for %.0f s", c, cfg.duration)
                    res = self.with_server_cpu(server, lambda: run_load_go(
                        binary, server.address, requests, clients=c, seconds=cfg.duration))
                    out["grpc_go"][str(c)] = res
                    if res["errors"]:
                        self.result["problems"].append(f"gRPC load with {c} Go clients: errors {res['errors']}")
                if cfg.clients:
                    # the same load of calls that do no work (health Check): what the server's gRPC costs alone
                    c = max(cfg.clients)
                    log.info("gRPC load, Go load generator: %d clients calling health Check for %.0f s", c,
                             cfg.duration)
                    res = self.with_server_cpu(server, lambda: run_load_go(
                        binary, server.address, health_check_requests(), clients=c, seconds=cfg.duration,
                        method=HEALTH_CHECK_METHOD))
                    out["grpc_go_bare"] = {str(c): res}
        items = M.work_items(self.bundle, self.pairs, self.np.array(mix))
        # each mode keeps its cores busy: CPU per query = cores / rate
        for threads in sorted({1, self.ncpu}):
            res = M.inprocess_qps(self.bundle, items, cfg.k, threads, cfg.duration)
            res["cpu_us_per_query"] = threads * 1e6 / res["qps"]
            out["inprocess"][f"{threads} thread{'s' if threads > 1 else ''}, 1 query/call"] = res
        res = M.inprocess_batched_qps(self.bundle, items, cfg.k, cfg.batch, cfg.duration, self.ncpu)
        res["cpu_us_per_query"] = self.ncpu * 1e6 / res["qps"]
        out["inprocess"][f"1 thread, batch {cfg.batch}, {self.ncpu} omp"] = res
        top = str(max(cfg.clients)) if cfg.clients else None
        # the target's ratio: the server's throughput, best measured by the load generator that takes least of
        # the CPUs it shares with the server (Go's), else by the Python clients
        measured = [(name, out[key][top]) for name, key in (("go", "grpc_go"), ("python", "grpc"))
                    if top is not None and top in out.get(key, {})]
        if measured:
            best_mode, best = max(out["inprocess"].items(), key=lambda kv: kv[1]["qps"])
            single = out["inprocess"][f"{self.ncpu} thread{'s' if self.ncpu > 1 else ''}, 1 query/call"]
            out["top_clients"] = int(top)
            out["inprocess_best"] = {"mode": best_mode, "qps": best["qps"]}
            out["ratio_load_generator"] = measured[0][0]
            out["ratio_grpc32_to_inprocess"] = measured[0][1]["qps"] / best["qps"]
            out["ratio_grpc32_to_single"] = measured[0][1]["qps"] / single["qps"]
            out["ratios_by_load_generator"] = {name: res["qps"] / best["qps"] for name, res in measured}
            bare = out.get("grpc_go_bare", {}).get(top)
            search = out.get("grpc_go", {}).get(top)
            if bare and search and bare.get("server_cpu_us_per_call") and search.get("client_cpu_us_per_call"):
                # what the server could answer here if its search cost no more CPU than the best in-process mode
                # and gRPC no more than a call that does no work: the CPUs, shared with the load generator,
                # divided by the CPU of one call on both sides
                cost = {"bare_call_server_cpu_us": bare["server_cpu_us_per_call"],
                        "inprocess_cpu_us_per_query": best["cpu_us_per_query"],
                        "load_generator_cpu_us_per_call": search["client_cpu_us_per_call"]}
                qps = self.ncpu * 1e6 / sum(cost.values())
                out["ceiling"] = {**cost, "cpus": self.ncpu, "qps": qps, "ratio": qps / best["qps"]}
                # the same with each search paying its own FAISS call, as calls reach a server one at a time
                one = out["inprocess"]["1 thread, 1 query/call"]["cpu_us_per_query"]
                qps_one = self.ncpu * 1e6 / (sum(cost.values()) - cost["inprocess_cpu_us_per_query"] + one)
                out["ceiling"].update(single_query_cpu_us=one, qps_one_at_a_time=qps_one,
                                      ratio_one_at_a_time=qps_one / best["qps"])
        self.result["throughput"] = out

    @staticmethod
    def with_server_cpu(server, run) -> dict:
        """run() (a load measurement) plus the server's CPU time per answered call meanwhile. Approximate: the
        CPU counts the warm-up second too, so calls are counted as the measured rate over the whole run."""
        cpu0, t0 = server.cpu_seconds(), time.perf_counter()
        res = run()
        cpu, wall = server.cpu_seconds() - cpu0, time.perf_counter() - t0
        calls = res["qps"] * wall
        res["server_cpu_us_per_call"] = cpu * 1e6 / calls if calls else None
        res["server_cpu_cores"] = cpu / wall
        return res

    def sweep_phase(self) -> None:
        from dualvec.bench.peers import DualvecIndex

        cfg, M = self.cfg, self.M
        qids = {d: ids[:cfg.sweep_queries] for d, ids in self.qids.items()}
        truth = {p: {d: _head(self.truth[p][d], cfg.sweep_queries) for d in qids} for p in self.pairs}
        index = DualvecIndex(self.bundle)
        self.faiss.omp_set_num_threads(1)
        out: dict = {"command": self.repro(("sweep",), ()), "dualvec": {}}
        for p in self.pairs:
            tuned = self.bundle.tuning(*_spaces(p)).params
            pts = []
            for params in M.sweep_params(self.bundle, p, (0.125, 0.25, 0.5, 1, 2, 4, 8)):
                index.set_query_arguments(p, params=params)
                res = self.measure(index, qids, truth, pairs=[p], desc=f"sweep {params}")
                pts.append({"params": params.to_dict(), "recall": res["recall"][p],
                            "p50_us": res["latency_us"][p]["p50"], "p99_us": res["latency_us"][p]["p99"],
                            "tuned": params == tuned})
            out["dualvec"][p] = pts
        self.result["sweep"] = out

    # -------------------------------------------------------------------------------------------------- peers
    def _dualvec_p50(self, where: str, pair: str) -> float | None:
        s = self.result.get("search") or {}
        return ((s.get(where) or {}).get("latency_us") or {}).get(pair, {}).get("p50")

    def peer_gensim(self) -> None:
        from dualvec.bench.peers import Gensim

        cfg, np, M = self.cfg, self.np, self.M
        g = Gensim(self.bundle, cfg.model)
        info = g.fit()
        n = cfg.gensim_queries
        ids = np.concatenate([self.qids["uniform"][: (n + 1) // 2], self.qids["frequency"][: n // 2]])
        g.query("in-in", int(ids[0]), cfg.k)  # warm-up
        run = M.run_queries(g.query, "in-in", ids, cfg.k, desc="gensim", quiet=cfg.quiet)
        sample, rows = M.query_sample(self.bundle, "in-in", ids), self.bundle.spaces[_spaces("in-in")[1]].vectors
        rec = recall_of(rows, sample, exact_truth(rows, sample, cfg.k), run.found)
        lat = M.percentiles_us(run.seconds)
        out = {"info": info, "queries": int(len(ids)), "latency_us": lat, "recall": rec,
               "command": self.repro(("search",), ("gensim",))}
        gp, ep = self._dualvec_p50("grpc", "in-in"), self._dualvec_p50("inprocess", "in-in")
        if gp:
            out["dualvec_grpc_p50_us"] = gp
            out["speedup_vs_grpc"] = lat["p50"] / gp
        if ep:
            out["speedup_vs_inprocess"] = lat["p50"] / ep
        if not info.get("same_vocabulary_as_bundle"):
            self.result["problems"].append("gensim model's vocabulary differs from the bundle's (order or words)")
        self.result["peers"]["gensim"] = out
        g.close()

    def peer_hnswlib(self) -> None:
        from dualvec.bench.peers import Hnswlib

        cfg, M = self.cfg, self.M
        h = Hnswlib(self.bundle, cfg.hnsw_spaces, m=cfg.hnsw_m, ef_construction=cfg.hnsw_ef_construction,
                    quiet=cfg.quiet)
        info = h.fit()
        tune_ids = M.draw_queries(self.bundle, cfg.hnsw_tune_queries, cfg.seed + 1)
        tune_truth = self.compute_truth(tune_ids)
        self.faiss.omp_set_num_threads(1)
        grid = tuple(ef for ef in (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072,
                                   4096, 6144, 8192) if ef <= cfg.hnsw_max_ef) or (cfg.hnsw_max_ef,)
        out: dict = {"info": info, "pairs": {}, "sweep": {},
                     "dualvec_build": self.result["build"]["per_space_seconds"],
                     "command": self.repro(("search",), ("hnswlib",),
                                           ["--hnsw-m", str(cfg.hnsw_m), "--hnsw-ef-construction",
                                            str(cfg.hnsw_ef_construction), "--hnsw-max-ef", str(cfg.hnsw_max_ef)])}
        for p in h.pairs:
            s = self.result.get("search")
            goal = (min(s["inprocess"]["recall"][p].values()) if s else 0.95)
            chosen, pts = None, []
            for ef in grid:
                h.set_query_arguments(p, ef=ef)
                res = self.measure(h, tune_ids, tune_truth, pairs=[p], desc=f"hnswlib {p} ef {ef}")
                pts.append({"params": {"ef": ef}, "recall": res["recall"][p], "p50_us": res["latency_us"][p]["p50"]})
                if min(res["recall"][p].values()) >= goal:
                    chosen = ef
                    break
            out["sweep"][p] = pts
            ef = chosen or grid[-1]
            h.set_query_arguments(p, ef=ef)
            res = self.measure(h, self.qids, self.truth, pairs=[p], desc=f"hnswlib {p}")
            lat = res["latency_us"][p]
            entry = {"ef": ef, "target_recall": goal, "reached": chosen is not None, "recall": res["recall"][p],
                     "latency_us": lat, "latency_us_by_draw": res["latency_us_by_draw"][p]}
            entry.update(self._ratios(lat["p50"], p, ("index", "inprocess", "grpc")))
            out["pairs"][p] = entry
        self.result["peers"]["hnswlib"] = out
        h.close()

    def _ratios(self, peer_p50: float, pair: str, wheres: tuple[str, ...]) -> dict[str, float]:
        """A peer's p50 as a ratio to dualvec's p50 of the same pair, measured where named ("index",
        "inprocess" = the engine, "grpc"), keyed ratio_vs_index / ratio_vs_engine / ratio_vs_grpc."""
        keys = {"index": "ratio_vs_index", "inprocess": "ratio_vs_engine", "grpc": "ratio_vs_grpc"}
        out = {}
        for where in wheres:
            d = self._dualvec_p50(where, pair)
            if d:
                out[keys[where]] = peer_p50 / d
        return out

    def peer_qdrant(self) -> None:
        from dualvec.bench.peers import DualvecEngine, QdrantLocal

        cfg = self.cfg
        qd = QdrantLocal(self.bundle, cfg.peer_sample, quiet=cfg.quiet)
        info = qd.fit()
        rows = info["rows"]
        qids = {d: ids[:cfg.peer_queries] for d, ids in self.qids.items()}
        limit = rows if rows < self.bundle.vocab_size else None
        truth = self.compute_truth(qids, limit)
        self.faiss.omp_set_num_threads(1)
        res = self.measure(qd, qids, truth, desc="qdrant")
        same_rows = self.measure(DualvecEngine(self.bundle, limit=rows if limit else 0), qids, truth,
                                 desc="dualvec restrict_vocab")
        out: dict = {"info": info, "queries": cfg.peer_queries, "pairs": {},
                     "dualvec_same_rows": {"recall": same_rows["recall"], "latency_us": same_rows["latency_us"]},
                     "command": self.repro(("search",), ("qdrant",), ["--peer-sample", str(cfg.peer_sample),
                                                                      "--peer-queries", str(cfg.peer_queries)])}
        for p in qd.pairs:
            lat = res["latency_us"][p]
            entry = {"recall": res["recall"][p], "latency_us": lat,
                     "ratio_vs_same_rows": lat["p50"] / same_rows["latency_us"][p]["p50"]}
            entry.update(self._ratios(lat["p50"], p, ("inprocess", "grpc")))
            out["pairs"][p] = entry
        self.result["peers"]["qdrant"] = out
        qd.close()


def _spaces(pair: str):
    from dualvec.kernel.spaces import parse_pair

    return parse_pair(pair)


def _spaces_str(pair: str) -> tuple[str, str]:
    q, t = pair.split("-")
    return q, t


def _head(truth, m: int):
    from dualvec.kernel.truth import Truth

    return Truth(truth.ids[:m], truth.scores[:m], truth.thresholds[:m], truth.limit)


def _config_dict(cfg: BenchConfig) -> dict:
    from dataclasses import asdict

    return asdict(cfg)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    for noisy in ("faiss", "gensim", "smart_open", "httpx", "qdrant_client", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from dualvec.bench.report import format_report, plot, plot_latency_parts, write_json

    started = time.perf_counter()
    bench = Bench(cfg)
    result = bench.run()
    result["phase_seconds"]["total"] = round(time.perf_counter() - started, 2)
    out = Path(cfg.out)
    with bench.phase("report"):
        drew = plot(result, out / "bench.png")
        drew_parts = plot_latency_parts(result, out / "latency.png")
    pngs = [str(out / name) for name, made in (("bench.png", drew), ("latency.png", drew_parts)) if made]
    result["files"] = {"json": str(out / "bench.json"), "png": str(out / "bench.png") if drew else None,
                       "latency_png": str(out / "latency.png") if drew_parts else None}
    write_json(_strip_private(result), out / "bench.json")
    print(format_report(result))
    print(f"wrote {out / 'bench.json'}" + "".join(f" and {p}" for p in pngs))
    return 0


def _strip_private(v):
    if isinstance(v, dict):
        return {k: _strip_private(x) for k, x in v.items() if not str(k).startswith("_")}
    if isinstance(v, list):
        return [_strip_private(x) for x in v]
    return v


if __name__ == "__main__":
    sys.exit(main())
