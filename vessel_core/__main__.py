"""``python -m vessel_core``: the command line (see `vessel_core.cli`)."""

import sys

from vessel_core.cli import main

if __name__ == "__main__":
    sys.exit(main())
