"""The report's figures as PNG bytes: histograms, bar charts, the adversarial image grid.

Drawn with matplotlib's Agg renderer through ``Figure.savefig`` (no pyplot state, no
global backend switch); every user string is drawn literally (no mathtext).
"""
from __future__ import annotations

import io
import math
from typing import Dict, Optional, Sequence

import torch

from robustx import checks
from robustx.plotting import literal_text

__all__ = ["histogram_png", "bars_png", "layer_bars_png", "image_grid_png", "fmt"]


def fmt(value: Optional[float]) -> str:
    """A number as shown in reports and on bars: 4 significant digits, "NaN", or "—" for None."""
    if value is None:
        return "—"
    if math.isnan(value):
        return "NaN"
    return f"{value:.4g}"


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), layout="constrained")


@literal_text()
def histogram_png(values: Sequence[float], title: str, xlabel: str, bins: int = 30) -> bytes:
    """PNG of a histogram of the finite ``values`` (the count of non-finite ones in the title)."""
    checks.integer(bins, "bins")
    vals = torch.as_tensor(list(values), dtype=torch.float64)
    finite = vals[torch.isfinite(vals)]
    fig = _new_figure(5, 3.2)
    ax = fig.subplots()
    ax.hist(finite.numpy(), bins=bins, color="#4c72b0", edgecolor="white")
    dropped = vals.numel() - finite.numel()
    ax.set_title(title + (f" ({dropped} non-finite not shown)" if dropped else ""))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    return _png(fig)


@literal_text()
def bars_png(labels: Sequence[str], values: Sequence[float], title: str) -> bytes:
    """PNG of one vertical bar per label, each annotated with its value."""
    labels, values = [str(v) for v in labels], [float(v) for v in values]
    if len(labels) != len(values):
        raise ValueError(f"labels and values must have the same length, got {len(labels)} and {len(values)}")
    fig = _new_figure(min(5.0, max(3.0, 0.8 * len(labels) + 1.2)), 3.2)
    ax = fig.subplots()
    bars = ax.bar(range(len(values)), values, color="#4c72b0")
    ax.bar_label(bars, labels=[fmt(v) for v in values], fontsize=8)
    crowded = len(labels) > 4
    ax.set_xticks(range(len(labels)), labels, rotation=30 if crowded else 0, ha="right" if crowded else "center")
    ax.set_title(title)
    ax.margins(y=0.15)
    return _png(fig)


@literal_text()
def layer_bars_png(per_layer: Dict[str, float], title: str) -> bytes:
    """PNG of one horizontal bar per layer (in the dict's order, first at the top)."""
    names, values = list(per_layer), [float(v) for v in per_layer.values()]
    fig = _new_figure(5, max(2.0, 0.25 * len(names) + 1.0))
    ax = fig.subplots()
    ax.barh(range(len(names)), values, color="#55a868")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_title(title)
    return _png(fig)


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
    fig = _new_figure(1.3 * k + 0.8, 4.2)
    axes = fig.subplots(3, k, squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for c in range(k):
            ax = axes[r][c]
            img = imgs[c].clamp(0, 1).numpy()
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, fontsize=8)
    return _png(fig)


