#!/usr/bin/env python3
"""Per-pair recall profile of a two-space model (dualvec.bench.model_profile); `python scripts/check_model_profile.py --help`."""
import sys

from dualvec.bench.model_profile import main

if __name__ == "__main__":
    sys.exit(main())
