"""``python -m robustx``: the command line of :mod:`robustx.commands`."""
import sys

from robustx.commands import main

if __name__ == "__main__":
    sys.exit(main())
