"""``grad_norm_batch_max``: dual norms of per-class gradients, reduced to the maximum over
each batch of samples in one pass (the inner loop of CLEVER)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from robustx import checks
from robustx.geometry import parse_norm
from robustx.ops import loader

__all__ = ["grad_norm_batch_max", "grad_norm_batch_max_ref"]


def out_dtype(dtype: torch.dtype) -> torch.dtype:
    """Type of the norms and maxima: float64 for float64 gradients, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def grad_norm_batch_max_ref(
    jac: torch.Tensor,
    source: Optional[torch.Tensor],
    targets: torch.Tensor,
    q: float,
    batch_size: int,
    return_norms: bool,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reference of ``torch.ops.robustx.grad_norm_batch_max``.

    jac (M, S, K, D): gradients of K rows for S samples of M images. With ``source``
    (M,) the row of class c: g_t = jac[m, s, source[m]] - jac[m, s, targets[m, t]]; with
    ``source=None`` the rows already are gradients of g: g_t = jac[m, s, targets[m, t]].
    Returns maxima (M, T, S // batch_size) of ||g_t||_q over each batch of ``batch_size``
    consecutive samples (NaN propagates), and the norms (M, T, S) if ``return_norms``
    (else an empty tensor). Differences in float32 (float64 for float64 gradients), norms
    accumulated in float64, outputs in float32 (float64 for float64).
    """
    m, s, _, d = jac.shape
    t = targets.shape[1]
    om = out_dtype(jac.dtype)
    g = jac.to(om).gather(2, targets[:, None, :, None].expand(m, s, t, d))
    if source is not None:
        g = jac.to(om).gather(2, source[:, None, None, None].expand(m, s, 1, d)) - g
    norms = torch.linalg.vector_norm(g.to(torch.float64), ord=q, dim=-1).to(om).transpose(1, 2)  # (M, T, S)
    maxima = norms.reshape(m, t, s // batch_size, batch_size).amax(-1)
    return maxima, (norms.contiguous() if return_norms else norms.new_empty(0))


def grad_norm_batch_max(
    jac: torch.Tensor,
    targets: torch.Tensor,
    *,
    q,
    batch_size: int,
    source: Optional[torch.Tensor] = None,
    return_norms: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Per-batch maxima of the q-norm of per-class gradient (differences), in one pass.

    ``jac`` (M, S, K, D) holds gradients (rows of the Jacobian, or of g = f_c - f_j) of
    K rows for S = n_batches * batch_size samples of each of M images; ``targets`` (M, T)
    picks rows; ``source`` (M,) optionally picks the row of the predicted class c, and
    then the norm is taken of jac[source] - jac[target] without materialising the
    difference. Returns ``(maxima (M, T, n_batches), norms (M, T, S) or None)``.
    For CLEVER with an Lp ball use q = dual of p (``dual_norm``). D = 0 is an error.
    Nothing here waits for the device: pass ``targets`` / ``source`` on the CPU for a
    ValueError on a row outside [0, K); on a GPU such a row is a device-side assert.
    """
    checks.floating_tensor(jac, "jac")
    q = parse_norm(q, "q")
    if jac.dim() != 4:
        raise ValueError(f"jac must have shape (M, S, K, D), got {tuple(jac.shape)}")
    m, s, k, d = jac.shape
    if d == 0:
        raise ValueError("jac must have at least one gradient coordinate (D >= 1)")
    batch_size = checks.integer(batch_size, "batch_size", 1)
    if s % batch_size:
        raise ValueError(f"the number of samples S={s} must be a multiple of batch_size={batch_size}")
    targets = _rows(targets, "targets", m, k, jac.device, dim=2)
    if source is not None:
        source = _rows(source, "source", m, k, jac.device, dim=1)
    reduce = torch.ops.robustx.grad_norm_batch_max if loader.compiled() else grad_norm_batch_max_ref
    maxima, norms = reduce(jac.contiguous(), source, targets, q, batch_size, return_norms)
    return maxima, (norms if return_norms else None)


def _rows(idx, name: str, m: int, k: int, device, dim: int) -> torch.Tensor:
    """Row indices (M,) or (M, T) into the K rows of jac, as contiguous int64 on jac's device.

    The range [0, K) is checked here for indices on the CPU (no device sync; they are copied
    to jac's device without waiting) or moved to it. Indices on a GPU for a GPU jac are
    checked by the kernel where it reads them: a device-side assert, raised at the caller's
    next sync.
    """
    if not isinstance(idx, torch.Tensor) or idx.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name} must be an integer tensor")
    if idx.dim() != dim or idx.shape[0] != m:
        raise ValueError(f"{name} must have {dim} dims with first size M={m}, got {tuple(idx.shape)}")
    from_host = idx.device.type == "cpu"
    rows = idx.to(device=device, dtype=torch.int64, non_blocking=from_host).contiguous()  # async only host -> device
    host = idx if from_host else rows
    if host.device.type == "cpu" and host.numel() and (int(host.min()) < 0 or int(host.max()) >= k):
        raise ValueError(f"{name} must index rows in [0, K={k})")
    return rows


if loader.SOURCE is not None:

    @torch.library.register_fake("robustx::grad_norm_batch_max")
    def _grad_norm_batch_max_fake(jac, source, targets, q, batch_size, return_norms):
        m, s, t = jac.shape[0], jac.shape[1], targets.shape[1]
        maxima = jac.new_empty((m, t, s // batch_size), dtype=out_dtype(jac.dtype))
        norms = jac.new_empty((m, t, s) if return_norms else (0,), dtype=out_dtype(jac.dtype))
        return maxima, norms
