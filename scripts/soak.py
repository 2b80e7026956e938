#!/usr/bin/env python3
"""A soak run against a running `dualvec serve` (dualvec.bench.soak; docs/operations.md, "Soak").

  python scripts/soak.py ADDR --minutes N --server-pid PID [--rate QPS | --concurrency N]
      [--bundles A B --served-link PATH] [--token-file FILE] [--metrics-url URL] [--png OUT] [--json OUT]

Mixed load (Search over the four space pairs, BatchSearch, ScoreDocuments, GetVectors, SearchStream) for N
minutes; every --reload-every minutes the served symlink is flipped to the other bundle and the server sent SIGHUP,
and once the token file's token is rotated. Prints a summary; exit 0 when no call failed, every reload was seen in
GetInfo and the rotation was done, 3 otherwise, 1 when the run could not start.
"""
from __future__ import annotations

import sys

from dualvec.bench.soak import main

if __name__ == "__main__":
    sys.exit(main())
