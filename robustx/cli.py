"""The ``robustx`` command line: one small function per subcommand.

Add a subcommand by writing ``_add_<name>(subparsers)`` (its arguments, and
``set_defaults(run=...)`` pointing at a ``_run_<name>(args)`` that returns an exit
status) and listing it in ``SUBCOMMANDS``.
"""
from __future__ import annotations

import argparse
from typing import List, Optional


def _add_demo(subparsers) -> None:
    from robustx.demo import DEMO_DEFAULTS as d

    p = subparsers.add_parser(
        "demo",
        help="CLEVER L2 and L-inf scores of the built-in digits CNN",
        description="Untargeted CLEVER (L2 and L-inf) on test images of the built-in digits CNN: a "
        "console table, clever.json and clever_hist.png. The paper uses 500 batches of 1024 samples.",
    )
    p.add_argument("--n-images", type=int, default=d["n_images"], help="number of test images (default %(default)s)")
    p.add_argument("--n-batches", type=int, default=d["n_batches"], help="N_b batches per image (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=d["batch_size"], help="N_s samples per batch (default %(default)s)")
    p.add_argument("--radius-l2", type=float, default=d["radius_l2"], help="L2 sampling radius (default %(default)s)")
    p.add_argument("--radius-linf", type=float, default=d["radius_linf"], help="L-inf radius (default %(default)s)")
    p.add_argument("--seed", type=int, default=d["seed"], help="sampling seed (default %(default)s)")
    p.add_argument("--out", default="out/demo", help="output directory (default %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from robustx.demo import run_demo

    run_demo(args.out, n_images=args.n_images, n_batches=args.n_batches, batch_size=args.batch_size,
             radius_l2=args.radius_l2, radius_linf=args.radius_linf, seed=args.seed, progress=not args.no_progress)
    return 0


def _add_landscape(subparsers) -> None:
    from robustx.landscape import add_landscape_command

    add_landscape_command(subparsers)


SUBCOMMANDS = [_add_demo, _add_landscape]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robustx", description="Fast, paper-faithful robustness evaluation.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``robustx`` console script and ``python -m robustx``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError) as err:
        parser.exit(2, f"robustx {args.command}: error: {err}\n")
