"""What a neuron is, one rule for every neuron metric (coverage, sensitivity, uncertainty).

A layer's output has one *neuron axis*; the neurons are the indices along it:

* ``nn.Linear`` (and its subclasses) acts on the last axis, so an output (N, C) or
  (N, T, C) (a Linear applied to tokens) has C neurons on axis -1; the other axes
  (tokens) are the neuron's elements.
* every other module follows PyTorch's channel-first layout (conv, normalisation,
  pooling, activations, whole blocks): an output (N, C, *spatial) has C neurons on
  axis 1, each a feature map.

``axis`` overrides the rule: one int for every chosen layer, or a mapping from layer
names to ints (layers not named keep the rule). :func:`neuron_view` moves the neuron
axis to position 1 and flattens the rest, (N, C, L); coverage reduces the L elements by
their mean (``neuron="channel"``) or counts each element as a neuron, sensitivity and
uncertainty take the whole L-element map as one neuron.

:class:`RunningMoments` accumulates per-neuron means and variances over batches.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Dict, Optional, Union

import torch
from torch import nn

from robustx.checks import integer

__all__ = ["AxisSpec", "default_axis", "neuron_axes", "neuron_view", "RunningMoments"]

AxisSpec = Union[None, int, Mapping]


def default_axis(module: nn.Module) -> int:
    """The neuron axis of ``module``'s output: -1 for ``nn.Linear``, else 1 (channels)."""
    return -1 if isinstance(module, nn.Linear) else 1


def neuron_axes(modules: Dict[str, nn.Module], axis: AxisSpec = None) -> Dict[str, int]:
    """Per layer name, the neuron axis: :func:`default_axis` unless ``axis`` overrides it
    (an int for every layer, or {layer name: int}; an axis counts the batch axis as 0)."""
    if axis is None or isinstance(axis, Mapping):
        given = dict(axis or {})
        unknown = sorted(set(given) - set(modules))
        if unknown:
            raise ValueError(f"axis names layers {unknown} that are not chosen; chosen: {list(modules)}")
        for name, a in given.items():
            _nonzero(a, f"axis[{name!r}]")
        return {name: given[name] if name in given else default_axis(m) for name, m in modules.items()}
    return dict.fromkeys(modules, _nonzero(axis, "axis"))


def _nonzero(value, name: str) -> int:
    """An axis other than the batch axis 0."""
    value = integer(value, name, minimum=-64)
    if value == 0:
        raise ValueError(f"{name} must not be 0 (the batch axis)")
    return value


def neuron_view(output: torch.Tensor, axis: int, name: str) -> torch.Tensor:
    """Layer ``name``'s output (N, ...) as (N, C, L): the C neurons on ``axis`` moved to
    position 1, each neuron's L elements (the other axes, in order) flattened."""
    if output.dim() < 2 or not -output.dim() <= axis < output.dim() or axis % output.dim() == 0:
        raise ValueError(
            f"layer {name!r}: neuron axis {axis} does not fit its output of shape {tuple(output.shape)} "
            "(need (N, C, ...) and an axis other than the batch axis)"
        )
    output = output.movedim(axis, 1)
    return output.reshape(output.shape[0], output.shape[1], -1)


class RunningMoments:
    """Count n, mean and M2 = sum_i (v_i - mean)^2 of values streamed in batches along
    axis 0, in float64; batches and partial results merge with Chan et al.'s pairwise
    update, so the result does not depend on how the data were split.
    ``variance()`` = M2 / n (population variance, ddof 0)."""

    def __init__(self, n: int = 0, mean: Optional[torch.Tensor] = None, m2: Optional[torch.Tensor] = None):
        self.n, self.mean, self.m2 = n, mean, m2

    def update(self, values: torch.Tensor) -> "RunningMoments":
        """Add a batch (B, ...) of values."""
        values = values.to(torch.float64)
        mean = values.mean(dim=0)
        return self.merge(RunningMoments(values.shape[0], mean, (values - mean).square().sum(dim=0)))

    def merge(self, other: "RunningMoments") -> "RunningMoments":
        """Fold ``other``'s moments into these: the moments of both data sets together."""
        if other.n == 0:
            return self
        if self.n == 0:
            self.n, self.mean, self.m2 = other.n, other.mean.clone(), other.m2.clone()
            return self
        n = self.n + other.n
        delta = other.mean.to(self.mean.device) - self.mean
        self.m2 = self.m2 + other.m2.to(self.m2.device) + delta.square() * (self.n * other.n / n)
        self.mean = self.mean + delta * (other.n / n)
        self.n = n
        return self

    def variance(self) -> torch.Tensor:
        """Population variance M2 / n of each position."""
        if self.n == 0:
            raise ValueError("no values yet: the variance of an empty set is undefined")
        return self.m2 / self.n
