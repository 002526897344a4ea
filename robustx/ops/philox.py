"""Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011)
in int64 tensor arithmetic, and the counter layout of the ball-sampling streams.

The compiled kernels use the same generator, so the reference reproduces their points
bit for bit; the Random123 known-answer vectors test it.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch

__all__ = ["philox4x32", "uniform_from_bits", "point_uniforms", "radius_uniforms", "RADIUS_BLOCK"]

MASK32 = 0xFFFFFFFF
_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
RADIUS_BLOCK = 0xFFFFFFFF  # counter word 0 of the radius draw (coordinates use blocks 0, 1, ...)


def _mulhilo32(a: int, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of the 64-bit product a*b, exact in int64 arithmetic."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    lo_part = b * a_lo  # < 2^48
    mid = b * a_hi  # < 2^48
    hi = (mid + (lo_part >> 16)) >> 16
    lo = (((mid & 0xFFFF) << 16) + lo_part) & MASK32
    return hi & MASK32, lo


def philox4x32(counter: Sequence[torch.Tensor], key: Tuple[int, int]) -> Tuple[torch.Tensor, ...]:
    """Philox4x32-10 on int64 tensors holding 32-bit words: 4 counter words, 2 key words."""
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64) & MASK32 for c in counter)
    k0, k1 = key[0] & MASK32, key[1] & MASK32
    for r in range(10):
        if r:
            k0, k1 = (k0 + _W0) & MASK32, (k1 + _W1) & MASK32
        hi0, lo0 = _mulhilo32(_M0, c0)
        hi1, lo1 = _mulhilo32(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def uniform_from_bits(bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Top 24 bits, forced odd, over 2^24: uniform in [2^-24, 1 - 2^-24], exact in float32."""
    return ((bits >> 8) | 1).to(dtype) * (2.0 ** -24)


def _stream(block: torch.Tensor, n_centers: int, sample_ids: torch.Tensor, key: Tuple[int, int]):
    """Philox words of counters (block, s_lo, s_hi, i) for center i and sample id s, shape (N, S, B)."""
    i = torch.arange(n_centers, dtype=torch.int64, device=sample_ids.device)[:, None, None]
    s = sample_ids[None, :, None]
    shape = (n_centers, sample_ids.numel(), block.shape[-1])
    return philox4x32((block.expand(shape), (s & MASK32).expand(shape), (s >> 32).expand(shape), i.expand(shape)), key)


def point_uniforms(n_centers: int, sample_ids: torch.Tensor, n_words: int, key, dtype) -> torch.Tensor:
    """Uniforms u[i, s, w] of word w of point (center i, sample s): counter (w // 4, s_lo, s_hi, i)."""
    n_blocks = (n_words + 3) // 4
    blocks = torch.arange(n_blocks, dtype=torch.int64, device=sample_ids.device)
    words = torch.stack(_stream(blocks[None, None, :], n_centers, sample_ids, key), dim=-1)
    return uniform_from_bits(words.reshape(n_centers, sample_ids.numel(), n_blocks * 4)[..., :n_words], dtype)


def radius_uniforms(n_centers: int, sample_ids: torch.Tensor, key, dtype) -> torch.Tensor:
    """Uniform U (N, S, 1) of the radius draw: word 0 of counter (RADIUS_BLOCK, s_lo, s_hi, i)."""
    block = torch.full((1, 1, 1), RADIUS_BLOCK, dtype=torch.int64, device=sample_ids.device)
    return uniform_from_bits(_stream(block, n_centers, sample_ids, key)[0], dtype)
