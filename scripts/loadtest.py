#!/usr/bin/env python3
"""Load-test a running dualvec server: a thin wrapper around `dualvec loadtest` (dualvec.loadtest).

    python scripts/loadtest.py 127.0.0.1:50051 --duration 5 --concurrency 8     # closed loop
    python scripts/loadtest.py 127.0.0.1:50051 --rate 1000 --plot run.png       # open loop, fixed rate
    python scripts/loadtest.py 127.0.0.1:50051 --sweep auto --plot capacity.png # capacity curve

See docs/loadtest.md and `python scripts/loadtest.py --help`.
"""
from __future__ import annotations

import sys

from dualvec.loadtest import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
