"""``python -m bench.evaluate``: the same command as ``pat-bench evaluate`` (``bench.cli.evaluate``)."""

import sys

from bench.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
