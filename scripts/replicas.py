#!/usr/bin/env python3
"""Local replicas of `dualvec serve` behind the client's round_robin (dualvec.bench.replicas; docs/scaling.md).

  python scripts/replicas.py restart BUNDLE [--replicas 3 --threads 6]
      each replica in turn gets SIGTERM and is started again while client threads call; prints the failed calls
      (the target is zero) and what each drain looked like; exit 1 if a call failed or a replica did not say
      NOT_SERVING before it exited
  python scripts/replicas.py measure BUNDLE [--counts 1,2,3 --concurrency 32 --duration 10]
      throughput and latency of 1, 2, 3 replicas through one round_robin target (`dualvec loadtest`), and each
      replica's memory
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

from dualvec.bench.replicas import measure, rolling_restart, start_replicas, stop_replicas


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="scripts/replicas.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("restart", help="restart each replica in turn under load")
    r.add_argument("bundle")
    r.add_argument("--replicas", type=int, default=3)
    r.add_argument("--threads", type=int, default=6, help="client threads (6)")
    r.add_argument("--drain-delay", type=float, default=1.0, help="each replica's --drain-delay (1)")
    r.add_argument("--grace", type=float, default=5.0, help="each replica's --grace (5)")
    r.add_argument("--words", default="the", help="comma-separated words the clients ask about (the)")
    r.add_argument("--service-config", metavar="FILE", help="the clients' gRPC service config (default: "
                   "dualvec.client.service_config's)")
    m = sub.add_parser("measure", help="throughput and p99 of 1, 2, 3 replicas")
    m.add_argument("bundle")
    m.add_argument("--counts", default="1,2,3", help="replica counts (1,2,3)")
    m.add_argument("--concurrency", type=int, default=32, help="closed-loop clients (32)")
    m.add_argument("--duration", type=float, default=10.0, help="measured seconds per count (10)")
    m.add_argument("--warmup", type=float, default=2.0)
    m.add_argument("--processes", type=int, default=2, help="load generator processes (2)")
    m.add_argument("--channels", type=int, default=4, help="connections per generator process (4)")
    m.add_argument("--serve-args", default="", help="more `dualvec serve` options for every replica, such as "
                   "'--processes 2 --cpus auto' (each replica starts with --processes 1 --cpus all)")
    for s in (r, m):
        s.add_argument("--logs", help="folder for the replicas' logs (default: a temporary one)")
        s.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    command = "python scripts/replicas.py " + " ".join(shlex.quote(a) for a in argv)
    with tempfile.TemporaryDirectory(prefix="dualvec-replicas-") as tmp:
        logs = Path(args.logs or tmp)
        logs.mkdir(parents=True, exist_ok=True)
        if args.command == "restart":
            return _restart(args, logs, command)
        return _measure(args, logs, command)


def _restart(args, logs: Path, command: str) -> int:
    replicas = start_replicas(args.bundle, args.replicas, ("--drain-delay", str(args.drain_delay),
                                                           "--grace", str(args.grace)), logs)
    try:
        out = rolling_restart(replicas, threads=args.threads, words=tuple(args.words.split(",")),
                              service_config=args.service_config)
    finally:
        stop_replicas(replicas)
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        config = f"service config {args.service_config}" if args.service_config else "the default service config"
        print(f"{args.replicas} replicas behind {out['target']} ({config}), {args.threads} client threads, each "
              f"replica restarted in turn:")
        for d in out["drains"]:
            print(f"  port {d['port']}: exit {d['exit_code']} after {d['seconds']:.1f} s; health heard "
                  f"{' -> '.join(d['heard']) or 'nothing'}")
        print(f"  calls answered {out['calls_ok']:,}, failed {out['calls_failed']}"
              + (f": {out['failures'][:3]}" if out["failures"] else ""))
        print(f"  reproduce: {command}")
    good = out["calls_failed"] == 0 and all(d["not_serving_before_exit"] and d["exit_code"] == 0
                                            for d in out["drains"])
    return 0 if good else 1


def _measure(args, logs: Path, command: str) -> int:
    counts = tuple(int(c) for c in args.counts.split(","))
    rows = measure(args.bundle, counts, concurrency=args.concurrency, duration=args.duration, warmup=args.warmup,
                   processes=args.processes, channels=args.channels, args=tuple(shlex.split(args.serve_args)),
                   log_dir=logs)
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "result"} | {
            "qps": r["result"]["achieved_rate"], "latency_ms": r["result"]["latency_ms"],
            "calls": r["result"]["calls"]} for r in rows], indent=1))
        return 0
    print(f"replicas on one machine behind one round_robin target; {args.concurrency} closed-loop clients "
          f"({args.processes} generator processes), {args.duration:g} s each"
          + (f"; each replica: dualvec serve {args.serve_args}" if args.serve_args else ""))
    print(f"  {'replicas':>8} {'queries/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'failed':>7} {'CPU/call':>9} "
          f"{'others':>7}   memory per replica, MiB (largest RSS / PSS / USS of its processes)")
    for r in rows:
        res, lat = r["result"], r["result"]["latency_ms"]
        mem = "; ".join(f"{m['rss']:.0f} / {m['pss']:.0f} / {m['uss']:.0f}" for m in r["memory_mib"])
        errors = ", ".join(f"{code} {n}" for code, n in res.get("errors", {}).items())
        print(f"  {r['replicas']:>8} {res['achieved_rate']:>10,.0f} {lat['p50']:>8.2f} {lat['p99']:>8.2f} "
              f"{res['calls']['failed']:>7} {r['server_cpu_ms_per_call']:>6.3f} ms {r['others_cpu_share']:>7.0%}   "
              f"{mem}" + (f"  ({errors})" if errors else ""))
    print("  CPU/call: the servers' CPU time per answered call; others: the machine's CPU taken by other processes "
          "meanwhile")
    print(f"  reproduce: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
