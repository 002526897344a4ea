"""Input-space loss landscapes and decision surfaces (Yu et al., IJCAI 2019, arXiv 1905.04270).

For an input x with label y and two directions d1, d2 (per image), the landscape is a
function of the grid coordinates (alpha, beta) in [-a, a]^2 evaluated at
x + alpha d1 + beta d2:

* ``surface="loss"``:   the cross-entropy loss CE(Z(x + alpha d1 + beta d2), y);
* ``surface="margin"``: the decision surface Z_y - max_{i != y} Z_i on the logits Z;
  positive = classified as y, its zero level set is the decision boundary.

Directions, for ``norm="inf"`` / ``norm=2``:

* ``"adversarial"``: the normalised loss gradient at x: sign(grad) (L-inf norm 1, the FGSM
  direction) / grad / ||grad||_2 (L2 norm 1). A zero gradient gives a zero direction.
* ``"random"``: Rademacher +-1 coordinates (L-inf norm 1) / a Gaussian vector divided by its
  L2 norm; independent per image, drawn from ``seed`` on the CPU (the same on every device).
* a tensor (N, *shape) or (*shape): used as given, not normalised.

A robust model has a flat loss surface and a decision boundary (margin = 0) far from the
origin. Grid points are not clipped to the data domain unless ``clip_values`` is given.
Every grid point of every image goes through the model in large chunked batches.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from robustx import checks
from robustx.geometry import logit_margin, norm_name, project_box, steepest_ascent
from robustx.modelutil import chunks, frozen_eval, model_device, progress_bar
from robustx.plotting import literal_text

__all__ = ["Landscape", "input_landscape", "adversarial_direction", "random_direction", "run_landscape"]

SURFACES = ("loss", "margin")
DIRECTIONS = ("adversarial", "random")
PLOT_KINDS = ("contour", "surface")
LANDSCAPE_NORMS = (2.0, math.inf)


@dataclass
class Landscape:
    """Values of a surface on a 2-D grid around each input.

    ``axis`` (steps,): grid coordinates from -span to span; ``values`` (N, steps, steps):
    ``values[n, i, j]`` at x_n + axis[i] d1_n + axis[j] d2_n; ``margin`` (N, steps, steps):
    the logit margin at the same points (its zero level set is the decision boundary);
    ``slices`` / ``slice_margins`` (2, N, steps): the surface / margin along each direction
    alone (``slices[0, n, i]`` at x_n + axis[i] d1_n); ``directions`` (2, N, *shape): d1, d2.
    """

    axis: torch.Tensor
    values: torch.Tensor
    margin: torch.Tensor
    slices: torch.Tensor
    slice_margins: torch.Tensor
    directions: torch.Tensor
    direction_names: Tuple[str, str]
    surface: str
    norm: float

    def to_dict(self) -> dict:
        """JSON-ready dict: every tensor as nested lists, the direction names, surface and norm ("2" / "inf")."""
        return {
            "axis": self.axis.tolist(),
            "values": self.values.tolist(),
            "margin": self.margin.tolist(),
            "slices": self.slices.tolist(),
            "slice_margins": self.slice_margins.tolist(),
            "directions": self.directions.tolist(),
            "direction_names": list(self.direction_names),
            "surface": self.surface,
            "norm": norm_name(self.norm),
        }

    @literal_text()
    def plot(self, path, kind: str = "contour", index: Union[int, Sequence[int]] = 0, titles=None) -> Path:
        """Write a PNG of the surface of image(s) ``index`` (one panel each), decision boundary in red."""
        if kind not in PLOT_KINDS:
            raise ValueError(f"kind must be one of {PLOT_KINDS}, got {kind!r}")
        indices = self._indices(index)
        plt = _pyplot()
        projection = "3d" if kind == "surface" else None
        fig = plt.figure(figsize=(4.2 * len(indices), 3.8))
        for k, n in enumerate(indices):
            ax = fig.add_subplot(1, len(indices), k + 1, projection=projection)
            (self._draw_contour if kind == "contour" else self._draw_surface)(ax, n)
            ax.set_title(titles[k] if titles else f"image {n}")
        return _save(fig, path)

    @literal_text()
    def plot_slices(self, path, index: Union[int, Sequence[int]] = 0, titles=None) -> Path:
        """Write a PNG of the 1-D slices along d1 and d2; dotted lines mark the decision boundary."""
        indices = self._indices(index)
        plt = _pyplot()
        fig, axes = plt.subplots(1, len(indices), figsize=(4.2 * len(indices), 3.2), squeeze=False)
        axis = self.axis.numpy()
        for k, n in enumerate(indices):
            ax = axes[0, k]
            for d, color in ((0, "C3"), (1, "C0")):
                ax.plot(axis, self.slices[d, n].numpy(), color=color, label=self.direction_names[d])
                for crossing in _zero_crossings(axis, self.slice_margins[d, n].numpy()):
                    ax.axvline(crossing, color=color, linestyle=":", linewidth=1)
            ax.set_xlabel("step along direction")
            ax.set_ylabel(self.surface)
            ax.set_title(titles[k] if titles else f"image {n}")
            ax.legend(fontsize=7)
        return _save(fig, path)

    def _indices(self, index) -> list:
        indices = [index] if isinstance(index, int) else list(index)
        n = self.values.shape[0]
        if not indices or any(not isinstance(i, int) or not 0 <= i < n for i in indices):
            raise ValueError(f"index must be an int or a list of ints in [0, {n}), got {index!r}")
        return indices

    def _draw_contour(self, ax, n: int) -> None:
        axis = self.axis.numpy()
        filled = ax.contourf(axis, axis, self.values[n].T.numpy(), levels=20, cmap="viridis")
        ax.figure.colorbar(filled, ax=ax, label=self.surface)
        margin = self.margin[n].T.numpy()
        if margin.min() < 0 < margin.max():
            ax.contour(axis, axis, margin, levels=[0.0], colors="red", linewidths=1.5)
        ax.plot([0], [0], marker="x", color="white")
        ax.set_xlabel(f"{self.direction_names[0]} direction")
        ax.set_ylabel(f"{self.direction_names[1]} direction")

    def _draw_surface(self, ax, n: int) -> None:
        import numpy as np

        axis = self.axis.numpy()
        alpha, beta = np.meshgrid(axis, axis, indexing="ij")
        values = self.values[n].numpy()
        ax.plot_surface(alpha, beta, values, cmap="viridis", linewidth=0, antialiased=True, alpha=0.85)
        edge = _boundary_mask(self.margin[n].numpy())
        ax.scatter(alpha[edge], beta[edge], values[edge], color="red", s=4, depthshade=False)
        ax.set_zlim(values.min(), values.max())
        ax.set_xlabel(self.direction_names[0])
        ax.set_ylabel(self.direction_names[1])
        ax.set_zlabel(self.surface)


def _boundary_mask(margin):
    """Grid points whose margin sign differs from a right or lower neighbour's (the boundary)."""
    import numpy as np

    positive = margin > 0
    edge = np.zeros_like(positive)
    edge[:-1] |= positive[:-1] != positive[1:]
    edge[:, :-1] |= positive[:, :-1] != positive[:, 1:]
    return edge


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    _pyplot().close(fig)
    return path


