"""``python -m analysis``: see :mod:`analysis.cli`."""

import sys

from analysis.cli import cli

if __name__ == "__main__":
    sys.exit(cli())
