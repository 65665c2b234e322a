"""``python -m benchmark.cli``: the ``bench`` command."""

import sys

from benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main())