def _zero_crossings(axis, margin) -> list:
    """Linearly interpolated points where ``margin`` changes sign."""
    out = []
    for i in range(len(axis) - 1):
        a, b = margin[i], margin[i + 1]
        if (a > 0) != (b > 0):
            out.append(axis[i] + (axis[i + 1] - axis[i]) * a / (a - b) if a != b else axis[i])
    return out


# ------------------------------------------------------------------------- surfaces
def _surface_values(logits: torch.Tensor, y: torch.Tensor, surface: str) -> torch.Tensor:
    if surface == "loss":
        return F.cross_entropy(logits, y, reduction="none")
    return logit_margin(logits, y)


# ----------------------------------------------------------------------- directions
def adversarial_direction(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm="inf", batch_size: int = 256
) -> torch.Tensor:
    """The normalised cross-entropy gradient at x, :func:`robustx.geometry.steepest_ascent`:
    sign(grad) (L-inf) or grad / ||grad||_2 (L2); gradients of ``batch_size`` images at a time."""
    checks.model(model)
    p = checks.norm(norm, allowed=LANDSCAPE_NORMS)
    checks.images(x, "x")
    batch_size = checks.integer(batch_size, "batch_size")
    y = checks.labels(y, x.shape[0])
    out = torch.empty_like(x)
    with frozen_eval(model):
        for sl in chunks(x.shape[0], batch_size):
            xc = x[sl].detach().clone().requires_grad_(True)
            loss = F.cross_entropy(model(xc), y[sl], reduction="sum")
            (grad,) = torch.autograd.grad(loss, xc)
            out[sl] = steepest_ascent(grad, p)
    zero = out.flatten(1).abs().amax(1) == 0
    if zero.any():
        warnings.warn(
            f"the loss gradient is exactly zero for {int(zero.sum())} image(s); their adversarial "
            "direction is zero and the landscape is flat along it",
            RuntimeWarning,
            stacklevel=2,
        )
    return out


