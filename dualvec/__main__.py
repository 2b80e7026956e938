import sys

from dualvec.cli.main import main

sys.exit(main())
