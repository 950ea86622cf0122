"""``python -m offline_tools`` runs ``dofa-levels`` (see :mod:`offline_tools.cli`)."""

import sys

from offline_tools.cli import main

if __name__ == "__main__":
    sys.exit(main())
