"""Tests of the per-class gradient dual-norm + per-batch maximum operator: compiled op vs
reference, an independent float64 NumPy computation, NaN propagation, bad input."""
import math

import numpy as np
import pytest
import torch

from robustx import ops


QS = [1.0, 2.0, math.inf]
FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _case(m, s, k, d, t, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    jac = torch.randn(m, s, k, d, generator=gen, dtype=torch.float64).to(dtype)
    targets = torch.stack([torch.randperm(k, generator=gen)[:t] for _ in range(m)])
    source = torch.randint(0, k, (m,), generator=gen)
    return jac, source, targets


def _numpy_norms(jac, source, targets, q):
    """||jac[m, s, source[m]] - jac[m, s, targets[m, t]]||_q by explicit loops in float64: (M, T, S)."""
    g = jac.double().numpy()
    m_count, s_count = g.shape[:2]
    out = np.empty((m_count, targets.shape[1], s_count))
    for m in range(m_count):
        for t, row in enumerate(targets[m].tolist()):
            for s in range(s_count):
                v = g[m, s, row] if source is None else g[m, s, int(source[m])] - g[m, s, row]
                out[m, t, s] = np.linalg.norm(v, ord=q)
    return out


def _tolerance(dtype):
    """Both sides accumulate in float64 in a different order, then round to float32 (or stay float64)."""
    return dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=1e-5)


# ------------------------------------------------------------ compiled vs reference
SHAPES = [(1, 8, 3, 5), (2, 12, 10, 7), (3, 4, 1, 1), (1, 16, 10, 3 * 32 * 32), (2, 6, 12, 33)]


