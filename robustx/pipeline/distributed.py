"""Scale-out with torch.distributed (``torchrun``): the building blocks evaluate uses, public
for users who write their own loops.

* :func:`world` - (rank, world size); (0, 1) without an initialised process group.
* :func:`init_from_env` - start the process group that ``torchrun`` describes in the
  environment (NCCL on GPUs, gloo on CPU); it is destroyed when the process exits.
* :func:`owned` - the fixed sharding: unit i belongs to rank i mod world size.
* :func:`gather_in_order` - every rank's {index: result} merged on all ranks, so results
  come back in input order whatever rank made them.
* :func:`all_gather` - every rank's value (any picklable object), in rank order.
* :func:`all_reduce_moments` - running moments merged exactly (Chan et al.'s parallel
  mean / variance update, in rank order).
* Coverage merges itself: :meth:`robustx.coverage.NeuronCoverage.all_reduce`.
* :func:`agree` - refuse to go on when the ranks were given different settings.
"""
from __future__ import annotations

import atexit
import os
from typing import Any, Dict, List, Tuple, TypeVar

import torch
import torch.distributed as dist

__all__ = ["world", "init_from_env", "owned", "gather_in_order", "all_gather", "all_reduce_moments", "agree"]

T = TypeVar("T")


def world() -> Tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env() -> bool:
    """Initialise the default process group from torchrun's environment (WORLD_SIZE > 1):
    NCCL with one GPU per local rank when CUDA is available, else gloo. True if it did.

    The group is destroyed at interpreter exit (success or error): a gloo group left to the
    interpreter's teardown can abort a finished process ("terminate called without an
    active exception", SIGABRT), so torchrun would report a good run as failed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    atexit.register(_destroy)
    return True


def _destroy() -> None:
    """Destroy the default process group unless the user already did."""
    if dist.is_initialized():
        dist.destroy_process_group()


def owned(n_units: int) -> List[int]:
    """The units of this rank in the fixed order: i = rank, rank + world, ..."""
    rank, size = world()
    return list(range(rank, n_units, size))


def gather_in_order(parts: Dict[int, T]) -> Dict[int, T]:
    """Every rank's ``{index: result}`` merged and sorted by index, on every rank."""
    size = world()[1]
    if size == 1:
        return dict(sorted(parts.items()))
    merged: Dict[int, T] = {}
    for part in all_gather({i: _to_cpu(v) for i, v in parts.items()}):
        merged.update(part)
    return dict(sorted(merged.items()))


def all_gather(value) -> List[Any]:
    """Every rank's ``value`` (any picklable object), in rank order, on every rank."""
    values: List[Any] = [None] * world()[1]
    dist.all_gather_object(values, value)
    return values


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    return value


def all_reduce_moments(moments) -> None:
    """Merge every rank's :class:`robustx.neurons.RunningMoments` (in place, on every rank):
    n, mean and M2 of all the ranks' values together, folded in rank order."""
    from robustx.neurons import RunningMoments

    size = world()[1]
    if size == 1:
        return
    total = RunningMoments()
    for n, mean, m2 in all_gather((moments.n, _to_cpu(moments.mean), _to_cpu(moments.m2))):
        total.merge(RunningMoments(n, mean, m2))
    moments.n, moments.mean, moments.m2 = total.n, total.mean, total.m2


def agree(value: str, what: str) -> None:
    """ValueError unless every rank passes the same ``value`` (e.g. the run id)."""
    size = world()[1]
    if size == 1:
        return
    values = all_gather(value)
    if len(set(values)) > 1:
        raise ValueError(f"the ranks disagree on {what}: every process must get the same model, data and "
                         f"settings ({len(set(values))} different values over {size} ranks)")
