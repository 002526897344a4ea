"""``robustx landscape``: contour, 3-D surface and 1-D slice PNGs of the loss or decision
surface around chosen test inputs (Yu et al., IJCAI 2019; :mod:`robustx.landscape`)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional, Sequence

from robustx import checks
from robustx.commands.common import (add_model_and_data, add_output, file_stem, inputs, load_model_and_data,
                                     model_and_data_arguments, n_inputs)

__all__ = ["HELP", "DESCRIPTION", "add_arguments", "run", "run_landscape", "DIGITS_SPAN", "SPAN"]

#: default grid half-width on the 8x8 digits and on any other data in [0, 1] (2 x the usual 8/255)
DIGITS_SPAN, SPAN = 0.5, 16 / 255


#: the one-line help of ``robustx --help`` and the description of ``robustx landscape --help``
HELP = "plot input-space loss landscapes / decision surfaces"
DESCRIPTION = ("Write contour, 3-D surface and 1-D slice PNGs of the loss or decision surface around "
               "chosen test inputs (Yu et al., IJCAI 2019). Default model: the built-in digits CNN.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's options."""
    from robustx.landscape import SURFACES

    add_model_and_data(parser)
    parser.add_argument("--images", type=int, nargs="+", default=[0], help="test-set indices (default: 0)")
    parser.add_argument("--span", type=float, default=None,
                   help=f"grid half-width (default: {DIGITS_SPAN} on digits, else 16/255)")
    parser.add_argument("--steps", type=int, default=41, help="grid points per axis (default: %(default)s)")
    parser.add_argument("--surface", choices=SURFACES, default="loss", help="default: %(default)s")
    parser.add_argument("--norm", choices=("inf", "2"), default="inf", help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random direction (default: %(default)s)")
    add_output(parser, "landscapes", run)


def run(args: argparse.Namespace) -> int:
    """Write the PNGs and print their paths; 0."""
    paths = run_landscape(args.out, **model_and_data_arguments(args), images=args.images, span=args.span,
                          steps=args.steps, surface=args.surface, norm=args.norm, seed=args.seed,
                          progress=not args.no_progress)
    print("\n".join(str(path) for path in paths))
    return 0


@checks.renamed(out_dir="out")
def run_landscape(
    out="landscapes",
    *,
    # the model and data, as robustx.commands.common.add_model_and_data names them
    model: str = "digits",
    weights=None,
    model_args=None,
    data=None,
    images: Sequence[int] = (0,),
    span: Optional[float] = None,
    steps: int = 41,
    surface: str = "loss",
    norm="inf",
    seed: int = 0,
    progress: bool = True,
) -> List[Path]:
    """Landscapes (:func:`robustx.landscape.input_landscape`, adversarial and random
    directions) of the inputs ``images`` of ``data`` (default: the model's own test set) for
    ``model``, both named as ``robustx evaluate`` names them, written to the folder ``out`` as
    ``<model>_<i>_<surface>_{contour,surface,slices}.png``; returns the paths. ``span``
    default: :data:`DIGITS_SPAN` on digits, else :data:`SPAN`."""
    from robustx.landscape import PLOT_KINDS, input_landscape

    net, data, loaded = load_model_and_data(model, weights, model_args, data)
    last = n_inputs(loaded) - 1
    images = [checks.integer(i, "images", 0, last) for i in images]
    x, y = inputs(loaded, images)
    span = (DIGITS_SPAN if data == "digits" else SPAN) if span is None else span
    land = input_landscape(net, x, y, span=span, steps=steps, surface=surface, norm=norm, seed=seed,
                           progress=progress)
    folder, stem, paths = Path(out), file_stem(model), []
    folder.mkdir(parents=True, exist_ok=True)
    for k, i in enumerate(images):
        title = [f"test image {i} (label {int(y[k])})"]
        figures = {kind: land.plot(kind, k, title) for kind in PLOT_KINDS}
        figures["slices"] = land.plot_slices(k, title)
        for kind, png in figures.items():
            paths.append(folder / f"{stem}_{i}_{surface}_{kind}.png")
            paths[-1].write_bytes(png)
    return paths
