#!/usr/bin/env python3
"""A neighbour job of N query words on Ray Data, on Spark and with `dualvec neighbors`, at 1 and 2 workers
(dualvec.bench.distributed; docs/large-scale.md, "Beyond one machine"); `python scripts/distributed_rates.py --help`."""
import sys

from dualvec.bench.distributed import main

if __name__ == "__main__":
    sys.exit(main())
