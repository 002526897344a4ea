"""Neuron coverage of a data set: NC, KMNC, NBC, SNAC, TKNC and TKNP.

Definitions (DeepXplore, Pei et al. SOSP 2017; DeepGauge, Ma et al. ASE 2018), for the
set N of all neurons of the chosen layers and a neuron value phi(x, n):

* **profile** (training data): low_n = min_x phi(x, n), high_n = max_x phi(x, n)
  (plus mean and std, reported for reference).
* **KMNC(k)** = sum_n |{i : some x has phi(x, n) in section i of [low_n, high_n]}| / (k |N|),
  the k = ``sections`` sections of equal width with inclusive edges: section
  floor((phi - low) k / (high - low)), a value equal to high_n hits section k - 1, a value outside
  [low_n, high_n] hits none (a neuron with high_n == low_n has one reachable section).
* **NBC** = (|UpperCorner| + |LowerCorner|) / (2 |N|), UpperCorner = {n : some x has
  phi(x, n) > high_n}, LowerCorner likewise with phi < low_n (DeepGauge's strict rule; here a
  value within rounding noise of a bound counts as at it, see "Rounding noise" below).
  **SNAC** = |UpperCorner| / |N|.
* **TKNC(k)** = |union over x and layers of the top-k neurons of the layer| / |N|, k = ``top_k``.
* **TKNP(k)** = number of distinct patterns, a pattern being the tuple over layers of
  the *sets* of top-k neurons of one input.
* **NC(t)** (DeepXplore): each layer's output of an input is scaled to [0, 1] by the
  min and max over all its elements; a neuron is covered when its reduced scaled value
  exceeds t.

Higher coverage = the inputs exercise more of the model's behaviour (these measure a
data set's adequacy, not a model's robustness). The neurons of a layer are the indices
of its neuron axis, by the rule of :mod:`robustx.neurons` shared with sensitivity: a
conv output (N, C, ...) has C channels, a Linear output (N, ..., C) C units (its last
axis, also for token inputs (N, T, C)); ``axis`` overrides it. A neuron's value is the
mean of its elements (the spatial mean of a conv channel, ``neuron="channel"``, the
default), or every element of the output is a neuron (``neuron="element"``). With
``position="post"`` the axis is still the chosen module's.

Choices where the reference implementations differ (this module follows the papers and
../shared/DESIGN.md):

* KMNC edges: dnn-tip uses half-open sections [t_i, t_{i+1}), so a value equal to
  high_n hits nothing; NeuraL-Coverage indexes sections by ceil((phi - low) k /
  (high - low)), so phi == low_n hits nothing; the AISafety platform's
  ceil(... - 1e-4) - 1 sends phi == low_n to the last section. Here both edges count
  (DeepGauge: phi in [low_n, high_n]).
* NBC / SNAC bounds: dnn-tip widens them by ``scaler * std`` and compares with >= / <=;
  here the bounds are the profiled min / max and the comparisons strict, as in DeepGauge,
  up to rounding noise (next item).
* Rounding noise at the bounds (not in DeepGauge): the same input gives last-bit
  different activations in another batch (BLAS blocking and conv algorithms depend on
  the processor and the batch shape; measured between a batch of 1 and of 6: up to 54
  float32 ulps of a neuron's scale in ResNet-20, 490 in a ResNet-50), so a profiled input
  assessed in another batch could land a hair outside its own range. A value within
  tol_n = max(1024 eps(float32), 4 eps(dtype)) * max(|low_n|, |high_n|) of a bound
  (eps(float64) instead of eps(float32) for float64 activations; dtype = the
  activation's, so 1.2e-4 relative for float32) counts as at that bound: it is no
  corner case (UpperCorner needs phi > high_n + tol_n, LowerCorner phi < low_n - tol_n)
  and it hits the bound's KMNC section (k - 1 at high_n, 0 at low_n).
* NC scaling: NeuraL-Coverage and the AISafety platform scale the already reduced
  channel means (or do not scale at all); here the scaling uses the min / max of the
  layer's raw output elements per input, then the channel mean, as DeepXplore's code.
* TKNP: NeuraL-Coverage and the AISafety platform key a pattern by the *ordered* top-k
  list (the AISafety platform per layer, not per input); DeepGauge defines it by sets,
  which is used here. TKNP is a count (int), not a fraction.
* Every batch counts: the AISafety platform profiles at most 11 batches and assesses at
  most 16; here all data passed are used.
* A layer with fewer than ``top_k`` neurons contributes all of them to its top set.

Layers: ``layers=None`` selects every leaf Conv/Linear module. With ``position="pre"``
a neuron value is that module's own output - before any normalisation and
activation. With ``position="post"`` (the default, as DeepXplore and DeepGauge count
activation outputs) it is the output of the activation module
(ReLU, GELU, ...) that consumes the layer's output directly or through normalisation /
dropout / identity modules (found by following the tensor through the first forward
pass); a layer whose output reaches no activation module that way (the logits layer, a
residual branch whose ReLU comes after an addition) keeps its own output, and
``result().layers[name].source`` says which module each layer's values came from.
To take exactly the post-activation tensors, select the activation modules themselves
(``layers=nn.ReLU``) or whole blocks by name. A module called several times per forward
pass (a shared ``nn.ReLU``) gives one layer per call, named ``name#0``, ``name#1``, ...

Counting uses :func:`robustx.ops.coverage_update`: one fused pass per layer and batch
updates all the bitmaps, which merge by OR (:meth:`NeuronCoverage.merge`). TKNP keeps a
set of 128-bit BLAKE2b digests of the patterns (deterministic across processes, so sets
from shards unite; a collision among 10^9 patterns has probability ~1e-21).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import numbers
import warnings
from collections.abc import Iterable
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from robustx import checks, ops
from robustx.modelutil import LayerOutputs, LayerSpec, chunks, frozen_eval, model_device, progress_bar, resolve_layers
from robustx.neurons import AxisSpec, RunningMoments, neuron_axes, neuron_view
from robustx.results import Result

__all__ = ["NeuronCoverage", "CoverageResult", "LayerCoverage", "METRICS", "PROFILE_METRICS", "corner_tolerance"]

METRICS = ("NC", "KMNC", "NBC", "SNAC", "TKNC", "TKNP")
PROFILE_METRICS = ("KMNC", "NBC", "SNAC")
_NEURONS = ("channel", "element")
_POSITIONS = ("pre", "post")
_STATES = ("sections", "upper", "lower", "above", "topk_hit")
_PASSTHROUGH = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.dropout._DropoutNd,
    nn.Identity,
)
_ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh,
    nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid,
)
_DIGEST_BYTES = 16
_ACC_ULPS, _OWN_ULPS = 1024, 4  # corner_tolerance: float32 (or float64) ulps, ulps of the activation's dtype


@dataclasses.dataclass
class LayerCoverage(Result):
    """Coverage of one layer (fractions of its ``neurons``; None without a profile) and
    the module call its values came from (``source``). Higher = more exercised.
    ``value``: NC; ``per_sample`` is None (coverage is a property of the input set)."""

    NC: float
    KMNC: Optional[float]
    NBC: Optional[float]
    SNAC: Optional[float]
    TKNC: float
    neurons: int
    source: str
    per_sample = None

    @property
    def value(self) -> float:
        """NC, the fraction of neurons activated above the threshold (higher = more exercised)."""
        return self.NC


@dataclasses.dataclass
class CoverageResult(Result):
    """Coverage over every input counted: NC, KMNC, NBC, SNAC, TKNC fractions of the
    ``neurons`` of all layers (KMNC, NBC, SNAC None without a profile), TKNP a count of
    patterns, ``inputs`` counted, and the per-layer breakdown. Higher = more exercised.
    ``value``: NC (DeepXplore's neuron coverage); ``per_sample`` is None (coverage is a
    property of the input set)."""

    # the fractions of LayerCoverage, over every layer together
    NC: float
    KMNC: Optional[float]
    NBC: Optional[float]
    SNAC: Optional[float]
    TKNC: float
    TKNP: int
    inputs: int
    neurons: int
    layers: Dict[str, LayerCoverage]
    per_sample = None

    @property
    def value(self) -> float:
        """NC over every layer (higher = more exercised)."""
        return self.NC


class _Layer:
    """One neuron layer: the module call holding its values, its profile and its bitmaps."""

    def __init__(self, name: str, source: Tuple[str, int], label: str, shape: Tuple[int, ...], axis: int,
                 neuron: str, sections: int, device):
        self.name = name
        self.source = source  # (module name, call index within one forward pass)
        self.label = label  # the source as reported: module name, "#i" when called several times
        self.shape = torch.Size(shape)  # output shape without the batch dimension
        self.axis = axis  # neuron axis of the output (batch axis 0 included)
        self.neuron = neuron
        _, c, length = neuron_view(torch.empty((1, *shape), device="meta"), axis, name).shape
        self.m = c * length if neuron == "element" else c
        self.device = device
        self.reset_profile()
        self.reset_states(sections)

    @property
    def spec(self) -> tuple:
        return self.name, self.source, self.label, tuple(self.shape), self.axis

    def reset_profile(self) -> None:
        self.moments = RunningMoments()
        self.vmin = torch.full((self.m,), math.inf, dtype=torch.float64, device=self.device)
        self.vmax = torch.full((self.m,), -math.inf, dtype=torch.float64, device=self.device)

    def reset_states(self, sections: int) -> None:
        self.states = self.new_states(sections)

    def new_states(self, sections: int) -> Dict[str, torch.Tensor]:
        shapes = {"sections": (self.m, sections), **{s: (self.m,) for s in _STATES[1:]}}
        return {s: torch.zeros(shape, dtype=torch.bool, device=self.device) for s, shape in shapes.items()}

    def activations(self, out: torch.Tensor) -> torch.Tensor:
        """The output as (N, M, L): M neurons of L elements each (L = 1 for element neurons)."""
        if not torch.isfinite(out).all():
            raise ValueError(f"layer {self.name!r} (values of {self.label}) has NaN or infinite activations; "
                             "coverage needs finite neuron values")
        v = neuron_view(out, self.axis, self.name)
        return v.reshape(v.shape[0], -1, 1) if self.neuron == "element" else v


def corner_tolerance(low: torch.Tensor, high: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """tol_n = max(1024 eps(acc), 4 eps(dtype)) * max(|low_n|, |high_n|), acc = float64 for
    float64 activations, else float32 (their accumulation precision): how far outside
    [low_n, high_n] rounding noise can move a neuron value (see the module docstring)."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    rtol = max(_ACC_ULPS * torch.finfo(acc).eps, _OWN_ULPS * torch.finfo(dtype).eps)
    return rtol * torch.maximum(low.abs(), high.abs())


