#!/usr/bin/env python3
"""Same-space index kinds side by side at equal recall (dualvec.bench.same_space); `python scripts/same_space.py --help`."""
import sys

from dualvec.bench.same_space import main

if __name__ == "__main__":
    sys.exit(main())
