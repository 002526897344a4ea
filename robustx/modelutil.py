"""Helpers every method shares: model hygiene, layer selection and hooks, chunking, progress bars.

The library treats a user's model as borrowed: :func:`frozen_eval` puts it in eval mode
with parameters frozen (so no ``.grad`` is ever accumulated into them) and restores
both afterwards, whatever happens inside.
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from robustx import checks


@contextlib.contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and ``requires_grad=False`` on every parameter; both restored on exit."""
    checks.model(model)
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


def activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors one forward pass on ``x`` (gradients recorded, as attacks and
    CLEVER take them) saves for backward, each storage counted once, plus its output."""
    seen = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[(storage.device, storage.data_ptr())] = storage.nbytes()
        return t

    with frozen_eval(model), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x.detach().clone().requires_grad_(True))
    return sum(seen.values()) + out.numel() * out.element_size()


def input_bytes(model: nn.Module, x1: torch.Tensor) -> int:
    """The activation memory one more input like ``x1`` (a batch of one) costs a
    forward-backward pass: :func:`activation_bytes` of two such inputs minus that of one
    (at least 1). Lower = more inputs per pass."""
    two = x1.expand(2, *x1.shape[1:])
    return max(activation_bytes(model, two) - activation_bytes(model, x1), 1)


def memory_budget(device: torch.device, cpu_bytes: int) -> int:
    """Bytes a pass may take: a quarter of the free memory of a CUDA device, else ``cpu_bytes``."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 4
    return cpu_bytes


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a parameter-free model)."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` covering range(n)."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def progress_bar(iterable: Iterable, enabled: bool, desc: str, total: Optional[int] = None, unit: str = "it",
                 unit_scale: float = 1):
    """A tqdm progress bar over ``iterable`` when ``enabled``, else the iterable itself;
    each item counts ``unit_scale`` ``unit``s (rate and ETA in them, e.g. images per second).
    The environment variable ``ROBUSTX_NO_PROGRESS`` set to anything but "" or "0" turns
    every bar off (batch jobs, logs)."""
    if not enabled or os.environ.get("ROBUSTX_NO_PROGRESS", "") not in ("", "0"):
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False, unit=unit, unit_scale=unit_scale)


LayerSpec = Union[None, str, type, Sequence[Union[str, type]]]
DEFAULT_LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def resolve_layers(model: nn.Module, layers: LayerSpec = None) -> Dict[str, nn.Module]:
    """Map dotted module names (as in ``named_modules()``) to modules, in model order.

    ``layers``: None (every Conv/Linear module), a module name, a module type, or a list
    mixing both. The model itself counts too, under the name "" (a model that is a bare
    ``nn.Linear`` is its own layer). Unknown names raise ``ValueError`` listing what exists.
    """
    named = dict(checks.model(model).named_modules())
    if layers is None:
        layers = list(DEFAULT_LAYER_TYPES)
    elif isinstance(layers, (str, type)):
        layers = [layers]
    chosen: Dict[str, nn.Module] = {}
    for spec in layers:
        if isinstance(spec, str):
            if spec not in named:
                options = ", ".join(repr(n) for n in named)
                raise ValueError(f"layers: no module named {spec!r} in the model; modules: {options}")
            chosen[spec] = named[spec]
        elif isinstance(spec, type) and issubclass(spec, nn.Module):
            chosen.update({n: m for n, m in named.items() if isinstance(m, spec)})
        else:
            raise TypeError(f"layers must hold module names (str) or nn.Module types, got {spec!r}")
    if not chosen:
        raise ValueError(f"layers={layers!r} selects no module of the model")
    return {n: chosen[n] for n in named if n in chosen}


class LayerOutputs:
    """Context manager hooking the chosen modules: the one place forward hooks are set.

    ``with LayerOutputs(names_to_modules) as rec: model(x)`` then ``rec.get(name)``: the
    output of the module's last call. With ``consume``, every call's output is instead
    handed over at once, ``consume(name, call, inputs, output)`` (``call`` counts the
    module's calls since the last :meth:`clear`), and nothing is kept. Outputs keep their
    autograd graph (detach them if not needed). ``get`` refuses an output that a later
    module changed in place (e.g. ``nn.ReLU(inplace=True)`` after a conv), which would
    otherwise silently turn the conv's output into the activation's.
    """

    def __init__(self, modules: Dict[str, nn.Module], consume: Optional[Callable] = None):
        self.modules = modules
        self.consume = consume
        self.outputs: Dict[str, torch.Tensor] = {}
        self.calls: Dict[str, int] = {}
        self._versions: Dict[str, int] = {}
        self._handles: List = []

    def _hook(self, name: str):
        def record(_module, inputs, output):
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"layers: module {name!r} returned {type(output).__name__}, not a tensor")
            call = self.calls.get(name, 0)
            self.calls[name] = call + 1
            if self.consume is not None:
                self.consume(name, call, inputs, output)
                return
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

    def clear(self) -> None:
        """Forget the recorded outputs and restart the call counts (before a new forward pass)."""
        self.outputs.clear()
        self.calls.clear()
        self._versions.clear()

    def __enter__(self) -> "LayerOutputs":
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.modules.items()]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
