"""``python -m training.benchmark``: see ``training.benchmark.cli``."""

import sys

from fmdetect.training.benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main())
