"""AutoAttack (Croce & Hein, ICML 2020), the field's reference attack, through its authors'
code as packaged on PyPI (``pyautoattack``, the package RobustBench depends on; install it
with ``pip install pyautoattack`` or ``robustx[autoattack]``).

The standard version runs APGD-CE, APGD-T (9 target classes), FAB-T and Square (5000
queries) one after the other, each on the inputs no earlier attack fooled; an input's
example is the first one that fools the model. Robust accuracy on these examples is the
number RobustBench leaderboards report (higher = more robust).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from robustx import checks

__all__ = ["autoattack", "VERSIONS"]

VERSIONS = ("standard", "plus", "rand", "custom")
_NORM_NAMES = {1.0: "L1", 2.0: "L2", float("inf"): "Linf"}


class _UnitBox(nn.Module):
    """``model(lo + scale * u)``: the model seen from the unit box [0, 1], where AutoAttack works."""

    def __init__(self, model: nn.Module, lo: float, scale: float) -> None:
        super().__init__()
        self.model, self.lo, self.scale = model, lo, scale

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.model(self.lo + self.scale * u)


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 8 / 255, *, norm="inf",
               version: str = "standard", seed: int = 0, attacks: Optional[Sequence[str]] = None,
               clip_values: Tuple[float, float] = (0.0, 1.0), batch_size: int = 256) -> torch.Tensor:
    """AutoAttack's adversarial examples x' with ||x' - x||_norm <= ``eps`` inside
    ``clip_values``: per input, the first example of the version's attacks that fools the
    model, else x itself.

    ``norm``: "inf", 2 or 1; ``version``: "standard" (APGD-CE, APGD-T, FAB-T, Square: the
    RobustBench protocol), "plus" (adds APGD-DLR, FAB and more restarts), "rand" (APGD-CE and
    APGD-DLR with 20 EOT samples, for randomised defences) or "custom" with ``attacks`` (a
    subset of "apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square"). ``seed`` seeds every
    attack (the global torch RNG is restored afterwards). Data in [lo, hi] is mapped to [0, 1]
    for AutoAttack (eps / (hi - lo) there), which is exact for every Lp norm.
    """
    try:
        from pyautoattack import AutoAttack
    except ImportError as err:
        raise ImportError("attack 'autoattack' needs the pyautoattack package (AutoAttack's authors' code): "
                          "pip install pyautoattack==0.2.0, or robustx[autoattack]") from err
    checks.model(model)
    eps = checks.positive_float(eps, "eps")
    p = checks.norm(norm)
    checks.choice(version, "version", VERSIONS)
    if (attacks is not None) != (version == "custom"):
        raise ValueError("attacks (a list of AutoAttack's attacks) goes with version='custom' and only with it")
    clip = checks.clip_range(clip_values)
    if clip is None:
        raise ValueError("clip_values must be a pair (lo, hi): AutoAttack works in a bounded data domain")
    lo, hi = clip
    scale = hi - lo
    seed = checks.seed(seed)
    batch_size = checks.integer(batch_size, "batch_size")
    adversary = AutoAttack(_UnitBox(model, lo, scale), norm=_NORM_NAMES[p], eps=eps / scale, version=version,
                           seed=seed, device=x.device, attacks=list(attacks) if attacks is not None else None)
    u = ((x - lo) / scale).clamp(0.0, 1.0)
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # AutoAttack seeds the global generators
        u_adv, _ = adversary.run_standard_evaluation(u, y, batch_size=batch_size)
    x_adv = torch.where(u_adv == u, x, (lo + scale * u_adv).clamp(lo, hi))
    return x_adv.to(dtype=x.dtype)
