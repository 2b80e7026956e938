#!/usr/bin/env python3
"""A hostile client against a running `dualvec serve` (dualvec.bench.hostile; docs/operations.md, "Hostile
clients").

  python scripts/hostile.py ADDR [--server-pid PID] [--json OUT] [--cases word_1mb,batch_50k,...]

Each case prints as it ends; then a Markdown table (status, message truncated, time, and with --server-pid the
PSS of the server's whole process tree before and after each case) and, with --json, the whole result to OUT.
Exit 1 when ordinary queries were answered differently (or not at all) after the cases.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dualvec.bench.hostile import CASES, Hostile, format_table, to_json


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/hostile.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("address", metavar="ADDR", help="the server, host:port")
    p.add_argument("--server-pid", type=int, help="the server's pid (the `serve` parent): PSS of its process tree "
                   "before and after each case")
    p.add_argument("--json", metavar="OUT", help="write the result as JSON here")
    p.add_argument("--cases", help=f"comma-separated cases (default: all: {','.join(CASES)})")
    p.add_argument("--timeout", type=float, default=120.0, help="deadline of each call, seconds (120)")
    p.add_argument("--hold", type=float, default=5.0, help="seconds the silent connection is held (5)")
    args = p.parse_args(argv)
    names = [c.strip() for c in args.cases.split(",") if c.strip()] if args.cases else list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        p.error(f"--cases: unknown {', '.join(unknown)} (known: {', '.join(CASES)})")
    hostile = Hostile(args.address, args.server_pid, timeout=args.timeout, hold_seconds=args.hold)
    try:
        result = hostile.run(names, progress=lambda o: print(f"{o.case}: {o.status} ({o.seconds:.3f} s) "
                                                            f"{o.message[:80]}", file=sys.stderr, flush=True))
    finally:
        hostile.close()
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(to_json(result) + "\n", encoding="utf-8")
    return 0 if result["ordinary_answers"] == "unchanged" else 1


if __name__ == "__main__":
    sys.exit(main())
