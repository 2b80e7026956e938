#!/usr/bin/env python3
"""Benchmark one bundle against the targets (dualvec.bench.run); `python scripts/bench.py --help`."""
import sys

from dualvec.bench.run import main

if __name__ == "__main__":
    sys.exit(main())
