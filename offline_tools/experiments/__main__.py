"""``python -m offline_tools.experiments`` (the same as ``dofa-levels experiments``)."""

import sys

from offline_tools.experiments.cli import main

if __name__ == "__main__":
    sys.exit(main())
