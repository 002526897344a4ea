"""``--batch-size auto``: a batch size from the memory a model's activations take.

The memory one more input costs is :func:`robustx.modelutil.input_bytes`, the probe CLEVER
sizes its passes with: the model runs on 1 and on 2 inputs with gradients recorded;
every tensor saved for the backward pass is counted once (by storage), plus the output.
The batch size is the largest power of two whose inputs fit the budget: a quarter of the
free memory of the CUDA device, or 1 GiB on a CPU, capped at 1024. It is an estimate of
a forward-backward pass; CLEVER's sample batches (``n_samples``) are sized separately.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from robustx import checks
from robustx.modelutil import input_bytes, memory_budget

__all__ = ["auto_batch_size"]

CPU_BUDGET = 1 << 30
MAX_BATCH = 1024


def auto_batch_size(model: nn.Module, sample: torch.Tensor, device=None, budget: Optional[int] = None,
                    maximum: int = MAX_BATCH) -> int:
    """The largest power of two (1 to ``maximum``) of inputs like ``sample[0]`` whose
    activations fit ``budget`` bytes (default :func:`memory_budget` of ``device``, 1 GiB on a CPU)."""
    checks.model(model)
    sample = checks.images(sample, "sample")
    dev = checks.device(device, model)
    budget = checks.integer(budget, "budget") if budget is not None else memory_budget(dev, CPU_BUDGET)
    maximum = checks.integer(maximum, "maximum")
    per_input = input_bytes(model, sample[:1].to(dev))
    size = 1
    while size * 2 <= maximum and size * 2 * per_input <= budget:
        size *= 2
    return size
