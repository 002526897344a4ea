"""``robustx metrics``: every metric of the suite with its family, direction and needs."""
from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("metrics", help="list every metric: family, direction, needs",
                              description="Every metric of the suite with its family, direction and what it needs.")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print one line per registered metric; 0."""
    from robustx.metrics import available, get

    print(f"{'metric':<9} {'family':<17} {'better':<7} needs")
    for name in available():
        info = get(name)
        needs = ", ".join(sorted(info.needs)) or "-"
        print(f"{name:<9} {info.family:<17} {info.direction:<7} {needs}")
    return 0
