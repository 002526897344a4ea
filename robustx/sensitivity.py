"""Neuron sensitivity and neuron uncertainty (Zhang et al., arXiv 1909.06978; Guo et al.,
arXiv 2101.09617).

A *neuron* is one index of a layer's neuron axis (:mod:`robustx.neurons`, the same rule
as coverage): a conv channel's whole feature map, or one unit of a Linear layer (its last
axis; for an output (N, T, C) the unit's T token values). For neuron m of layer l and
N pairs of benign inputs x_i and adversarial inputs x'_i::

    sigma_l^m = (1/N) sum_i ||F_l^m(x_i) - F_l^m(x'_i)||_1 / dim(F_l^m)

Lower sigma = more robust (the neuron barely reacts to the adversarial noise). Neuron
uncertainty u_l^m is the variance of neuron m's outputs (every element of its map, over
every input), lower = more stable; the AISafety platform takes it over adversarial
examples (see :func:`neuron_uncertainty`). A module called several times in one forward
pass counts with its last call. Both stream over batches with float64 sums: sensitivity
costs one forward pass over the benign and one over the adversarial inputs, uncertainty
one pass over the inputs it is given.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, NamedTuple, Optional, Tuple, Union

import torch
from torch import nn

from robustx import checks
from robustx.modelutil import LayerOutputs, LayerSpec, chunks, frozen_eval, model_device, progress_bar, resolve_layers
from robustx.neurons import AxisSpec, RunningMoments, neuron_axes, neuron_view
from robustx.plotting import literal_text
from robustx.results import Result

__all__ = [
    "neuron_moments",
    "merge_moments",
    "moments_uncertainty",
    "LayerScores",
    "TopK",
    "neuron_distance",
    "top_k_count",
    "top_k_indices",
    "neuron_sensitivity",
    "neuron_sensitivity_stream",
    "neuron_uncertainty",
    "neuron_uncertainty_stream",
]


class TopK(NamedTuple):
    """The k largest scores of a layer (descending; ties go to the lower index)."""

    values: torch.Tensor
    indices: torch.Tensor


def top_k_count(top_k: Union[int, float], n_neurons: int) -> int:
    """Number of neurons selected by ``top_k``: an int >= 1 (capped at ``n_neurons``) or
    a fraction in (0, 1] (rounded up, at least one neuron)."""
    accepted = f"top_k must be an int >= 1 or a fraction in (0, 1], got {top_k!r}"
    if isinstance(top_k, bool) or not isinstance(top_k, (int, float)):
        raise TypeError(accepted)
    if isinstance(top_k, int):
        if top_k < 1:
            raise ValueError(accepted)
        return min(top_k, n_neurons)
    if not 0.0 < top_k <= 1.0:
        raise ValueError(accepted)
    return max(1, min(n_neurons, math.ceil(round(top_k * n_neurons, 9))))


def top_k_indices(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` largest entries of a 1-D tensor, ties to the lower index."""
    return torch.sort(scores, descending=True, stable=True).indices[:count]


