"""``--batch-size auto``: a batch size from the memory a model's activations take.

The model runs on 1 and on 2 inputs with gradients recorded (attacks and CLEVER
backpropagate); every tensor saved for the backward pass is counted once (by storage),
plus the output. The difference of the two totals is the memory one more input costs.
The batch size is the largest power of two whose inputs fit the budget: a quarter of the
free memory of the CUDA device, or 1 GiB on a CPU, capped at 1024. It is an estimate of
a forward-backward pass; CLEVER's sample batches (``n_samples``) are sized separately.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from robustx import checks
from robustx.modelutil import frozen_eval

__all__ = ["auto_batch_size", "activation_bytes", "memory_budget"]

CPU_BUDGET = 1 << 30
MAX_BATCH = 1024


def activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors one forward pass on ``x`` saves for backward, plus its output."""
    seen = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[(storage.device, storage.data_ptr())] = storage.nbytes()
        return t

    with frozen_eval(model), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x.detach().clone().requires_grad_(True))
    return sum(seen.values()) + out.numel() * out.element_size()


def memory_budget(device: torch.device) -> int:
    """A quarter of the free memory of a CUDA device; 1 GiB elsewhere."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 4
    return CPU_BUDGET


def auto_batch_size(model: nn.Module, sample: torch.Tensor, device=None, budget: Optional[int] = None,
                    maximum: int = MAX_BATCH) -> int:
    """The largest power of two (1 to ``maximum``) of inputs like ``sample[0]`` whose
    activations fit ``budget`` bytes (default :func:`memory_budget` of ``device``)."""
    checks.model(model)
    sample = checks.images(sample, "sample")
    dev = checks.device(device, model)
    budget = checks.integer(budget, "budget") if budget is not None else memory_budget(dev)
    maximum = checks.integer(maximum, "maximum")
    one = sample[:1].to(dev)
    per_input = max(activation_bytes(model, torch.cat([one, one])) - activation_bytes(model, one), 1)
    size = 1
    while size * 2 <= maximum and size * 2 * per_input <= budget:
        size *= 2
    return size
