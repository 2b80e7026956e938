#!/usr/bin/env python3
"""Compare index kinds on one bundle's vectors (dualvec.bench.index_options); `python scripts/index_options.py --help`."""
import sys

from dualvec.bench.index_options import main

if __name__ == "__main__":
    sys.exit(main())
