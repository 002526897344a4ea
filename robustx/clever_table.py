"""``robustx clever``: a table of CLEVER L2 and L-inf scores of the built-in digits CNN.

Runs untargeted CLEVER (Weng et al., ICLR 2018) on the first test images of
:func:`robustx.data.digits` with :func:`robustx.models.digits_cnn`, prints a table, and
writes ``clever.json`` and ``clever_hist.png`` to the output directory. The defaults are
small so the demo finishes in seconds on a laptop CPU; the paper uses N_b x N_s =
500 x 1024 samples per image (``--n-batches 500 --n-samples 1024``). A score marked ``*``
is not reliable: a Weibull fit of the image fell back to the largest sampled gradient norm
even after resampling, so it over-states robustness (``CleverResult.reliable``).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Dict, Tuple

import torch

from robustx import checks
from robustx.clever import UNRELIABLE, CleverResult, clever

__all__ = ["run_clever_table", "CLEVER_TABLE_DEFAULTS"]

CLEVER_TABLE_DEFAULTS = dict(n_images=10, n_batches=100, n_samples=32, radius_l2=2.0, radius_linf=0.3, seed=0)
NORMS = (("L2", 2), ("Linf", "inf"))


@checks.renamed(out_dir="out")
def run_clever_table(
    out="out/clever",
    *,
    n_images: int = CLEVER_TABLE_DEFAULTS["n_images"],
    n_batches: int = CLEVER_TABLE_DEFAULTS["n_batches"],
    n_samples: int = CLEVER_TABLE_DEFAULTS["n_samples"],
    radius_l2: float = CLEVER_TABLE_DEFAULTS["radius_l2"],
    radius_linf: float = CLEVER_TABLE_DEFAULTS["radius_linf"],
    seed: int = CLEVER_TABLE_DEFAULTS["seed"],
    max_batches=None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict:
    """Compute, print and save (into the folder ``out``) the demo's CLEVER scores; returns
    the JSON document. ``max_batches``: resampling budget of ill-conditioned fits
    (default 4 x n_batches)."""
    from robustx.data import digits
    from robustx.models import digits_cnn

    x, y = digits("test")
    n_images = checks.integer(n_images, "n_images", 1, x.shape[0])
    x, y = x[:n_images], y[:n_images]
    model = digits_cnn()
    radii = {"L2": radius_l2, "Linf": radius_linf}
    results: Dict[str, Tuple[CleverResult, float]] = {}
    for name, norm in NORMS:
        start = time.perf_counter()
        res = clever(model, x, norm=norm, radius=radii[name], n_batches=n_batches, n_samples=n_samples,
                     clip_values=(0.0, 1.0), seed=seed, max_batches=max_batches, progress=progress)
        results[name] = (res, time.perf_counter() - start)
    doc = _document(results, y, n_images)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "clever.json").write_text(json.dumps(doc, indent=2))
    _histogram(results, folder / "clever_hist.png")
    echo(_table(results, y))
    echo(f"wrote {folder / 'clever.json'} and {folder / 'clever_hist.png'}")
    return doc


def _document(results: Dict[str, Tuple[CleverResult, float]], y: torch.Tensor, n_images: int) -> dict:
    doc = {"model": "robustx.models.digits_cnn()", "data": f"robustx.data.digits('test')[:{n_images}]",
           "labels": y.tolist(), "clever": {}}
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


def _histogram(results: Dict[str, Tuple[CleverResult, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.5))
    for ax, (name, (res, _)) in zip(axes, results.items()):
        ax.hist(res.per_sample.numpy(), bins=min(20, max(5, res.per_sample.numel() // 2)), color="tab:blue")
        ax.set_xlabel(f"CLEVER {name} score (radius {res.settings['radius']})")
        ax.set_ylabel("images")
        ax.set_title(f"digits CNN, untargeted CLEVER {name}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
