#!/usr/bin/env python3
"""Load-test a running dualvec server: the same as `dualvec loadtest` (dualvec.loadtest); see docs/loadtest.md."""
import sys

from dualvec.loadtest.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