def _settle_corners(layer: "_Layer", act: torch.Tensor, outside: torch.Tensor, k: int) -> None:
    """Corner flags of the neurons the op found outside their range (``outside``, (M,) bool)
    by the tolerant rule: phi > high + tol -> upper, phi < low - tol -> lower; within tol of
    a bound -> that bound's section (k - 1 at high, 0 at low or when high == low)."""
    idx = outside.nonzero().squeeze(1)
    if idx.numel() == 0:
        return
    v = act[:, idx].to(torch.float64).mean(-1)
    low, high = layer.vmin[idx], layer.vmax[idx]
    tol = corner_tolerance(low, high, act.dtype)
    states = layer.states
    states["upper"][idx] |= (v > high + tol).any(0)
    states["lower"][idx] |= (v < low - tol).any(0)
    top = torch.where(high > low, k - 1, 0)
    states["sections"][idx, top] |= ((v > high) & (v <= high + tol)).any(0)
    states["sections"][idx, 0] |= ((v < low) & (v >= low - tol)).any(0)


def _label(name: str, call: int, n_calls: int) -> str:
    return name if n_calls == 1 else f"{name}#{call}"


class NeuronCoverage:
    """Neuron coverage (NC, KMNC, NBC, SNAC, TKNC, TKNP) of a model over whole data sets.

    ``layers``: None (every Conv/Linear module), module names as in ``named_modules()``
    (dotted; nested models work) or module types, see
    :func:`robustx.modelutil.resolve_layers`. ``neuron``: "channel" (mean of a neuron's
    elements, e.g. a conv channel's spatial mean) or "element"; ``axis`` overrides the
    neuron axis of :mod:`robustx.neurons`. ``position``: "post" (default, as DeepXplore
    and DeepGauge: the output of the activation module the layer feeds, through
    normalisation; the layer's own output where no activation follows) or "pre" (the
    module's own output; see the module docstring). NaN or infinite activations raise a
    ValueError naming the layer (they would otherwise enter the top-k sets silently).
    ``sections``: KMNC's k; ``top_k``: neurons per layer of TKNC / TKNP; ``threshold``:
    NC's t on the per-input [0, 1] scaling. ``batch_size`` chunks the tensors passed in;
    ``progress`` shows a progress bar over the batches.

    Usage: ``cov.profile(train_x)`` once (or :meth:`load_state_dict` of a saved
    profile), then ``cov.assess(test_loader)`` -> :class:`CoverageResult`. KMNC, NBC and
    SNAC need the profile: counting without one reports them as None (with a warning),
    and the profile cannot change once inputs were counted (call :meth:`reset` first).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: LayerSpec = None,
        *,
        neuron: str = "channel",
        position: str = "post",
        axis: AxisSpec = None,
        sections: int = 10,
        top_k: int = 2,
        threshold: float = 0.5,
        batch_size: int = 256,
        progress: bool = True,
    ):
        checks.model(model)
        if neuron not in _NEURONS:
            raise ValueError(f"neuron must be one of {_NEURONS}, got {neuron!r}")
        if position not in _POSITIONS:
            raise ValueError(f"position must be one of {_POSITIONS}, got {position!r}")
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
            raise TypeError(f"threshold must be a finite number, got {threshold!r}")
        if not math.isfinite(threshold):
            raise ValueError(f"threshold must be a finite number, got {threshold!r}")
        self.model = model
        self.modules = resolve_layers(model, layers)
        self.axes = neuron_axes(self.modules, axis)
        self.neuron, self.position = neuron, position
        self.sections = checks.integer(sections, "sections")
        self.top_k = checks.integer(top_k, "top_k")
        self.threshold = float(threshold)
        self.batch_size, self.progress = checks.integer(batch_size, "batch_size"), progress
        self.device = model_device(model)
        self._layers: Optional[List[_Layer]] = None
        self._verified = False  # layers checked against a forward pass of this model
        self._topk: Dict[str, torch.Tensor] = {}
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self, profile: bool = False) -> "NeuronCoverage":
        """Forget every counted input (bitmaps, patterns); ``profile=True`` also the profile."""
        self.n_inputs = 0
        self.patterns: set = set()
        self._scratch: Dict[str, tuple] = {}
        for layer in self._layers or ():
            layer.reset_states(self.sections)
            if profile:
                layer.reset_profile()
        return self

    @property
    def profiled(self) -> bool:
        """True once a profile was computed or loaded (KMNC, NBC, SNAC can be counted)."""
        return self._layers is not None and all(layer.moments.n > 0 for layer in self._layers)

    @property
    def layer_names(self) -> List[str]:
        """Names of the neuron layers, in forward order (known after the first batch)."""
        return [layer.name for layer in self._layers or ()]

    # -------------------------------------------------------------- discovery
    def _discover(self, x: torch.Tensor) -> List[tuple]:
        """One forward pass: (name, source, label, shape, axis) of each layer, in execution order."""
        selected = {id(m) for m in self.modules.values()}
        watch = dict(self.modules)
        if self.position == "post":
            followers = _PASSTHROUGH + _ACTIVATIONS
            watch.update({n: m for n, m in self.model.named_modules() if isinstance(m, followers)})
        order: List[Tuple[str, int]] = []  # calls of selected modules
        shapes: Dict[Tuple[str, int], torch.Size] = {}
        post: Dict[Tuple[str, int], Tuple[str, int]] = {}
        flow: Dict[int, List[Tuple[str, int]]] = {}  # id(tensor) -> layers whose values it carries
        alive: List[torch.Tensor] = []  # keeps the tensors alive so that their ids stay unique

        def trace(name: str, call: int, inputs: tuple, out: torch.Tensor) -> None:
            key, module = (name, call), watch[name]
            alive.append(out)
            shapes[key] = out.shape[1:]
            first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            upstream = flow.get(id(first), []) if first is not None else []
            if isinstance(module, _ACTIVATIONS):
                for layer in upstream:
                    post.setdefault(layer, key)
            if id(module) in selected:
                order.append(key)
                if isinstance(module, _ACTIVATIONS):
                    post[key] = key
                flow.setdefault(id(out), []).append(key)
            elif isinstance(module, _PASSTHROUGH) and upstream:
                flow.setdefault(id(out), []).extend(upstream)

        with LayerOutputs(watch, consume=trace) as rec:
            self.model(x)
        missing = [n for n in self.modules if n not in rec.calls]
        if missing:
            raise ValueError(f"layers: module(s) {missing} are not called by the model's forward pass")
        specs = []
        for key in order:
            src = post.get(key, key) if self.position == "post" else key
            label = _label(*src, rec.calls[src[0]])
            specs.append((_label(*key, rec.calls[key[0]]), src, label, tuple(shapes[src]), self.axes[key[0]]))
        return specs

    def _prepare(self, x: torch.Tensor) -> None:
        """Find the layers on the first batch, or check loaded layers against the model."""
        specs = self._discover(x[:1])
        if self._layers is None:
            self._layers = [_Layer(*spec, self.neuron, self.sections, self.device) for spec in specs]
        else:
            have = [layer.spec for layer in self._layers]
            if have != specs:
                raise ValueError(
                    "the loaded / merged coverage state does not match this model's layers: state has "
                    f"{[(h[0], h[3], h[4]) for h in have]}, the model gives {[(s[0], s[3], s[4]) for s in specs]}"
                )
        self._verified = True

    # ------------------------------------------------------------ forward runs
    def _batches(self, data, name: str) -> Iterator[torch.Tensor]:
        if isinstance(data, torch.Tensor):
            checks.images(data, name)
            items: Iterable = (data,)
        elif isinstance(data, Iterable):
            items = data
        else:
            raise TypeError(
                f"{name} must be a tensor (N, ...) or an iterable of batches (e.g. a DataLoader), "
                f"got {type(data).__name__}"
            )
        for item in items:
            x = item[0] if isinstance(item, (tuple, list)) else item
            if x is not data:
                checks.images(x, name)
            for s in chunks(x.shape[0], self.batch_size):
                yield x[s]

    def _total(self, data) -> Optional[int]:
        if isinstance(data, torch.Tensor):
            return -(-data.shape[0] // self.batch_size)
        return len(data) if hasattr(data, "__len__") else None

    def _run(self, data, name: str, consume, after_batch, desc: str) -> None:
        """Forward every batch of ``data``; each layer's output goes to ``consume(layer, output)``."""
        rec: Optional[LayerOutputs] = None
        with frozen_eval(self.model), torch.no_grad(), contextlib.ExitStack() as hooks:
            try:
                for x in progress_bar(self._batches(data, name), self.progress, desc, self._total(data)):
                    if x.shape[0] == 0:
                        continue
                    x = x.to(self.device)
                    if not self._verified:
                        self._prepare(x)
                    if rec is None:  # the layers are known after the first batch
                        rec = hooks.enter_context(self._recorder(consume))
                    rec.clear()
                    self.model(x)
                    after_batch(x.shape[0])
            finally:
                self._topk = {}

    def _recorder(self, consume) -> LayerOutputs:
        """Hooks on the source modules, handing each call's output to its layers."""
        named = dict(self.model.named_modules())
        by_source: Dict[str, Dict[int, List[_Layer]]] = {}
        for layer in self._layers:
            by_source.setdefault(layer.source[0], {}).setdefault(layer.source[1], []).append(layer)

        def route(name: str, call: int, _inputs: tuple, out: torch.Tensor) -> None:
            for layer in by_source[name].get(call, ()):
                if out.shape[1:] != layer.shape:
                    raise ValueError(
                        f"layer {layer.name!r}: output shape changed from {tuple(layer.shape)} to "
                        f"{tuple(out.shape[1:])}; coverage needs the same neurons for every input"
                    )
                consume(layer, out)

        return LayerOutputs({n: named[n] for n in by_source}, consume=route)

    # --------------------------------------------------------------- profiling
    def profile(self, data) -> "NeuronCoverage":
        """Stream ``data`` (a tensor (N, ...), or an iterable of tensors or (x, y) batches)
        and accumulate each neuron's min, max, mean and std in float64
        (:class:`robustx.neurons.RunningMoments`). Calling it again adds more data to the
        same profile."""
        if self.n_inputs:
            raise RuntimeError(
                "profile() after inputs were counted would move the KMNC/NBC/SNAC bounds midway: call reset() first"
            )
        self._run(data, "data", self._profile_layer, lambda n: None, "coverage profile")
        return self

    def _profile_layer(self, layer: _Layer, out: torch.Tensor) -> None:
        v = layer.activations(out).to(torch.float64).mean(-1)
        layer.moments.update(v)
        torch.minimum(layer.vmin, v.amin(0), out=layer.vmin)
        torch.maximum(layer.vmax, v.amax(0), out=layer.vmax)

    def profile_stats(self) -> Dict[str, Dict[str, torch.Tensor]]:
        """Per layer: "low", "high", "mean", "std" (population std, ddof 0), float64 (M,)."""
        if not self.profiled:
            raise RuntimeError("no profile yet: call profile() or load_state_dict() first")
        return {
            l.name: {"low": l.vmin, "high": l.vmax, "mean": l.moments.mean, "std": l.moments.variance().sqrt()}
            for l in self._layers
        }

    # ----------------------------------------------------------------- counting
    def update(self, x: torch.Tensor) -> "NeuronCoverage":
        """Count a tensor of inputs (N, ...), chunked by ``batch_size``."""
        checks.floating_tensor(x, "x")
        self._run(x, "x", self._count_layer, self._record_patterns, "coverage")
        return self

    def assess(self, data) -> CoverageResult:
        """Count every batch of ``data`` (a tensor, a DataLoader, an iterable of tensors
        or (x, y) pairs) and return :meth:`result`."""
        self._run(data, "data", self._count_layer, self._record_patterns, "coverage")
        return self.result()

    def _count_layer(self, layer: _Layer, out: torch.Tensor) -> None:
        if not layer.moments.n:
            states, low, high = self._unprofiled(layer)
            self._topk[layer.name] = ops.coverage_update(
                layer.activations(out), low, high, k=self.sections, threshold=self.threshold,
                top_k=min(self.top_k, layer.m), **states,
            )
            return
        act = layer.activations(out)
        # the op's strict corners go to fresh flags: only those neurons can be corners within tolerance
        outside = {s: torch.zeros_like(layer.states[s]) for s in ("upper", "lower")}
        self._topk[layer.name] = ops.coverage_update(
            act, layer.vmin, layer.vmax, k=self.sections, threshold=self.threshold,
            top_k=min(self.top_k, layer.m), **{**layer.states, **outside},
        )
        _settle_corners(layer, act, outside["upper"] | outside["lower"], self.sections)

    def _unprofiled(self, layer: _Layer) -> tuple:
        """Without a profile: the real NC / top-k bitmaps, throw-away section and corner ones."""
        if layer.name not in self._scratch:
            states = dict(layer.new_states(self.sections), above=layer.states["above"],
                          topk_hit=layer.states["topk_hit"])
            zero = torch.zeros(layer.m, dtype=torch.float64, device=self.device)
            self._scratch[layer.name] = (states, zero, zero)
        return self._scratch[layer.name]

    def _record_patterns(self, n: int) -> None:
        """TKNP: a 128-bit digest per input of its top-k index sets (sorted), layer by layer."""
        missing = [l.name for l in self._layers if l.name not in self._topk]
        if missing:
            raise ValueError(f"layers {missing} produced no output for this batch; every layer must run every time")
        rows = torch.cat([self._topk[l.name].sort(dim=1).values for l in self._layers], dim=1).cpu().numpy()
        self._topk = {}
        self.patterns.update(hashlib.blake2b(r.tobytes(), digest_size=_DIGEST_BYTES).digest() for r in rows)
        self.n_inputs += n

    # ------------------------------------------------------------------ results
    def result(self) -> CoverageResult:
        """Metrics over every input counted so far (higher = more of the model exercised)."""
        if self._layers is None:
            raise RuntimeError("nothing counted yet: call update() or assess() first")
        profiled = self.profiled
        if not profiled:
            warnings.warn(
                "KMNC, NBC and SNAC need the neurons' profiled ranges: call profile() (or load_state_dict()) "
                "before counting; they are reported as None",
                UserWarning,
                stacklevel=2,
            )
        sums = dict.fromkeys(_STATES, 0)
        per_layer = {}
        for layer in self._layers:
            counts = {s: int(t.sum()) for s, t in layer.states.items()}
            for s in _STATES:
                sums[s] += counts[s]
            metrics = self._metrics(counts, layer.m, profiled)
            per_layer[layer.name] = LayerCoverage(**metrics, neurons=layer.m, source=layer.label)
        total = sum(layer.m for layer in self._layers)
        return CoverageResult(**self._metrics(sums, total, profiled), TKNP=len(self.patterns), inputs=self.n_inputs,
                              neurons=total, layers=per_layer)

    def _metrics(self, c: Dict[str, int], m: int, profiled: bool) -> Dict[str, Optional[float]]:
        return _fractions(c, m, profiled, self.sections)

    # ------------------------------------------------------- streamed evaluation
    def batch_state(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The coverage states of the inputs ``x`` alone, as a flat dict of tensors (the
        counts so far are reset first): "<layer>/<state>" bitmaps, "patterns" (n, 16)
        uint8 TKNP digests, "inputs", "sections" and "profiled". States of several input
        sets merge by OR of the bitmaps, concatenation of the patterns and sums of the
        counts; :func:`coverage_from_state` gives the :class:`CoverageResult`."""
        self.reset().update(x)
        digests = np.frombuffer(b"".join(sorted(self.patterns)), dtype=np.uint8).reshape(-1, _DIGEST_BYTES)
        state = {f"{l.name}/{s}": t.cpu() for l in self._layers for s, t in l.states.items()}
        state.update(patterns=torch.from_numpy(digests.copy()), inputs=torch.tensor(self.n_inputs),
                     profiled=torch.tensor(self.profiled))
        return state

    def profile_sharded(self, data: torch.Tensor, batch_size: int) -> "NeuronCoverage":
        """:meth:`profile` over the profile inputs ``data`` split across the ranks of a
        multi-process run (batches i mod world size), the bounds then reduced over the
        ranks (min, max; moments merged): the same bounds as one process profiling all."""
        from robustx.pipeline import distributed

        rank, size = distributed.world()
        mine = [data[b] for i, b in enumerate(chunks(data.shape[0], batch_size)) if i % size == rank]
        self.profile(mine or data[:1])
        if size > 1:
            distributed.all_reduce_profile(self, has_data=bool(mine))
        return self

    # ------------------------------------------------------------------ merging
    def merge(self, other: "NeuronCoverage") -> "NeuronCoverage":
        """OR ``other``'s bitmaps into this one and unite the TKNP patterns: the result
        equals one pass over both data sets. Both need the same layers, settings and profile."""
        if not isinstance(other, NeuronCoverage):
            raise TypeError(f"other must be a NeuronCoverage, got {type(other).__name__}")
        if other._layers is None:
            return self
        if self._layers is None:
            return self.load_state_dict(other.state_dict())
        for attr in ("neuron", "position", "sections", "top_k", "threshold"):
            if getattr(self, attr) != getattr(other, attr):
                raise ValueError(f"cannot merge: {attr} differs ({getattr(self, attr)!r} vs {getattr(other, attr)!r})")
        if [(l.name, l.shape, l.axis) for l in self._layers] != [(l.name, l.shape, l.axis) for l in other._layers]:
            raise ValueError("cannot merge: the two coverage states have different layers")
        for a, b in zip(self._layers, other._layers):
            same = a.moments.n == 0 and b.moments.n == 0 or (
                a.moments.n > 0 and b.moments.n > 0
                and torch.equal(a.vmin, b.vmin.to(a.device)) and torch.equal(a.vmax, b.vmax.to(a.device))
            )
            if not same:
                raise ValueError(f"cannot merge: layer {a.name!r} has different profiles in the two states")
        for a, b in zip(self._layers, other._layers):
            for s, t in a.states.items():
                t |= b.states[s].to(t.device)
        self.patterns |= other.patterns
        self.n_inputs += other.n_inputs
        return self

    # ------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        """Layers, profile and coverage states as tensors, ints and strings
        (``torch.save``-able; ``torch.load(..., weights_only=True)`` reads it back)."""
        if self._layers is None:
            raise RuntimeError("nothing to save yet: profile() or count some inputs first")
        profile = None
        if self.profiled:
            profile = {
                l.name: {"count": l.moments.n, "min": l.vmin.cpu(), "max": l.vmax.cpu(),
                         "mean": l.moments.mean.cpu(), "m2": l.moments.m2.cpu()}
                for l in self._layers
            }
        digests = np.frombuffer(b"".join(sorted(self.patterns)), dtype=np.uint8).reshape(-1, _DIGEST_BYTES)
        return {
            "config": {
                "neuron": self.neuron, "position": self.position, "sections": self.sections, "top_k": self.top_k,
                "threshold": self.threshold,
                "layers": [
                    {"name": l.name, "source": list(l.source), "label": l.label, "shape": list(l.shape),
                     "axis": l.axis}
                    for l in self._layers
                ],
            },
            "profile": profile,
            "coverage": {
                "inputs": self.n_inputs,
                "states": {l.name: {s: t.cpu() for s, t in l.states.items()} for l in self._layers},
                "patterns": torch.from_numpy(digests.copy()),
            },
        }

    def load_state_dict(self, state: dict, coverage: bool = True) -> "NeuronCoverage":
        """Load a :meth:`state_dict`: the layers and profile, and with ``coverage=True``
        the counted states too (then sections, top_k and threshold must match). The
        layers are checked against the model on the next forward pass."""
        if not isinstance(state, dict) or not {"config", "profile", "coverage"} <= set(state):
            raise ValueError("state must be a dict returned by NeuronCoverage.state_dict()")
        cfg = state["config"]
        for attr in ("neuron", "position") + (("sections", "top_k", "threshold") if coverage else ()):
            if cfg[attr] != getattr(self, attr):
                raise ValueError(
                    f"state was saved with {attr}={cfg[attr]!r}, this object has {attr}={getattr(self, attr)!r}"
                )
        named = dict(self.model.named_modules())
        unknown = [spec["source"][0] for spec in cfg["layers"] if spec["source"][0] not in named]
        if unknown:
            raise ValueError(f"state: modules {unknown} do not exist in the model")
        self._layers = [
            _Layer(s["name"], tuple(s["source"]), s["label"], tuple(s["shape"]), s["axis"], self.neuron,
                   self.sections, self.device)
            for s in cfg["layers"]
        ]
        self._verified = False
        self.reset()
        for layer in self._layers:
            p = (state["profile"] or {}).get(layer.name)
            if p is not None:
                f64 = dict(device=self.device, dtype=torch.float64)
                layer.moments = RunningMoments(int(p["count"]), p["mean"].to(**f64).clone(), p["m2"].to(**f64).clone())
                layer.vmin, layer.vmax = p["min"].to(**f64).clone(), p["max"].to(**f64).clone()
        if coverage:
            cov = state["coverage"]
            for layer in self._layers:
                for s, t in layer.states.items():
                    t.copy_(cov["states"][layer.name][s])
            self.n_inputs = int(cov["inputs"])
            self.patterns = {bytes(row) for row in cov["patterns"].numpy()}
        return self


def _fractions(c: Dict[str, int], m: int, profiled: bool, sections: int) -> Dict[str, Optional[float]]:
    """NC = |above| / m; KMNC = |sections hit| / (sections m); NBC = (|upper| + |lower|) / (2 m);
    SNAC = |upper| / m; TKNC = |topk_hit| / m (KMNC, NBC, SNAC None without a profile)."""
    out = {"NC": c["above"] / m, "KMNC": None, "NBC": None, "SNAC": None, "TKNC": c["topk_hit"] / m}
    if profiled:
        out.update(KMNC=c["sections"] / (sections * m), NBC=(c["upper"] + c["lower"]) / (2 * m), SNAC=c["upper"] / m)
    return out


def coverage_from_state(state: Dict[str, torch.Tensor], settings: Dict) -> CoverageResult:
    """The :class:`CoverageResult` of a merged :meth:`NeuronCoverage.batch_state` (layer
    sources are reported by name)."""
    sections = int(settings.get("sections", 10))
    profiled = bool(state["profiled"].all())
    layers = list(dict.fromkeys(k.rsplit("/", 1)[0] for k in state if "/" in k))
    sums, per_layer, total = dict.fromkeys(_STATES, 0), {}, 0
    for name in layers:
        counts = {s: int(state[f"{name}/{s}"].sum()) for s in _STATES}
        m = state[f"{name}/above"].numel()
        for s in _STATES:
            sums[s] += counts[s]
        per_layer[name] = LayerCoverage(**_fractions(counts, m, profiled, sections), neurons=m, source=name)
        total += m
    patterns = {bytes(row) for row in state["patterns"].numpy()}
    return CoverageResult(**_fractions(sums, total, profiled, sections), TKNP=len(patterns),
                          inputs=int(state["inputs"].sum()), neurons=total, layers=per_layer)
