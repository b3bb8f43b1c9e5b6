"""``python -m bench.run``: the same command as ``pat-bench run`` (``bench.cli.run``)."""

import sys

from bench.cli.run import main

if __name__ == "__main__":
    sys.exit(main())
