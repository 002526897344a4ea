"""``robustx clever``: a table of untargeted CLEVER L2 and L-inf scores (Weng et al., ICLR 2018).

Scores the first test inputs of a model (default: the built-in digits CNN on its test split),
prints a table, and writes ``clever.json`` and ``clever_hist.png`` to the output folder. The
defaults are :data:`robustx.clever.CLEVER_DEFAULTS` (radii :data:`robustx.clever.CLEVER_RADII`),
a CPU budget (the digits CNN: about 3 CPU-minutes for both norms, bench/RESULTS.md); the paper
uses N_b x N_s = 500 x 1024 samples per image (``--n-batches 500 --n-samples 1024``). A score
marked ``*`` is not reliable: a Weibull fit of the image fell back to the largest sampled
gradient norm even after resampling, so it over-states robustness (``CleverResult.reliable``).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable, Dict, Tuple

import torch

from robustx import checks
from robustx.clever import CLEVER_DEFAULTS, CLEVER_RADII, UNRELIABLE, CleverResult, clever
from robustx.commands.common import (add_model_and_data, add_output, inputs, load_model_and_data,
                                     model_and_data_arguments, n_inputs)

__all__ = ["HELP", "DESCRIPTION", "add_arguments", "run", "run_clever_table"]

#: the table's columns: name -> norm
NORMS = {"L2": "2", "Linf": "inf"}


#: the one-line help of ``robustx --help`` and the description of ``robustx clever --help``
HELP = "CLEVER L2 and L-inf scores of a model (default: the built-in digits CNN)"
DESCRIPTION = ("Untargeted CLEVER (L2 and L-inf) on the first test inputs of a model (default: the "
               "built-in digits CNN): a console table, clever.json and clever_hist.png. The paper uses"
               " 500 batches of 1024 samples.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's options."""
    add_model_and_data(parser)
    d = CLEVER_DEFAULTS
    parser.add_argument("--n-images", type=int, default=d["n_images"],
                        help="number of test inputs (default %(default)s)")
    parser.add_argument("--n-batches", type=int, default=d["n_batches"],
                        help="N_b batches per image (default %(default)s)")
    parser.add_argument("--n-samples", type=int, default=d["n_samples"],
                        help="N_s samples per batch (default %(default)s)")
    parser.add_argument("--radius-l2", type=float, default=CLEVER_RADII["2"],
                        help="L2 sampling radius (default %(default)s)")
    parser.add_argument("--radius-linf", type=float, default=CLEVER_RADII["inf"],
                        help="L-inf radius (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default %(default)s)")
    add_output(parser, "out/clever", run)


def run(args: argparse.Namespace) -> int:
    """Print and save the table; 0."""
    run_clever_table(args.out, **model_and_data_arguments(args), n_images=args.n_images,
                     n_batches=args.n_batches, n_samples=args.n_samples, radius_l2=args.radius_l2,
                     radius_linf=args.radius_linf, seed=args.seed, progress=not args.no_progress)
    return 0


@checks.renamed(out_dir="out")
def run_clever_table(
    out="out/clever",
    *,
    # the model and data, as robustx.commands.common.add_model_and_data names them
    model: str = "digits",
    weights=None,
    model_args=None,
    data=None,
    n_images: int = CLEVER_DEFAULTS["n_images"],
    n_batches: int = CLEVER_DEFAULTS["n_batches"],
    n_samples: int = CLEVER_DEFAULTS["n_samples"],
    radius_l2: float = CLEVER_RADII["2"],
    radius_linf: float = CLEVER_RADII["inf"],
    seed: int = 0,
    max_batches=None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict:
    """Compute, print (``echo``) and save to the folder ``out`` the CLEVER scores of the first
    ``n_images`` inputs of ``data`` (default: the model's own test set) for ``model``, named as
    ``robustx evaluate --model`` names it; inputs in [0, 1]. Returns the JSON document.
    ``max_batches``: resampling budget of ill-conditioned fits (default 4 x n_batches)."""
    net, data, loaded = load_model_and_data(model, weights, model_args, data)
    n_images = checks.integer(n_images, "n_images", 1, n_inputs(loaded))
    x, y = inputs(loaded, range(n_images))
    radii = {"L2": radius_l2, "Linf": radius_linf}
    results: Dict[str, Tuple[CleverResult, float]] = {}
    for name, norm in NORMS.items():
        start = time.perf_counter()
        res = clever(net, x, norm=norm, radius=radii[name], n_batches=n_batches, n_samples=n_samples,
                     clip_values=(0.0, 1.0), seed=seed, max_batches=max_batches, progress=progress)
        results[name] = (res, time.perf_counter() - start)
    doc = _document(results, y, model, f"{data}[:{n_images}]")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "clever.json").write_text(json.dumps(doc, indent=2))
    (folder / "clever_hist.png").write_bytes(_histograms(results, model))
    echo(_table(results, y))
    echo(f"wrote {folder / 'clever.json'} and {folder / 'clever_hist.png'}")
    return doc


def _document(results: Dict[str, Tuple[CleverResult, float]], y: torch.Tensor, model: str, data: str) -> dict:
    doc = {"model": model, "data": data, "labels": y.tolist(), "clever": {}}
    for name, (res, seconds) in results.items():
        scores = res.per_sample
        doc["clever"][name] = {
            "seconds": round(seconds, 3),
            "mean": float(scores.mean()),
            "median": float(scores.median()),
            "fallbacks": int(res.fallback.sum()),
            "ill_conditioned_fallbacks": int((res.reason >= UNRELIABLE).sum()),
            "reliable": res.reliable.tolist(),
            "result": res.to_dict(),
        }
    return doc


def _table(results: Dict[str, Tuple[CleverResult, float]], y: torch.Tensor) -> str:
    names = list(results)
    first = results[names[0]][0]
    head = f"{'image':>5} {'label':>5} {'pred':>4} " + " ".join(f"{'CLEVER ' + n:>12}" for n in names)
    lines = [head, "-" * len(head)]
    for i in range(y.shape[0]):
        cells = " ".join(_cell(results[n][0], i) for n in names)
        lines.append(f"{i:5d} {int(y[i]):5d} {int(first.predicted[i]):4d} {cells}")
    lines.append("-" * len(head))
    lines.append(f"{'mean':>16} " + " ".join(f"{float(results[n][0].per_sample.mean()):11.4f} " for n in names))
    for n in names:
        res, seconds = results[n]
        s = res.settings
        lines.append(f"{n}: radius {s['radius']}, {s['n_batches']} x {s['n_samples']} samples per image, "
                     f"{int(res.fallback.sum())} Weibull fallbacks ({int((res.reason >= UNRELIABLE).sum())} "
                     f"ill-conditioned), {int((~res.reliable).sum())} unreliable images (*), {seconds:.1f} s")
    return "\n".join(lines)


def _cell(res: CleverResult, i: int) -> str:
    """Score of image i, width 12, marked * where it is not reliable."""
    return f"{float(res.per_sample[i]):11.4f}" + (" " if res.reliable[i] else "*")


def _histograms(results: Dict[str, Tuple[CleverResult, float]], model: str) -> bytes:
    """PNG: one histogram of the scores per norm."""
    from robustx.plotting import histograms_png

    n = next(iter(results.values()))[0].per_sample.numel()
    panels = [(res.per_sample.tolist(), f"{model}, untargeted CLEVER {name}",
               f"CLEVER {name} score (radius {res.settings['radius']})") for name, (res, _) in results.items()]
    return histograms_png(panels, bins=min(20, max(5, n // 2)))