@dataclass(eq=False)
class LayerScores(Result, Mapping):
    """Per-neuron scores of every chosen layer: ``result[name]`` is a 1-D float64 tensor
    with one entry per neuron (channel or unit), in the model's layer order.

    ``value``: the mean over every neuron of every chosen layer (lower = more robust, for
    sensitivity and uncertainty alike); ``per_sample`` is None (the scores are per neuron,
    not per input).

    ``quantity`` names what the scores are ("sensitivity", "uncertainty"); ``n_inputs``
    is the number of inputs (or benign/adversarial pairs) they average over.
    """

    scores: Dict[str, torch.Tensor]
    n_inputs: int
    quantity: str
    per_sample = None

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.scores[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.scores)

    def __len__(self) -> int:
        return len(self.scores)

    def to_dict(self) -> dict:
        """JSON-able: value, quantity, n_inputs, layer_means and the per-neuron scores as lists."""
        return {
            "value": self.value, "quantity": self.quantity, "n_inputs": self.n_inputs,
            "layer_means": self.layer_means(), "scores": {n: s.tolist() for n, s in self.scores.items()},
        }

    def __repr__(self) -> str:
        means = ", ".join(f"{n}: {v:.4g}" for n, v in self.layer_means().items())
        return f"LayerScores({self.quantity}, n_inputs={self.n_inputs}, layer means {{{means}}})"

    def layer_means(self) -> Dict[str, float]:
        """Mean over the neurons of each layer."""
        return {n: s.mean().item() for n, s in self.scores.items()}

    @property
    def value(self) -> float:
        """Mean over every neuron of every chosen layer (lower = more robust)."""
        return torch.cat(list(self.scores.values())).mean().item()

    def mean(self) -> float:
        """Deprecated (one release): :attr:`value`."""
        warnings.warn("LayerScores.mean() is deprecated, use .value; the old name goes in the next release",
                      DeprecationWarning, stacklevel=2)
        return self.value

    def top_k(self, top_k: Union[int, float] = 0.1) -> Dict[str, TopK]:
        """Per layer, the ``top_k`` highest-scoring neurons (the *sensitive* neurons for
        sensitivity); ``top_k`` is a count or a fraction of the layer's neurons."""
        out = {}
        for name, s in self.scores.items():
            idx = top_k_indices(s, top_k_count(top_k, s.numel()))
            out[name] = TopK(s[idx], idx)
        return out

    @literal_text()
    def plot(self, path: Union[str, Path], *, title: Optional[str] = None) -> Path:
        """Save a figure of the per-neuron distribution (box) and the mean (dot) of each
        layer to ``path`` (format from its suffix); returns the path."""
        from matplotlib.figure import Figure  # no pyplot: no global backend state

        names = list(self.scores)
        fig = Figure(figsize=(max(4.0, 0.6 * len(names) + 2.0), 3.5), layout="constrained")
        ax = fig.add_subplot()
        positions = range(1, len(names) + 1)
        ax.boxplot([self.scores[n].numpy() for n in names], positions=positions, showfliers=True)
        ax.plot(positions, [self.scores[n].mean().item() for n in names], "o", label="layer mean")
        ax.set_xticks(list(positions), names, rotation=45, ha="right")
        ax.set_ylabel(f"neuron {self.quantity}")
        ax.set_title(title or f"neuron {self.quantity} per layer (N={self.n_inputs})")
        ax.legend()
        path = Path(path)
        fig.savefig(path)
        return path


def neuron_distance(benign: torch.Tensor, adversarial: torch.Tensor) -> torch.Tensor:
    """||F^m(x_i) - F^m(x'_i)||_1 / dim(F^m) for (N, C, L) outputs -> (N, C)."""
    diff = benign - adversarial
    return (diff.abs() if diff.requires_grad else diff.abs_()).mean(dim=2)


def _check_pair(x: torch.Tensor, x_adv: torch.Tensor) -> None:
    checks.images(x, "x")
    checks.images(x_adv, "x_adv")
    if x.shape != x_adv.shape:
        raise ValueError(f"x and x_adv must have the same shape, got {tuple(x.shape)} and {tuple(x_adv.shape)}")


def _checked_pairs(pairs: Iterable) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    for pair in pairs:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError("pairs must yield (x, x_adv) tuples of two tensors")
        _check_pair(*pair)
        yield pair


def _sensitivity(model, pairs: Iterable, layers: LayerSpec, axis: AxisSpec, progress: bool, total) -> LayerScores:
    """Sum of the per-neuron distances over validated (x, x_adv) batches, divided by N."""
    modules = resolve_layers(checks.model(model), layers)
    axes = neuron_axes(modules, axis)
    device = model_device(model)
    sums: Dict[str, torch.Tensor] = {}
    n = 0
    with frozen_eval(model), torch.no_grad(), LayerOutputs(modules) as rec:
        for x, x_adv in progress_bar(pairs, progress, "neuron sensitivity", total):
            model(x.to(device))
            benign = {name: neuron_view(rec.get(name), axes[name], name) for name in modules}
            model(x_adv.to(device))
            for name in modules:
                adversarial = neuron_view(rec.get(name), axes[name], name)
                d = neuron_distance(benign[name], adversarial).sum(dim=0, dtype=torch.float64)
                sums[name] = sums[name] + d if name in sums else d
            rec.clear()
            n += x.shape[0]
    if n == 0:
        raise ValueError("pairs yielded no inputs")
    return LayerScores({name: (s / n).cpu() for name, s in sums.items()}, n, "sensitivity")