@pytest.mark.usefixtures("requires_compiled")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("q", QS)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_compiled_matches_reference(shape, q, dtype):
    m, s, k, d = shape
    jac, source, targets = _case(m, s, k, d, t=min(k, 4), dtype=dtype)
    for batch_size in (1, s // 2, s):
        for src in (None, source):
            for return_norms in (False, True):
                args = (jac, src, targets, q, batch_size, return_norms)
                got_max, got_norms = torch.ops.robustx.grad_norm_batch_max(*args)
                want_max, want_norms = ops.grad_norm_batch_max_ref(*args)
                assert got_max.dtype == want_max.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
                assert got_max.shape == (m, targets.shape[1], s // batch_size)
                torch.testing.assert_close(got_max, want_max, **_tolerance(dtype))
                assert got_norms.shape == want_norms.shape
                torch.testing.assert_close(got_norms, want_norms, **_tolerance(dtype))


@pytest.mark.usefixtures("requires_compiled")
@pytest.mark.parametrize("q", QS)
def test_compiled_propagates_nan_like_reference(q):
    jac, source, targets = _case(2, 8, 5, 9, t=3, dtype=torch.float32)
    jac[0, 3, targets[0, 1], 4] = math.nan
    jac[1, 6, source[1], 0] = math.nan
    for src in (None, source):
        got, got_norms = torch.ops.robustx.grad_norm_batch_max(jac, src, targets, q, 4, True)
        want, want_norms = ops.grad_norm_batch_max_ref(jac, src, targets, q, 4, True)
        torch.testing.assert_close(got, want, rtol=2e-5, atol=1e-5, equal_nan=True)
        torch.testing.assert_close(got_norms, want_norms, rtol=2e-5, atol=1e-5, equal_nan=True)


@pytest.mark.usefixtures("requires_compiled")
@pytest.mark.parametrize("q", QS)
def test_opcheck(q):
    jac, source, targets = _case(2, 6, 4, 10, t=3, dtype=torch.float32)
    cases = [(jac, None, False), (jac, source, True)]
    if q == 2.0:
        cases += [(jac.double(), source, False), (jac.half(), None, True)]
    for j, src, return_norms in cases:
        torch.library.opcheck(torch.ops.robustx.grad_norm_batch_max.default, (j, src, targets, q, 3, return_norms))


# --------------------------------------------------- wrapper vs independent NumPy
@pytest.mark.parametrize("q", [1, 2, "inf"])
@pytest.mark.parametrize("with_source", [False, True])
def test_matches_numpy_loops(backend, q, with_source):
    jac, source, targets = _case(2, 12, 6, 17, t=4, dtype=torch.float64, seed=1)
    source = source if with_source else None
    maxima, norms = ops.grad_norm_batch_max(jac, targets, q=q, batch_size=4, source=source, return_norms=True)
    want = _numpy_norms(jac, source, targets, ops.parse_norm(q))
    np.testing.assert_allclose(norms.numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(maxima.numpy(), want.reshape(2, 4, 3, 4).max(-1), rtol=1e-12)
    # the maxima are exactly the batch maxima of the returned norms
    assert torch.equal(maxima, norms.reshape(2, 4, 3, 4).amax(-1))
    only_max, none = ops.grad_norm_batch_max(jac, targets, q=q, batch_size=4, source=source)
    assert none is None and torch.equal(only_max, maxima)


def test_linear_model_norms_are_exact(backend):
    """For f(x) = W x the Jacobian rows are constant: ||w_c - w_j||_q for every sample."""
    w = torch.tensor([[3.0, -4.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    jac = w.expand(1, 8, 3, 3)
    targets = torch.tensor([[1, 2]])
    expected = {1.0: [8.0, 8.0], 2.0: [math.sqrt(26.0), math.sqrt(30.0)], math.inf: [4.0, 5.0]}
    for q, want in expected.items():
        maxima, _ = ops.grad_norm_batch_max(jac, targets, q=q, batch_size=2, source=torch.tensor([0]))
        torch.testing.assert_close(maxima, torch.tensor(want)[None, :, None].expand(1, 2, 4), rtol=1e-6, atol=0)
        maxima, _ = ops.grad_norm_batch_max(jac, targets, q=q, batch_size=8)
        rows = [{1.0: 1.0, 2.0: 1.0, math.inf: 1.0}[q], {1.0: 3.0, 2.0: math.sqrt(3.0), math.inf: 1.0}[q]]
        torch.testing.assert_close(maxima, torch.tensor(rows)[None, :, None], rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_inputs_accumulate_in_float32(backend, dtype):
    jac, source, targets = _case(1, 8, 4, 3 * 32 * 32, t=3, dtype=dtype, seed=2)
    maxima, norms = ops.grad_norm_batch_max(jac, targets, q=2, batch_size=4, source=source, return_norms=True)
    assert maxima.dtype == norms.dtype == torch.float32
    want = _numpy_norms(jac, source, targets, 2.0)  # the half values, exactly, in float64
    np.testing.assert_allclose(norms.numpy(), want, rtol=1e-5)


def test_norms_accumulate_in_float64_and_round_once(backend):
    """q = 1 over 500 pairs (2^24, 1): the float64 sum 500 (2^24 + 1) rounds to float32 once
    (8388608512); any float32 accumulation loses every +1 (2^24 + 1 is not a float32)."""
    row = torch.tensor([2.0 ** 24, 1.0]).repeat(500)
    jac = row.expand(1, 2, 1, 1000)
    maxima, norms = ops.grad_norm_batch_max(jac, torch.tensor([[0]]), q=1, batch_size=2, return_norms=True)
    want = torch.tensor(500 * (2.0 ** 24 + 1), dtype=torch.float64).float()
    assert want.item() == 8388608512.0
    assert torch.equal(norms, want.expand(1, 1, 2)) and torch.equal(maxima, want.expand(1, 1, 1))


def test_int32_indices_and_non_contiguous_jac(backend):
    jac, source, targets = _case(2, 8, 5, 6, t=3, dtype=torch.float32, seed=3)
    want, want_norms = ops.grad_norm_batch_max(jac, targets, q=2, batch_size=4, source=source, return_norms=True)
    strided = torch.empty(2, 8, 5, 12).copy_(jac.repeat_interleave(2, -1))[..., ::2]
    transposed = jac.transpose(0, 1).contiguous().transpose(0, 1)
    for j in (strided, transposed):
        assert not j.is_contiguous()
        got, got_norms = ops.grad_norm_batch_max(
            j, targets.int(), q=2, batch_size=4, source=source.int(), return_norms=True
        )
        assert torch.equal(got, want) and torch.equal(got_norms, want_norms)


@pytest.mark.parametrize("q", QS)
def test_nan_gradient_gives_nan_maximum(backend, q):
    jac, _, _ = _case(1, 8, 4, 5, t=3, dtype=torch.float32, seed=4)
    source, targets = torch.tensor([1]), torch.tensor([[3, 0, 2]])
    jac[0, 5, 2, 1] = math.nan  # sample 5 is in batch 1 of 2
    maxima, _ = ops.grad_norm_batch_max(jac, targets, q=q, batch_size=4)
    assert torch.isnan(maxima[0, 2, 1]) and torch.isnan(maxima).sum() == 1
    maxima, _ = ops.grad_norm_batch_max(jac, targets, q=q, batch_size=4, source=source)
    assert torch.isnan(maxima[0, 2, 1]) and torch.isnan(maxima).sum() == 1
    jac[0, 1, 1, 0] = math.nan  # the source row of sample 1 (batch 0): every target
    maxima, _ = ops.grad_norm_batch_max(jac, targets, q=q, batch_size=4, source=source)
    assert torch.isnan(maxima[0, :, 0]).all()


def test_empty_inputs_give_empty_results(backend):
    targets = torch.zeros(1, 2, dtype=torch.int64)
    maxima, norms = ops.grad_norm_batch_max(torch.rand(1, 0, 3, 4), targets, q=2, batch_size=4, return_norms=True)
    assert maxima.shape == (1, 2, 0) and norms.shape == (1, 2, 0)
    maxima, _ = ops.grad_norm_batch_max(torch.rand(0, 4, 3, 4), targets[:0], q=1, batch_size=2)
    assert maxima.shape == (0, 2, 2)
    maxima, _ = ops.grad_norm_batch_max(torch.rand(1, 4, 3, 4), targets[:, :0], q="inf", batch_size=2)
    assert maxima.shape == (1, 0, 2)


@pytest.mark.parametrize("q", QS)
def test_zero_dimensional_gradients(backend, q):
    """D = 0 (a model without input coordinates): a ValueError naming jac, on both backends."""
    with pytest.raises(ValueError, match=r"jac must have at least one gradient coordinate \(D >= 1\)"):
        ops.grad_norm_batch_max(torch.rand(1, 4, 3, 0), torch.tensor([[1]]), q=q, batch_size=2)


# ------------------------------------------------------------------- bad input
def test_rejects_bad_input():
    jac, source, targets = _case(2, 8, 5, 6, t=3, dtype=torch.float32)
    call = ops.grad_norm_batch_max
    with pytest.raises(ValueError, match="batch_size"):
        call(jac, targets, q=2, batch_size=3)  # S = 8 is not a multiple of 3
    for bad, exc in ((0, ValueError), (-4, ValueError), (2.0, TypeError), (None, TypeError)):
        with pytest.raises(exc, match="batch_size"):
            call(jac, targets, q=2, batch_size=bad)
    for q in (3, 0, "l3", 0.5):
        with pytest.raises(ValueError, match="q"):
            call(jac, targets, q=q, batch_size=4)
    for bad_targets in (targets + 5, targets - 3):
        with pytest.raises(ValueError, match="targets"):
            call(jac, bad_targets, q=2, batch_size=4)
    for bad_source in (torch.tensor([0, 5]), torch.tensor([-1, 0])):
        with pytest.raises(ValueError, match="source"):
            call(jac, targets, q=2, batch_size=4, source=bad_source)
    with pytest.raises(ValueError, match="jac"):
        call(jac[0], targets, q=2, batch_size=4)  # 3 dims
    with pytest.raises(ValueError, match="jac"):
        call(jac[None], targets, q=2, batch_size=4)  # 5 dims
    with pytest.raises(ValueError, match="targets"):
        call(jac, targets[0], q=2, batch_size=4)  # 1 dim
    with pytest.raises(ValueError, match="targets"):
        call(jac, targets[:1], q=2, batch_size=4)  # M mismatch
    with pytest.raises(ValueError, match="source"):
        call(jac, targets, q=2, batch_size=4, source=source[:, None])
    with pytest.raises(TypeError, match="jac"):
        call(jac.to(torch.int32), targets, q=2, batch_size=4)
    with pytest.raises(TypeError, match="jac"):
        call(jac.numpy(), targets, q=2, batch_size=4)
    with pytest.raises(TypeError, match="targets"):
        call(jac, targets.float(), q=2, batch_size=4)
    with pytest.raises(TypeError, match="source"):
        call(jac, targets, q=2, batch_size=4, source=source.float())
