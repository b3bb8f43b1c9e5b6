"""``python -m bench.report``: the same command as ``pat-bench report`` (``bench.cli.report``)."""

import sys

from bench.cli.report import main

if __name__ == "__main__":
    sys.exit(main())