def random_direction(
    shape: Tuple[int, ...], norm="inf", seed: int = 0, dtype=torch.float32, device="cpu"
) -> torch.Tensor:
    """Random unit directions (N, *shape): Rademacher +-1 (L-inf) or Gaussian / ||.||_2 (L2),
    drawn from ``seed`` on the CPU."""
    p = checks.norm(norm, allowed=LANDSCAPE_NORMS)
    gen = torch.Generator().manual_seed(checks.seed(seed))
    if math.isinf(p):
        d = torch.randint(0, 2, shape, generator=gen, dtype=torch.int64).to(dtype) * 2 - 1
    else:
        d = steepest_ascent(torch.randn(shape, generator=gen, dtype=torch.float64), p).to(dtype)
    return d.to(device)


def _resolve_direction(spec, k: int, model, x, y, p, seed) -> Tuple[torch.Tensor, str]:
    if isinstance(spec, torch.Tensor):
        if spec.shape == x.shape[1:]:
            spec = spec.expand_as(x)
        if spec.shape != x.shape:
            raise ValueError(
                f"directions[{k}] as a tensor must have shape {tuple(x.shape)} or {tuple(x.shape[1:])}, "
                f"got {tuple(spec.shape)}"
            )
        checks.images(spec, f"directions[{k}]")
        return spec.to(device=x.device, dtype=x.dtype), "given"
    if spec == "adversarial":
        return adversarial_direction(model, x, y, p), spec
    if spec == "random":
        return random_direction(tuple(x.shape), p, seed + k, x.dtype, x.device), spec
    raise ValueError(f"directions[{k}] must be one of {DIRECTIONS} or a tensor, got {spec!r}")


