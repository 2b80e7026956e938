#!/usr/bin/env python3
"""Queries/s of the three ways to send many searches to one server, side by side in one run: unary Search calls,
BatchSearch calls of --batch requests, and one SearchStream per client, at 1 and 8 clients (--clients).

    python scripts/search_rates.py BUNDLE                    # serves BUNDLE on 127.0.0.1 (`dualvec serve`)
    python scripts/search_rates.py BUNDLE --addr HOST:PORT   # a server already running with BUNDLE

Each client is its own process (no client shares a GIL with another) that sends one-word top-k queries over the
four space pairs in turn, words drawn uniformly from the bundle's vocabulary, for --seconds per phase, once every
client is connected and has had one answer. A phase's rate is every client's answered queries over the phase's time; with a server started here,
its CPU time per query is read from /proc for the server's processes. The clients run on the same machine as
the server: on a small host they take CPU from it, and the table says what this host gives, not the server alone.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

PAIRS = (("in", "in"), ("in", "out"), ("out", "in"), ("out", "out"))
MODES = ("search", "batch", "stream")


def queries(words: list[str], seed: int, k: int):
    """Endless one-word queries (Client.search keyword dicts), the four pairs in turn."""
    import random

    rng = random.Random(seed)
    n = 0
    while True:
        q, t = PAIRS[n % 4]
        n += 1
        yield dict(positive=[words[rng.randrange(len(words))]], query_space=q, target_space=t, k=k)


def client_loop(address: str, mode: str, words: list[str], seed: int, k: int, batch: int, seconds: float, ready,
                go, out) -> None:
    """One client: connect and warm up, say so on ``ready``, wait for ``go``, then send queries in ``mode`` for
    ``seconds``; put the number of queries answered in that time (and errors) on ``out``."""
    from dualvec.client import Client

    source = queries(words, seed, k)
    done = errors = 0
    with Client(address, timeout=30.0) as client:
        client.wait_ready(60.0)
        client.search(**next(source))  # connected and warm before the clock starts
        ready.put(os.getpid())
        go.wait()
        stop = time.monotonic() + seconds
        if mode == "search":
            while time.monotonic() < stop:
                client.search(**next(source))
                done += 1
        elif mode == "batch":
            while time.monotonic() < stop:
                client.batch_search([next(source) for _ in range(batch)])
                done += batch
        else:
            def until_stop():
                while time.monotonic() < stop:
                    yield next(source)

            for result in client.search_stream(until_stop()):
                done += 1
                errors += not result.ok
    out.put((done, errors))


def server_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children (a `dualvec serve` with worker processes)."""
    import psutil

    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def run_phase(address: str, mode: str, clients: int, words: list[str], args, server_pid: int | None) -> dict:
    ctx = mp.get_context("spawn")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=client_loop, args=(address, mode, words, args.seed + i, args.k, args.batch,
                                                   args.seconds, ready, go, out)) for i in range(clients)]
    for p in procs:
        p.start()
    for _ in procs:  # every client connected and warm
        ready.get(timeout=300)
    cpu0 = server_cpu_seconds(server_pid) if server_pid else None
    go.set()
    time.sleep(args.seconds)
    cpu1 = server_cpu_seconds(server_pid) if server_pid else None
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    done = sum(r[0] for r in results)
    row = {"mode": mode, "clients": clients, "queries": done, "errors": sum(r[1] for r in results),
           "qps": done / args.seconds}
    if cpu0 is not None and done:
        row["server_cpu_us_per_query"] = (cpu1 - cpu0) / done * 1e6
    return row


def label(mode: str, batch: int) -> str:
    return {"search": "Search (unary)", "batch": f"BatchSearch of {batch}", "stream": "SearchStream"}[mode]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", help="the bundle the server serves (its vocabulary gives the query words)")
    ap.add_argument("--addr", help="a running server of BUNDLE (default: start `dualvec serve BUNDLE` here)")
    ap.add_argument("--clients", default="1,8", help="client counts, comma-separated (1,8)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"of {', '.join(MODES)} (all)")
    ap.add_argument("--batch", type=int, default=64, help="requests per BatchSearch call (64)")
    ap.add_argument("-k", type=int, default=10, help="neighbours per query (10)")
    ap.add_argument("--seconds", type=float, default=5.0, help="timed seconds per phase (5)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--serve-args", default="", help="extra `dualvec serve` options, as one string")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    from dualvec.kernel.bundle import read_vocab

    words = read_vocab(Path(args.bundle) / "vocab.tsv").words
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            ap.error(f"--modes: unknown mode {m!r}; expected {', '.join(MODES)}")
    counts = [int(c) for c in args.clients.split(",") if c.strip()]
    server = None
    address = args.addr
    if address is None:
        from dualvec.client import pick_free_port, wait_until_serving

        port = pick_free_port()
        dualvec = str(Path(sys.executable).with_name("dualvec"))
        server = subprocess.Popen([dualvec, "serve", args.bundle, "--host", "127.0.0.1", "--port", str(port), "-q",
                                   *args.serve_args.split()], stdout=subprocess.DEVNULL)
        address = f"127.0.0.1:{port}"
        wait_until_serving(address, 120.0, process=server)
    rows = []
    try:
        for clients in counts:
            for mode in modes:
                rows.append(run_phase(address, mode, clients, words, args, server.pid if server else None))
                r = rows[-1]
                cpu = f"{r['server_cpu_us_per_query']:8.0f}" if "server_cpu_us_per_query" in r else "       -"
                print(f"{label(mode, args.batch):18} clients {clients:3}  {r['qps']:9,.0f} queries/s  "
                      f"server CPU {cpu} us/query  ({r['queries']:,} answered, {r['errors']} errors)", flush=True)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
    host = {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0))}
    if args.json:
        Path(args.json).write_text(json.dumps({"bundle": args.bundle, "host": host, "args": vars(args),
                                               "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
