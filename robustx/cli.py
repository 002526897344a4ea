"""The ``robustx`` command line: one small function per subcommand.

Every subcommand's parser lives here. Add one by writing ``_add_<name>(subparsers)`` (its
arguments, then ``_add_output(parser, default_out, _run_<name>)``) and a
``_run_<name>(args)`` that calls the library with plain arguments and returns an exit
status, and listing ``_add_<name>`` in ``SUBCOMMANDS``.
"""
from __future__ import annotations

import argparse
from typing import Callable, List, Optional


def _add_output(parser: argparse.ArgumentParser, out: str, run: Callable[[argparse.Namespace], int]) -> None:
    """The options every subcommand has (--out, --no-progress) and its runner."""
    parser.add_argument("--out", default=out, help="output folder (default %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.set_defaults(run=run)


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
    _add_output(p, "out/demo", _run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from robustx.demo import run_demo

    run_demo(args.out, n_images=args.n_images, n_batches=args.n_batches, batch_size=args.batch_size,
             radius_l2=args.radius_l2, radius_linf=args.radius_linf, seed=args.seed, progress=not args.no_progress)
    return 0


def _add_landscape(subparsers) -> None:
    from robustx.landscape import SURFACES

    p = subparsers.add_parser(
        "landscape",
        help="plot input-space loss landscapes / decision surfaces",
        description="Write contour, 3-D surface and 1-D slice PNGs of the loss or decision surface "
        "around chosen test images (Yu et al., IJCAI 2019). Default model: the built-in digits CNN.",
    )
    p.add_argument("--model", choices=("digits", "resnet20"), default="digits",
                   help="architecture: built-in digits CNN on sklearn digits, or CIFAR ResNet-20 "
                   "on the AISafety CIFAR-10 images (default: digits)")
    p.add_argument("--weights", default=None, help="state-dict path for the architecture "
                   "(default: the shipped digits weights; required for resnet20)")
    p.add_argument("--data-root", default=None, help="AISafety CIFAR-10 folder (resnet20 only)")
    p.add_argument("--images", type=int, nargs="+", default=[0], help="test-set indices (default: 0)")
    p.add_argument("--span", type=float, default=None,
                   help="grid half-width (default: 0.5 for digits, 16/255 for resnet20)")
    p.add_argument("--steps", type=int, default=41, help="grid points per axis (default: %(default)s)")
    p.add_argument("--surface", choices=SURFACES, default="loss", help="default: %(default)s")
    p.add_argument("--norm", choices=("inf", "2"), default="inf", help="default: %(default)s")
    p.add_argument("--seed", type=int, default=0, help="seed of the random direction (default: %(default)s)")
    _add_output(p, "landscapes", _run_landscape)


def _run_landscape(args: argparse.Namespace) -> int:
    from robustx.landscape import run_landscape

    paths = run_landscape(args.out, model=args.model, weights=args.weights, data_root=args.data_root,
                          images=args.images, span=args.span, steps=args.steps, surface=args.surface,
                          norm=args.norm, seed=args.seed, progress=not args.no_progress)
    print("\n".join(str(path) for path in paths))
    return 0


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
