"""``coverage_update``: one pass over a layer's activations that updates every
neuron-coverage state (k-section bitmap, corner flags, threshold flags, top-k flags)."""
from __future__ import annotations

import torch

from robustx import checks
from robustx.ops import loader

__all__ = ["coverage_update", "coverage_update_ref"]


def coverage_update_ref(act, low, high, k: int, threshold: float, top_k: int,
                        sections, upper, lower, above, topk_hit) -> torch.Tensor:
    """Reference of ``torch.ops.robustx.coverage_update`` (updates the states in place).

    act (N, M, L): neuron m of input n has value v[n, m] = mean over L (accumulated in
    float64). low, high (M,) float64 profile bounds. Updates, OR-ing into the states:
    sections (M, k) bool - section floor((v - low) k / (high - low)) when low <= v <= high
                     (v == high hits section k - 1; high == low hits section 0);
    upper / lower (M,) - v > high / v < low;
    above (M,) - (v - min_n) / (max_n - min_n) > threshold, min_n / max_n over all
                 M*L raw elements of input n (DeepXplore's per-input scaling; 0 when equal);
    topk_hit (M,) - neuron among the top_k largest v of some input (ties: lower index).
    Returns the top-k indices (N, top_k) int64, in descending order of value.
    """
    n = act.shape[0]
    v = act.to(torch.float64).mean(-1)
    inside = (v >= low) & (v <= high)
    width = high - low
    idx = torch.where(width > 0, torch.floor((v - low) * k / torch.where(width > 0, width, 1.0)), 0.0)
    idx = idx.clamp(0, k - 1).to(torch.int64)
    hits = torch.zeros_like(sections)
    hits.view(-1).index_fill_(0, (idx + torch.arange(v.shape[1], device=v.device) * k)[inside], True)
    sections |= hits
    upper |= (v > high).any(0)
    lower |= (v < low).any(0)
    flat = act.reshape(n, act.shape[1] * act.shape[2]).to(torch.float64)
    lo_n, hi_n = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    span = hi_n - lo_n
    scaled = torch.where(span > 0, (v - lo_n) / torch.where(span > 0, span, 1.0), 0.0)
    above |= (scaled > threshold).any(0)
    order = torch.sort(v, dim=1, descending=True, stable=True).indices[:, :top_k]
    topk_hit.index_fill_(0, order.reshape(-1), True)
    return order


def coverage_update(
    act: torch.Tensor,
    low: torch.Tensor,
    high: torch.Tensor,
    *,
    k: int,
    threshold: float,
    top_k: int,
    sections: torch.Tensor,
    upper: torch.Tensor,
    lower: torch.Tensor,
    above: torch.Tensor,
    topk_hit: torch.Tensor,
) -> torch.Tensor:
    """Update every coverage state of one layer from its activations, in one pass.

    ``act`` (N, M, L): M neurons, each the mean of L elements (a conv channel's feature
    map: L = H*W; element-wise neurons or Linear units: L = 1). ``low``/``high`` (M,)
    float64 are the profiled bounds. The bool states ``sections`` (M, k), ``upper``,
    ``lower``, ``above``, ``topk_hit`` (M,) are OR-updated in place (see
    :func:`coverage_update_ref` for the exact rules); states merge across batches and
    processes with OR. Returns each input's top-k neuron indices (N, top_k).
    """
    checks.floating_tensor(act, "act")
    if act.dim() != 3:
        raise ValueError(f"act must have shape (N, M, L), got {tuple(act.shape)}")
    _, m, length = act.shape
    if length == 0:
        raise ValueError("act must have at least one element per neuron (L >= 1)")
    k = checks.integer(k, "k", 1)
    top_k = checks.integer(top_k, "top_k", 1, m)
    for name, t in (("low", low), ("high", high)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.float64 or t.shape != (m,):
            raise ValueError(f"{name} must be a float64 tensor of shape ({m},)")
    for name, t, shape in (
        ("sections", sections, (m, k)),
        ("upper", upper, (m,)),
        ("lower", lower, (m,)),
        ("above", above, (m,)),
        ("topk_hit", topk_hit, (m,)),
    ):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.bool or tuple(t.shape) != shape:
            raise ValueError(f"{name} must be a bool tensor of shape {shape}")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (it is updated in place)")
    update = torch.ops.robustx.coverage_update if loader.compiled() else coverage_update_ref
    return update(act.contiguous(), low.contiguous(), high.contiguous(), k, float(threshold), top_k,
                  sections, upper, lower, above, topk_hit)


if loader.SOURCE is not None:

    @torch.library.register_fake("robustx::coverage_update")
    def _coverage_update_fake(act, low, high, k, threshold, top_k, sections, upper, lower, above, topk_hit):
        return act.new_empty((act.shape[0], top_k), dtype=torch.int64)
