import sys

from dualvec.cli import main

sys.exit(main())
