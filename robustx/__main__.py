"""``python -m robustx``: the command line of :mod:`robustx.cli`."""
import sys

from robustx.cli import main

if __name__ == "__main__":
    sys.exit(main())
