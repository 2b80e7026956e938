#!/usr/bin/env python3
"""Make a two-space word2vec model for benchmarks (dualvec.bench.make_model); `python scripts/make_model.py --help`."""
import sys

from dualvec.bench.make_model import main

if __name__ == "__main__":
    sys.exit(main())
