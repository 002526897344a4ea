"""Every figure robustx draws, as PNG bytes: the report's histograms, bar charts and
adversarial image grid, the landscapes' panels (:mod:`robustx.landscape`), the CLEVER table's
histograms.

Drawn on :class:`matplotlib.figure.Figure` objects with the Agg renderer of ``Figure.savefig``
(no pyplot state, no global backend switch); every user string is drawn literally (no
mathtext, :func:`literal_text`). Writing the bytes to a file is the caller's job.
"""
from __future__ import annotations

import contextlib
import io
import math
from typing import Dict, Iterator, Optional, Sequence, Tuple

import torch

from robustx import checks

__all__ = ["literal_text", "figure", "png", "histogram_png", "histograms_png", "bars_png", "layer_bars_png",
           "image_grid_png", "fmt"]


@contextlib.contextmanager
def literal_text() -> Iterator[None]:
    """Inside the block (or the decorated function), matplotlib draws every string as given:
    ``text.parse_math`` is off, so a ``$`` in a layer name, a folder name or a title is a
    dollar sign, never mathtext that fails to parse when the figure is saved."""
    import matplotlib

    with matplotlib.rc_context({"text.parse_math": False}):
        yield


def fmt(value: Optional[float]) -> str:
    """A number as shown in reports and on bars: 4 significant digits, "NaN", or "—" for None."""
    if value is None:
        return "—"
    if math.isnan(value):
        return "NaN"
    return f"{value:.4g}"


def png(fig, dpi: int = 100) -> bytes:
    """The PNG bytes of ``fig`` (Agg renderer, tight bounding box)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def figure(width: float, height: float):
    """A new :class:`matplotlib.figure.Figure` (inches, constrained layout), outside pyplot."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


#: one histogram panel: (values, title, x-axis label)
Panel = Tuple[Sequence[float], str, str]


@literal_text()
def histograms_png(panels: Sequence[Panel], bins: int = 30) -> bytes:
    """PNG of one histogram of the finite values per panel, side by side (the count of
    non-finite values in each title)."""
    checks.integer(bins, "bins")
    if not panels:
        raise ValueError("panels must hold at least one (values, title, xlabel)")
    fig = figure(5 * len(panels), 3.2)
    for ax, (values, title, xlabel) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        vals = torch.as_tensor(list(values), dtype=torch.float64)
        finite = vals[torch.isfinite(vals)]
        ax.hist(finite.numpy(), bins=bins, color="#4c72b0", edgecolor="white")
        dropped = vals.numel() - finite.numel()
        ax.set_title(title + (f" ({dropped} non-finite not shown)" if dropped else ""))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("count")
    return png(fig)


def histogram_png(values: Sequence[float], title: str, xlabel: str, bins: int = 30) -> bytes:
    """PNG of a histogram of the finite ``values`` (the count of non-finite ones in the title)."""
    return histograms_png([(values, title, xlabel)], bins)


@literal_text()
def bars_png(labels: Sequence[str], values: Sequence[float], title: str) -> bytes:
    """PNG of one vertical bar per label, each annotated with its value."""
    labels, values = [str(v) for v in labels], [float(v) for v in values]
    if len(labels) != len(values):
        raise ValueError(f"labels and values must have the same length, got {len(labels)} and {len(values)}")
    fig = figure(min(5.0, max(3.0, 0.8 * len(labels) + 1.2)), 3.2)
    ax = fig.subplots()
    bars = ax.bar(range(len(values)), values, color="#4c72b0")
    ax.bar_label(bars, labels=[fmt(v) for v in values], fontsize=8)
    crowded = len(labels) > 4
    ax.set_xticks(range(len(labels)), labels, rotation=30 if crowded else 0, ha="right" if crowded else "center")
    ax.set_title(title)
    ax.margins(y=0.15)
    return png(fig)


@literal_text()
def layer_bars_png(per_layer: Dict[str, float], title: str) -> bytes:
    """PNG of one horizontal bar per layer (in the dict's order, first at the top)."""
    names, values = list(per_layer), [float(v) for v in per_layer.values()]
    fig = figure(5, max(2.0, 0.25 * len(names) + 1.0))
    ax = fig.subplots()
    ax.barh(range(len(names)), values, color="#55a868")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_title(title)
    return png(fig)


def _as_images(t: torch.Tensor, name: str) -> torch.Tensor:
    """(N, H, W, C) float64 from (N, H, W) or (N, C, H, W) with C in {1, 3}."""
    checks.floating_tensor(t, name)
    if t.dim() == 3:
        t = t.unsqueeze(1)
    if t.dim() != 4 or t.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have shape (N, H, W) or (N, C, H, W) with C 1 or 3, got {tuple(t.shape)}")
    return t.detach().cpu().double().permute(0, 2, 3, 1)


def image_grid_png(x: torch.Tensor, x_adv: torch.Tensor, n: int = 8) -> bytes:
    """PNG of the first ``n`` samples: clean row, adversarial row, and the difference
    amplified to the full grey range (mid-grey = no change)."""
    n = checks.integer(n, "n")
    clean, adv = _as_images(x, "x"), _as_images(x_adv, "x_adv")
    if clean.shape != adv.shape:
        raise ValueError(f"x and x_adv must have the same shape, got {tuple(x.shape)} and {tuple(x_adv.shape)}")
    clean, adv = clean[:n], adv[:n]
    lo, hi = min(clean.min(), adv.min()).item(), max(clean.max(), adv.max()).item()
    span = hi - lo if hi > lo else 1.0
    diff = adv - clean
    peak = diff.abs().max().item() or 1.0
    rows = [("clean", (clean - lo) / span), ("adversarial", (adv - lo) / span),
            (f"difference ×{0.5 * span / peak:.3g}", 0.5 + 0.5 * diff / peak)]
    k = clean.shape[0]
    fig = figure(1.3 * k + 0.8, 4.2)
    axes = fig.subplots(3, k, squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for c in range(k):
            ax = axes[r][c]
            img = imgs[c].clamp(0, 1).numpy()
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, fontsize=8)
    return png(fig)