def neuron_sensitivity_stream(
    model: nn.Module,
    pairs: Iterable[Tuple[torch.Tensor, torch.Tensor]],
    layers: LayerSpec = None,
    *,
    axis: AxisSpec = None,
    progress: bool = True,
    total: Optional[int] = None,
) -> LayerScores:
    """Neuron sensitivity from an iterable of (x, x_adv) batches (e.g. a DataLoader).

    Per batch, one forward pass over the benign and one over the adversarial inputs
    (separately, so that x_adv == x gives exactly 0); the per-neuron L1 distances are
    summed in float64. ``layers``: module names (dotted, as in ``named_modules()``) or
    types; default every Conv/Linear module. ``axis`` overrides each layer's neuron axis
    (see :mod:`robustx.neurons`). Lower = more robust. ``total`` is the number of
    batches, for the progress bar.
    """
    return _sensitivity(model, _checked_pairs(pairs), layers, axis, progress, total)


def neuron_sensitivity(
    model: nn.Module,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    layers: LayerSpec = None,
    *,
    axis: AxisSpec = None,
    batch_size: int = 256,
    progress: bool = True,
) -> LayerScores:
    """Neuron sensitivity sigma_l^m = (1/N) sum_i ||F_l^m(x_i) - F_l^m(x'_i)||_1 / dim(F_l^m)
    of every neuron of the chosen layers (Zhang et al.); lower = more robust.

    ``x`` and ``x_adv`` are (N, ...) tensors of the same shape, row i of ``x_adv`` the
    adversarial version of row i of ``x``; processed ``batch_size`` pairs at a time.
    Returns :class:`LayerScores`: ``result[name]`` is the 1-D per-neuron sigma.
    """
    _check_pair(x, x_adv)
    size = checks.integer(batch_size, "batch_size")
    batches = ((x[s], x_adv[s]) for s in chunks(x.shape[0], size))
    return _sensitivity(model, batches, layers, axis, progress, -(-x.shape[0] // size))


def _moments(model, batches: Iterable, layers: LayerSpec, axis: AxisSpec, progress: bool,
             total) -> Tuple[int, Dict[str, RunningMoments]]:
    """The number of inputs and, per layer, each neuron's moments (C,) over every element
    of its map in every validated input batch."""
    modules = resolve_layers(checks.model(model), layers)
    axes = neuron_axes(modules, axis)
    device = model_device(model)
    moments = {name: RunningMoments() for name in modules}
    n = 0
    with frozen_eval(model), torch.no_grad(), LayerOutputs(modules) as rec:
        for x in progress_bar(batches, progress, "neuron uncertainty", total):
            model(x.to(device))
            for name in modules:
                out = neuron_view(rec.get(name), axes[name], name)  # (B, C, L): B L values per neuron
                moments[name].update(out.transpose(1, 2).reshape(-1, out.shape[1]))
            rec.clear()
            n += x.shape[0]
    if n == 0:
        raise ValueError("batches yielded no inputs")
    return n, moments


def _uncertainty(model, batches: Iterable, layers: LayerSpec, axis: AxisSpec, progress: bool, total) -> LayerScores:
    """Per-neuron population variance over every element of the neuron's map in every
    validated input batch."""
    n, moments = _moments(model, batches, layers, axis, progress, total)
    return LayerScores({name: m.variance().cpu() for name, m in moments.items()}, n, "uncertainty")


def neuron_moments(model: nn.Module, x: torch.Tensor, layers: LayerSpec = None, *, axis: AxisSpec = None,
                   batch_size: int = 256) -> Dict[str, torch.Tensor]:
    """The sufficient statistics of :func:`neuron_uncertainty` over the inputs ``x``, as a
    flat dict of tensors: "n" (inputs), and per layer "count:<layer>" (values per neuron,
    n times the map's size), "mean:<layer>" and "m2:<layer>" (C,) in float64;
    :func:`merge_moments` folds such states of several input sets exactly (Chan et al.)
    and :func:`moments_uncertainty` turns one into the per-neuron uncertainty."""
    checks.images(x, "x")
    size = checks.integer(batch_size, "batch_size")
    n, moments = _moments(model, (x[s] for s in chunks(x.shape[0], size)), layers, axis, False, None)
    state = {"n": torch.tensor(n, dtype=torch.long)}
    for name, m in moments.items():
        state[f"count:{name}"] = torch.tensor(m.n, dtype=torch.long)
        state[f"mean:{name}"], state[f"m2:{name}"] = m.mean.cpu(), m.m2.cpu()
    return state


def merge_moments(states) -> Dict[str, torch.Tensor]:
    """The :func:`neuron_moments` state of the union of the states' input sets (in order)."""
    layers = [k.split(":", 1)[1] for k in states[0] if k.startswith("mean:")]
    total = {name: RunningMoments() for name in layers}
    for state in states:
        for name in layers:
            total[name].merge(RunningMoments(int(state[f"count:{name}"]), state[f"mean:{name}"], state[f"m2:{name}"]))
    merged = {"n": torch.stack([s["n"] for s in states]).sum()}
    for name, m in total.items():
        merged[f"count:{name}"] = torch.tensor(m.n, dtype=torch.long)
        merged[f"mean:{name}"], merged[f"m2:{name}"] = m.mean, m.m2
    return merged


def moments_uncertainty(state) -> Dict[str, torch.Tensor]:
    """Per layer, the per-neuron uncertainty u^m = M2 / count (see
    :func:`neuron_uncertainty`) of a :func:`neuron_moments` state."""
    layers = [k.split(":", 1)[1] for k in state if k.startswith("m2:")]
    return {name: state[f"m2:{name}"] / int(state[f"count:{name}"]) for name in layers}


def neuron_uncertainty_stream(
    model: nn.Module,
    batches: Iterable,
    layers: LayerSpec = None,
    *,
    axis: AxisSpec = None,
    progress: bool = True,
    total: Optional[int] = None,
) -> LayerScores:
    """Neuron uncertainty from an iterable of input batches (tensors, or tuples whose
    first element is the input, such as a DataLoader's (x, y)). See
    :func:`neuron_uncertainty`."""
    inputs = (checks.images(b[0] if isinstance(b, (tuple, list)) else b, "x") for b in batches)
    return _uncertainty(model, inputs, layers, axis, progress, total)


# The same calling convention as neuron_sensitivity (layers, axis, batch_size, progress), on purpose.
def neuron_uncertainty(
    model: nn.Module,
    x: torch.Tensor,
    layers: LayerSpec = None,
    *,
    axis: AxisSpec = None,
    batch_size: int = 256,
    progress: bool = True,
) -> LayerScores:
    """Neuron uncertainty (Guo et al.'s NU): for every neuron m of a layer, the population
    variance of its outputs over the N inputs ``x``; ``layer_means()`` gives the
    per-layer mean over neurons, NU_l = (1/|l|) sum_m u_l^m. Lower = more stable outputs.

    A conv neuron is its whole feature map (as for sensitivity): its outputs are every
    element e of the map for every input, u^m = Var_{i,e}[F^{m,e}(x_i)] (the population
    variance of its N dim(F^m) values). The AISafety platform (Guo et al.'s own; class ``NU`` of
    its ``EvalBox.Evaluation`` package, DIG-Beihang/AISafety) runs it on the
    *adversarial examples* (``adv_xs``) and gathers each neuron's maps over the inputs
    for ``np.var``; so does ``robustx.evaluate``'s NU (the primary attack's examples;
    NU_clean takes the clean inputs). Where this differs from the platform's code: its
    indexing (``features[key][k]`` for every neuron c) hands each neuron the whole
    layer's output, so it reports one pooled variance per layer, from the first batch
    of 64 inputs only, over the model's top-level children; this computes the variance
    per neuron (DESIGN.md), over every input, on the Conv/Linear layers (or ``layers``).
    """
    checks.images(x, "x")
    size = checks.integer(batch_size, "batch_size")
    batches = (x[s] for s in chunks(x.shape[0], size))
    return _uncertainty(model, batches, layers, axis, progress, -(-x.shape[0] // size))
