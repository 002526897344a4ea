"""Helpers every method shares: model hygiene, input checks, layer selection, chunking.

The library treats a user's model as borrowed: :func:`frozen_eval` puts it in eval mode
with parameters frozen (so no ``.grad`` is ever accumulated into them) and restores
both afterwards, whatever happens inside.
"""
from __future__ import annotations

import contextlib
import math
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from tqdm.auto import tqdm


@contextlib.contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and ``requires_grad=False`` on every parameter; both restored on exit."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    modes = {m: m.training for m in model.modules()}
    flags = {p: p.requires_grad for p in model.parameters()}
    model.eval()
    for p in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for m, training in modes.items():
            m.training = training
        for p, flag in flags.items():
            p.requires_grad_(flag)


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a parameter-free model)."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def check_images(x, name: str = "x", clip_values: Optional[Tuple[float, float]] = None) -> torch.Tensor:
    """Validate a batch of inputs (N, ...): floating, finite and inside ``clip_values``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"{name} must have shape (N, ...) with a batch dimension, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if clip_values is not None:
        lo, hi = clip_values
        if x.min() < lo or x.max() > hi:
            raise ValueError(
                f"{name} has values in [{x.min().item():.4g}, {x.max().item():.4g}], outside "
                f"clip_values=({lo}, {hi})"
            )
    return x


def positive_number(value, name: str) -> float:
    """``value`` as a float, or ValueError naming ``name`` unless it is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def clip_pair(clip_values) -> Optional[Tuple[float, float]]:
    """``clip_values`` as (lo, hi) floats (None stays None); ValueError unless finite with lo < hi."""
    if clip_values is None:
        return None
    try:
        lo, hi = (float(v) for v in clip_values)
    except (TypeError, ValueError):
        raise ValueError(f"clip_values must be None or a pair of numbers (lo, hi), got {clip_values!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"clip_values must be finite with lo < hi, got {clip_values!r}")
    return lo, hi


def chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` covering range(n)."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def progress_bar(iterable: Iterable, enabled: bool, desc: str, total: Optional[int] = None):
    """A tqdm progress bar over ``iterable`` when ``enabled``, else the iterable itself."""
    return tqdm(iterable, desc=desc, total=total, leave=False) if enabled else iterable


LayerSpec = Union[None, str, type, Sequence[Union[str, type]]]
DEFAULT_LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def resolve_layers(model: nn.Module, layers: LayerSpec = None) -> Dict[str, nn.Module]:
    """Map dotted module names (as in ``named_modules()``) to modules.

    ``layers``: None (every leaf Conv/Linear module), a module name, a module type, or a
    list mixing both. Unknown names raise ``ValueError`` listing what exists.
    """
    named = dict(model.named_modules())
    if layers is None:
        layers = list(DEFAULT_LAYER_TYPES)
    elif isinstance(layers, (str, type)):
        layers = [layers]
    chosen: Dict[str, nn.Module] = {}
    for spec in layers:
        if isinstance(spec, str):
            if spec not in named or spec == "":
                options = ", ".join(n for n in named if n) or "(none)"
                raise ValueError(f"layers: no module named {spec!r} in the model; modules: {options}")
            chosen[spec] = named[spec]
        elif isinstance(spec, type) and issubclass(spec, nn.Module):
            chosen.update({n: m for n, m in named.items() if n and isinstance(m, spec)})
        else:
            raise TypeError(f"layers must hold module names (str) or nn.Module types, got {spec!r}")
    if not chosen:
        raise ValueError(f"layers={layers!r} selects no module of the model")
    return {n: chosen[n] for n in named if n in chosen}  # model order


class LayerOutputs:
    """Context manager recording the outputs of chosen modules on every forward call.

    ``with LayerOutputs(names_to_modules) as rec: model(x)`` then ``rec.get(name)``.
    Outputs keep their autograd graph (detach them if not needed). ``get`` refuses an
    output that a later module changed in place (e.g. ``nn.ReLU(inplace=True)`` after a
    conv), which would otherwise silently turn the conv's output into the activation's.
    """

    def __init__(self, modules: Dict[str, nn.Module]):
        self.modules = modules
        self.outputs: Dict[str, torch.Tensor] = {}
        self._versions: Dict[str, int] = {}
        self._handles: List = []

    def _hook(self, name: str):
        def record(_module, _inputs, output):
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"layer {name!r} returned {type(output).__name__}, not a tensor")
            self.outputs[name] = output
            self._versions[name] = output._version

        return record

    def get(self, name: str) -> torch.Tensor:
        """The recorded output of ``name``, checked for in-place modification."""
        out = self.outputs[name]
        if out._version != self._versions[name]:
            raise ValueError(
                f"layers: the output of {name!r} is modified in place by a later module "
                "(e.g. nn.ReLU(inplace=True)); choose that later module or use inplace=False"
            )
        return out

    def __enter__(self) -> "LayerOutputs":
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.modules.items()]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
