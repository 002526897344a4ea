"""``robustx metrics``: every metric of the suite with its family, direction and needs."""
from __future__ import annotations

import argparse

__all__ = ["HELP", "DESCRIPTION", "add_arguments", "run"]


#: the one-line help of ``robustx --help`` and the description of ``robustx metrics --help``
HELP = "list every metric: family, direction, needs"
DESCRIPTION = "Every metric of the suite with its family, direction and what it needs."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's options."""
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print one line per registered metric; 0."""
    from robustx.metrics import available, get

    print(f"{'metric':<9} {'family':<17} {'better':<7} needs")
    for name in available():
        info = get(name)
        needs = ", ".join(sorted(info.needs)) or "-"
        print(f"{name:<9} {info.family:<17} {info.direction:<7} {needs}")
    return 0