# ------------------------------------------------------------------------ landscape
def _grid_coefficients(axis: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(alpha, beta) of the P = steps^2 + 2 steps points of one image: the grid in row-major
    order (alpha along d1 is the slow index), then the slice along d1, then along d2."""
    steps = axis.numel()
    zeros = torch.zeros_like(axis)
    alpha = torch.cat([axis.repeat_interleave(steps), axis, zeros])
    beta = torch.cat([axis.repeat(steps), zeros, axis])
    return alpha, beta


def input_landscape(
    model: nn.Module,
    x: torch.Tensor,
    y: Optional[torch.Tensor] = None,
    *,
    span: float,
    steps: int = 41,
    directions: Sequence = DIRECTIONS,
    surface: str = "loss",
    norm="inf",
    clip_values: Optional[Tuple[float, float]] = (0.0, 1.0),
    seed: int = 0,
    batch_size: int = 4096,
    progress: bool = True,
) -> Landscape:
    """Loss or decision surface of ``model`` on a steps x steps grid around each image.

    x (N, *shape), y (N,) labels (None: the model's predictions at x). The grid is
    ``axis = linspace(-span, span, steps)`` along two directions per image (see the module
    docstring; directions[1] random uses ``seed + 1``). ``clip_values`` (default (0, 1)) is
    the data domain: x must lie inside and grid points are clipped to it; None: no domain,
    no clipping. ``batch_size`` grid points go through the model per forward call. Flatter
    loss and a boundary farther from the origin mean more robust. Returns a :class:`Landscape`.
    """
    checks.model(model)
    clip_values = checks.clip_range(clip_values)
    checks.images(x, "x", clip_values)
    span = checks.positive_float(span, "span")
    steps = checks.integer(steps, "steps", minimum=2)
    seed = checks.seed(seed)
    if surface not in SURFACES:
        raise ValueError(f"surface must be one of {SURFACES}, got {surface!r}")
    if isinstance(directions, (str, torch.Tensor)) or len(directions) != 2:
        raise ValueError(f"directions must be a pair of {DIRECTIONS} names or tensors, got {directions!r}")
    batch_size = checks.integer(batch_size, "batch_size")
    p = checks.norm(norm, allowed=LANDSCAPE_NORMS)
    device = model_device(model)
    x = x.detach().to(device)
    y = _labels(model, x, y, batch_size)
    resolved = [_resolve_direction(s, k, model, x, y, p, seed) for k, s in enumerate(directions)]
    d = torch.stack([r[0] for r in resolved])
    axis = torch.linspace(-span, span, steps, dtype=torch.float64)
    alpha, beta = (c.to(device=device, dtype=x.dtype) for c in _grid_coefficients(axis))
    n_points = alpha.numel()
    total = x.shape[0] * n_points
    values = torch.empty(total, dtype=torch.float64)
    margins = torch.empty(total, dtype=torch.float64)
    expand = (-1,) + (1,) * (x.dim() - 1)
    with frozen_eval(model), torch.no_grad():
        for sl in progress_bar(chunks(total, batch_size), progress, "landscape", math.ceil(total / batch_size)):
            flat = torch.arange(sl.start, sl.stop, device=device)
            img, pt = flat // n_points, flat % n_points
            points = x[img] + alpha[pt].view(expand) * d[0, img] + beta[pt].view(expand) * d[1, img]
            logits = model(project_box(points, clip_values))
            values[sl] = _surface_values(logits, y[img], surface).double().cpu()
            margins[sl] = logit_margin(logits, y[img]).double().cpu()
    grid = steps * steps
    values, margins = values.view(-1, n_points), margins.view(-1, n_points)
    return Landscape(
        axis=axis,
        values=values[:, :grid].reshape(-1, steps, steps),
        margin=margins[:, :grid].reshape(-1, steps, steps),
        slices=values[:, grid:].reshape(-1, 2, steps).transpose(0, 1).contiguous(),
        slice_margins=margins[:, grid:].reshape(-1, 2, steps).transpose(0, 1).contiguous(),
        directions=d.detach().cpu(),
        direction_names=tuple(r[1] for r in resolved),
        surface=surface,
        norm=p,
    )


def _labels(model, x, y, batch_size) -> torch.Tensor:
    if y is None:
        with frozen_eval(model), torch.no_grad():
            return torch.cat([model(x[sl]).argmax(1) for sl in chunks(x.shape[0], batch_size)])
    return checks.labels(y, x.shape[0]).to(x.device)


# ------------------------------------------------------------------------ run
def run_landscape(
    out_dir="landscapes",
    *,
    model: str = "digits",
    weights=None,
    data_root=None,
    images: Sequence[int] = (0,),
    span: Optional[float] = None,
    steps: int = 41,
    surface: str = "loss",
    norm="inf",
    seed: int = 0,
    progress: bool = True,
) -> List[Path]:
    """Landscapes of test images ``images`` of a built-in model, written as contour, 3-D
    surface and slice PNGs to ``out_dir`` (``robustx landscape``); returns the paths.

    ``model`` "digits" (the digits CNN on sklearn digits; ``weights`` default: the shipped
    ones, span default 0.5) or "resnet20" (CIFAR ResNet-20 on the AISafety CIFAR-10 images
    under ``data_root``; ``weights`` required, span default 16/255).
    """
    from robustx import data, models

    if model == "digits":
        net = models.digits_cnn(pretrained=weights is None)
        if weights is not None:
            models.load_weights(net, weights)
        x, y = data.digits("test")
        span = 0.5 if span is None else span
    elif model == "resnet20":
        if weights is None:
            raise ValueError("weights is required with model='resnet20'")
        net = models.resnet20_cifar(weights)
        x, y = data.aisafety_cifar10(data_root)
        span = 16 / 255 if span is None else span
    else:
        raise ValueError(f"model must be 'digits' or 'resnet20', got {model!r}")
    images = [checks.integer(i, "images", 0, x.shape[0] - 1) for i in images]
    idx = torch.tensor(images, dtype=torch.int64)
    land = input_landscape(net, x[idx], y[idx], span=span, steps=steps, surface=surface, norm=norm, seed=seed,
                           progress=progress)
    out, paths = Path(out_dir), []
    for k, i in enumerate(images):
        title = f"test image {i} (label {int(y[i])})"
        for kind in PLOT_KINDS:
            paths.append(land.plot(out / f"{model}_{i}_{surface}_{kind}.png", kind, k, [title]))
        paths.append(land.plot_slices(out / f"{model}_{i}_{surface}_slices.png", k, [title]))
    return paths
