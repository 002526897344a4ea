"""The CUDA kernels of the three operators against the pure-PyTorch references run on CPU,
plus sampling statistics, determinism and opcheck on the GPU (skipped without CUDA)."""
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scipy import stats

from robustx import ops

CUDA = "cuda"
ROOT = Path(__file__).resolve().parents[2]
NORMS = [1.0, 2.0, math.inf]
FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
STATE_NAMES = ("sections", "upper", "lower", "above", "topk_hit")


def _close(dtype):
    """CUDA vs CPU: a few ulps of the float32/float64 math; one output ulp (values < 2) for halves."""
    if dtype == torch.float64:
        return dict(rtol=1e-10, atol=1e-12)
    if dtype == torch.float32:
        return dict(rtol=1e-5, atol=1e-6)
    return dict(rtol=0.0, atol=torch.finfo(dtype).eps * 1.01)


# ------------------------------------------------------------------- ball sampling
@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (3, 8, 8), (3, 32, 32), (3, 224, 224)], ids=str)
@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_ball_sample_matches_reference(shape, p, dtype):
    d = math.prod(shape)
    n = 2 if d > 10000 else 33
    centers = torch.rand(3, d, dtype=torch.float64).to(dtype)
    for clip_min, clip_max, seed, offset in ((None, None, 0, 0), (0.0, 1.0, 11, 5), (0.25, None, 2**32 + 7, 2**32 - 2)):
        args = (n, 0.3, p, clip_min, clip_max, seed, offset)
        got = torch.ops.robustx.ball_sample(centers.to(CUDA), *args)
        want = ops.ball_sample_ref(centers, *args)
        assert got.device.type == CUDA and got.dtype == dtype and got.shape == (3, n, d)
        torch.testing.assert_close(got.cpu(), want, **_close(dtype))
        if dtype in (torch.float16, torch.bfloat16):
            assert (got.cpu() != want).double().mean() < 0.02


@pytest.mark.parametrize("p", [1, 2, "inf"])
@pytest.mark.parametrize("d", [1, 5, 192, 3072])
def test_ball_sample_radius_law_on_gpu(p, d):
    centers = torch.rand(2, d, dtype=torch.float64, device=CUDA)
    x = ops.ball_sample(centers, 4000, 0.5, p, seed=d)
    frac = torch.linalg.vector_norm((x - centers[:, None]), ord=ops.parse_norm(p), dim=-1).flatten() / 0.5
    frac = frac.cpu().numpy()
    assert frac.max() <= 1 + 1e-12
    assert stats.kstest(frac**d, "uniform").pvalue > 1e-3
    assert stats.kstest(frac ** (2 * d), "uniform").pvalue < 1e-6


@pytest.mark.parametrize("p", NORMS)
def test_ball_sample_chunking_seeds_and_layouts_on_gpu(p):
    centers = torch.rand(4, 3, 16, 16, device=CUDA)
    whole = ops.ball_sample(centers, 12, 0.5, p, clip_values=(0, 1), seed=4)
    parts = [ops.ball_sample(centers, m, 0.5, p, clip_values=(0, 1), seed=4, offset=o) for o, m in ((0, 5), (5, 7))]
    assert torch.equal(whole, torch.cat(parts, 1))
    assert torch.equal(whole, ops.ball_sample(centers, 12, 0.5, p, clip_values=(0, 1), seed=4))
    assert (whole != ops.ball_sample(centers, 12, 0.5, p, clip_values=(0, 1), seed=5)).double().mean() > 0.9
    channels_last = centers.to(memory_format=torch.channels_last)
    assert torch.equal(ops.ball_sample(channels_last, 12, 0.5, p, clip_values=(0, 1), seed=4), whole)
    assert ((whole >= 0) & (whole <= 1)).all()
    assert ops.ball_sample(centers[:0], 3, 0.5, p).shape == (0, 3, 3, 16, 16)
    assert ops.ball_sample(centers, 0, 0.5, p).shape == (4, 0, 3, 16, 16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_ball_sample_opcheck_on_gpu(dtype):
    centers = torch.rand(2, 48, dtype=dtype, device=CUDA)
    for p in NORMS:
        torch.library.opcheck(torch.ops.robustx.ball_sample.default, (centers, 6, 0.5, p, 0.0, 1.0, 3, 9))


# ------------------------------------------------------------- gradient-norm reduction
def _jacobian_case(m, s, k, d, t, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    jac = torch.randn(m, s, k, d, generator=gen, dtype=torch.float64).to(dtype)
    targets = torch.stack([torch.randperm(k, generator=gen)[:t] for _ in range(m)])
    source = torch.randint(0, k, (m,), generator=gen)
    return jac, source, targets


def _grad_norm_both(jac, source, targets, q, batch_size, return_norms):
    cuda_args = (jac.to(CUDA), None if source is None else source.to(CUDA), targets.to(CUDA))
    got = torch.ops.robustx.grad_norm_batch_max(*cuda_args, q, batch_size, return_norms)
    want = ops.grad_norm_batch_max_ref(jac, source, targets, q, batch_size, return_norms)
    return [g.cpu() for g in got], want


@pytest.mark.parametrize(
    "shape", [(1, 8, 3, 5), (2, 12, 10, 7), (3, 4, 1, 1), (2, 1024, 10, 3 * 32 * 32), (1, 8, 1000, 3 * 64 * 64)], ids=str
)
@pytest.mark.parametrize("q", NORMS)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_grad_norm_matches_reference(shape, q, dtype):
    m, s, k, d = shape
    jac, source, targets = _jacobian_case(m, s, k, d, t=min(k, 9 if k < 1000 else 999), dtype=dtype)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=1e-5)
    for batch_size in (1, s) if m * s * k * d < 10**6 else (s // 2,):
        for src in (None, source):
            (got_max, got_norms), (want_max, want_norms) = _grad_norm_both(jac, src, targets, q, batch_size, True)
            assert got_max.dtype == want_max.dtype and got_max.shape == want_max.shape
            torch.testing.assert_close(got_max, want_max, **tol)
            torch.testing.assert_close(got_norms, want_norms, **tol)
            cuda_src = None if src is None else src.to(CUDA)
            only_max, empty = torch.ops.robustx.grad_norm_batch_max(jac.to(CUDA), cuda_src, targets.to(CUDA), q, batch_size, False)
            assert empty.numel() == 0
            torch.testing.assert_close(only_max.cpu(), want_max, **tol)


@pytest.mark.parametrize("q", NORMS)
def test_grad_norm_propagates_nan_on_gpu(q):
    jac, _, _ = _jacobian_case(2, 8, 5, 300, t=3, dtype=torch.float32)
    source, targets = torch.tensor([1, 1]), torch.tensor([[3, 0, 2], [0, 2, 4]])
    jac[0, 5, 2, 17] = math.nan  # target row 2 of image 0, batch 1
    jac[1, 1, 1, 4] = -math.nan  # source row of image 1, batch 0: every target
    jac[1, 6, 4, 9] = math.inf
    jac[1, 6, 1, 9] = math.inf  # inf - inf = NaN in batch 1 of target 4 (with source)
    for src in (None, source):
        (got, got_norms), (want, want_norms) = _grad_norm_both(jac, src, targets, q, 4, True)
        torch.testing.assert_close(got, want, rtol=2e-5, atol=1e-5, equal_nan=True)
        torch.testing.assert_close(got_norms, want_norms, rtol=2e-5, atol=1e-5, equal_nan=True)
    assert torch.isnan(got[0, 2, 1]) and torch.isnan(got[1, :, 0]).all() and torch.isnan(got[1, 2, 1])


def test_grad_norm_opcheck_on_gpu():
    jac, source, targets = _jacobian_case(2, 6, 4, 10, t=3, dtype=torch.float32)
    jac, source, targets = jac.to(CUDA), source.to(CUDA), targets.to(CUDA)
    for q in NORMS:
        for src, return_norms in ((None, False), (source, True)):
            torch.library.opcheck(torch.ops.robustx.grad_norm_batch_max.default, (jac, src, targets, q, 3, return_norms))


# ------------------------------------------------------------------ coverage counting
def _fresh_states(m, k, device="cpu"):
    return {name: torch.zeros((m, k) if name == "sections" else (m,), dtype=torch.bool, device=device) for name in STATE_NAMES}


def _coverage_both(act, low, high, k, threshold, top_k, prefill=None):
    m = act.shape[1]
    start = prefill if prefill is not None else _fresh_states(m, k)
    got_states = {name: t.to(CUDA) for name, t in start.items()}
    want_states = {name: t.clone() for name, t in start.items()}
    got = torch.ops.robustx.coverage_update(act.to(CUDA), low.to(CUDA), high.to(CUDA), k, threshold, top_k, *got_states.values())
    want = ops.coverage_update_ref(act, low, high, k, threshold, top_k, *want_states.values())
    assert torch.equal(got.cpu(), want)
    for name in STATE_NAMES:
        assert torch.equal(got_states[name].cpu(), want_states[name]), name


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("shape", [(16, 32, 49), (5, 64, 1), (3, 7, 200), (1, 1, 1), (64, 256, 56 * 56), (64, 2048, 49)], ids=str)
def test_coverage_matches_reference_random(dtype, shape):
    n, m, length = shape
    gen = torch.Generator().manual_seed(n * m)
    profile = torch.randn(16, m, length, generator=gen, dtype=torch.float64).mean(-1)
    low, high = profile.amin(0), profile.amax(0)
    act = torch.randn(n, m, length, generator=gen).mul(1.3).to(dtype)
    prefill = {name: torch.rand(t.shape, generator=gen) < 0.2 for name, t in _fresh_states(m, 10).items()}
    for k, threshold, top_k in ((10, 0.5, min(m, 3)), (1, 0.0, m), (1000, 0.9, 1)):
        _coverage_both(act, low, high, k, threshold, top_k, prefill if k == 10 else None)


@pytest.mark.parametrize("length", [1, 4, 49])
def test_coverage_matches_reference_on_edges_and_ties(length):
    """Activations on a 1/8 grid: exact means, values on section edges, many top-k ties."""
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        act = torch.randint(-16, 17, (40, 300, length), generator=gen) / 8.0
        act[:, 0] = act[:, 0, :1]
        low = torch.randint(-8, 1, (300,), generator=gen).double() / 8.0
        high = low + torch.randint(0, 9, (300,), generator=gen).double() / 4.0
        high[1] = low[1]
        for k, threshold, top_k in ((4, 0.5, 3), (8, 0.25, 300), (3, 0.75, 1), (2, 0.5, 40)):
            _coverage_both(act, low, high, k, threshold, top_k)


def test_coverage_with_nan_activations_matches_reference():
    act = torch.rand(4, 6, 5)
    act[1, 2, 3] = math.nan
    low, high = torch.zeros(6, dtype=torch.float64), torch.full((6,), 0.7, dtype=torch.float64)
    _coverage_both(act, low, high, 4, 0.5, 2)
    _coverage_both(act[1:2], low, high, 4, 0.5, 2)


def test_coverage_wrapper_and_opcheck_on_gpu():
    act = torch.rand(6, 8, 9, device=CUDA)
    low, high = torch.zeros(8, dtype=torch.float64, device=CUDA), torch.full((8,), 0.6, dtype=torch.float64, device=CUDA)
    states = _fresh_states(8, 4, CUDA)
    idx = ops.coverage_update(act, low, high, k=4, threshold=0.5, top_k=3, **states)
    assert idx.device.type == CUDA and idx.shape == (6, 3)
    assert all(t.device.type == CUDA for t in states.values()) and states["topk_hit"].any()
    empty = ops.coverage_update(act[:0], low, high, k=4, threshold=0.5, top_k=3, **_fresh_states(8, 4, CUDA))
    assert empty.shape == (0, 3)
    for a, k, top_k in ((act, 4, 2), (act[..., :1].double(), 1, 8), (act.half(), 3, 1)):
        torch.library.opcheck(
            torch.ops.robustx.coverage_update.default, (a, low, high, k, 0.5, top_k, *_fresh_states(8, k, CUDA).values())
        )


def test_coverage_states_on_another_device_are_rejected():
    act = torch.rand(2, 4, 3, device=CUDA)
    low, high = torch.zeros(4, dtype=torch.float64, device=CUDA), torch.ones(4, dtype=torch.float64, device=CUDA)
    with pytest.raises((RuntimeError, ValueError), match="device"):
        ops.coverage_update(act, low, high, k=2, threshold=0.5, top_k=1, **_fresh_states(4, 2))


# ------------------------------------------- cases the old kernels got wrong (issue 9)
ULP = {torch.float32: torch.finfo(torch.float32).eps, torch.float64: torch.finfo(torch.float64).eps}


@pytest.mark.parametrize("d", [1, 5, 64, 100, 3 * 224 * 224])
@pytest.mark.parametrize("p", [1.0, 2.0])
def test_ball_sample_l1_l2_points_reach_the_sphere_on_gpu(d, p):
    """The old block sum padded idle lanes with partial[0]: ||z|| came out up to 32x too
    large, so L2 points on an 8x8 input landed near R / sqrt(32). The largest of n uniform
    radii is above R (1 - 10/n)^(1/d) with probability 1 - e^-10."""
    n = 3 if d > 10000 else 2000
    centers = torch.rand(1, d, dtype=torch.float64, device=CUDA)
    x = torch.ops.robustx.ball_sample(centers, n, 0.5, p, None, None, 7, 0)
    radii = torch.linalg.vector_norm(x - centers[:, None], ord=p, dim=-1).flatten() / 0.5
    assert radii.max() <= 1 + 1e-12
    assert radii.max() >= (1 - 10 / n) ** (1 / d)


@pytest.mark.parametrize("d", [1, 31, 33, 3 * 224 * 224])
@pytest.mark.parametrize("q", [1.0, 2.0, math.inf])
def test_grad_norm_against_float64_on_gpu(d, q):
    jac, source, targets = _jacobian_case(2, 4, 3, d, t=2, dtype=torch.float32, seed=d)
    for src in (None, source):
        rows = jac.double()[torch.arange(2)[:, None], :, targets]  # (M, T, S, D)
        if src is not None:
            rows = jac.double()[torch.arange(2), :, src][:, None] - rows
        exact = torch.linalg.vector_norm(rows, ord=q, dim=-1)
        cuda_src = None if src is None else src.to(CUDA)
        maxima, norms = torch.ops.robustx.grad_norm_batch_max(jac.to(CUDA), cuda_src, targets.to(CUDA), q, 2, True)
        torch.testing.assert_close(norms.cpu().double(), exact, rtol=1e-6, atol=0)
        torch.testing.assert_close(maxima.cpu().double(), exact.view(2, 2, 2, 2).amax(-1), rtol=1e-6, atol=0)


def test_grad_norm_of_the_single_value_three_on_gpu():
    """||(3)||_q = 3 for every q; the old kernel returned 96 for q = 1 (and sqrt(32 * 9) for q = 2)."""
    jac = torch.full((1, 1, 1, 1), 3.0, device=CUDA)
    for q in (1.0, 2.0, math.inf):
        maxima, norms = torch.ops.robustx.grad_norm_batch_max(jac, None, torch.zeros(1, 1, dtype=torch.long, device=CUDA), q, 1, True)
        assert maxima.item() == 3.0 and norms.item() == 3.0


@pytest.mark.parametrize("row", [5, -1], ids=["too large", "negative"])
def test_grad_norm_checks_host_rows_on_the_host_on_gpu(row):
    """Rows given on the CPU are checked there (a clear error, no sync) before the copy."""
    jac = torch.randn(1, 2, 5, 8, device=CUDA)
    with pytest.raises(ValueError, match="targets must index rows"):
        ops.grad_norm_batch_max(jac, torch.tensor([[0, row]]), q=2, batch_size=1)
    with pytest.raises(ValueError, match="source must index rows"):
        ops.grad_norm_batch_max(jac, torch.tensor([[0, 1]]), q=2, batch_size=1, source=torch.tensor([row]))


@pytest.mark.parametrize("row", [5, -1], ids=["too large", "negative"])
def test_grad_norm_device_rows_out_of_range_fail_at_the_next_sync_on_gpu(row):
    """Rows on the GPU are checked by the kernel where it reads them: a device-side assert,
    raised at the next sync (or by a later launch check; it ends the process's CUDA context,
    hence a subprocess). A good row in the same process first gives its exact norm."""
    code = ("import torch, robustx.ops\n"
            "jac = torch.ones(1, 2, 5, 8, device='cuda')\n"
            "good = torch.ops.robustx.grad_norm_batch_max(jac, None, torch.tensor([[0, 4]], device='cuda'), 1.0, 1, False)\n"
            "print('good', good[0].flatten().tolist(), flush=True)\n"
            f"torch.ops.robustx.grad_norm_batch_max(jac, None, torch.tensor([[0, {row}]], device='cuda'), 2.0, 1, False)\n"
            "torch.cuda.synchronize()\n"
            "print('no error', flush=True)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "good [8.0, 8.0, 8.0, 8.0]" in proc.stdout  # ||ones(8)||_1 for (sample, target) in 2 x 2
    assert proc.returncode != 0 and "no error" not in proc.stdout
    assert "device-side assert" in proc.stderr, proc.stderr[-2000:]


def test_ops_never_wait_for_the_device_on_gpu():
    """torch.cuda.set_sync_debug_mode("error") raises on any host-device sync: the wrappers
    and ops run without one (indices on the CPU or on the GPU); results checked afterwards."""
    jac, source, targets = _jacobian_case(2, 8, 6, 300, t=3, dtype=torch.float32)
    jac_gpu, source_gpu, targets_gpu = jac.to(CUDA), source.to(CUDA), targets.to(CUDA)
    centers = torch.rand(3, 3, 8, 8, device=CUDA)
    act = torch.randn(4, 16, 9, device=CUDA)
    low, high = torch.full((16,), -0.5, dtype=torch.float64, device=CUDA), torch.full((16,), 0.5, dtype=torch.float64, device=CUDA)
    states = _fresh_states(16, 5, CUDA)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        host_rows = ops.grad_norm_batch_max(jac_gpu, targets, q=2, batch_size=4, source=source, return_norms=True)
        device_rows = ops.grad_norm_batch_max(jac_gpu, targets_gpu, q=1, batch_size=8, source=source_gpu)
        direct = torch.ops.robustx.grad_norm_batch_max(jac_gpu, None, targets_gpu, math.inf, 2, True)
        points = ops.ball_sample(centers, 5, 0.1, 2, clip_values=(0, 1), seed=3)
        topk = ops.coverage_update(act, low, high, k=5, threshold=0.5, top_k=2, **states)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    tol = dict(rtol=2e-5, atol=1e-5)
    for got, args in ((host_rows, (source, targets, 2.0, 4, True)), (device_rows, (source, targets, 1.0, 8, False)),
                      (direct, (None, targets, math.inf, 2, True))):
        want = ops.grad_norm_batch_max_ref(jac, *args)
        torch.testing.assert_close(got[0].cpu(), want[0], **tol)
        if args[-1]:
            torch.testing.assert_close(got[1].cpu(), want[1], **tol)
    want_points = ops.ball_sample_ref(centers.flatten(1).cpu(), 5, 0.1, 2.0, 0.0, 1.0, 3, 0)
    torch.testing.assert_close(points.flatten(2).cpu(), want_points, rtol=1e-5, atol=1e-6)
    want_states = _fresh_states(16, 5)
    want_topk = ops.coverage_update_ref(act.cpu(), low.cpu(), high.cpu(), 5, 0.5, 2, *want_states.values())
    assert torch.equal(topk.cpu(), want_topk)
    for name in STATE_NAMES:
        assert torch.equal(states[name].cpu(), want_states[name]), name


def test_grad_norm_rejects_index_tensors_on_another_device_on_gpu():
    jac = torch.randn(1, 2, 5, 8, device=CUDA)
    with pytest.raises(RuntimeError, match="must be on jac's device"):
        torch.ops.robustx.grad_norm_batch_max(jac, None, torch.tensor([[0, 1]]), 2.0, 1, False)
    with pytest.raises(RuntimeError, match="must be on jac's device"):
        torch.ops.robustx.grad_norm_batch_max(jac, torch.tensor([2]), torch.tensor([[0, 1]], device=CUDA), 2.0, 1, False)


@pytest.mark.parametrize("fill", [math.inf, -math.inf])
def test_coverage_all_inf_activations_match_cpu_on_gpu(fill):
    act = torch.full((3, 6, 4), fill)
    low, high = torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
    for threshold in (-0.5, 0.5):
        cpu_states, gpu_states = _fresh_states(6, 3), _fresh_states(6, 3, CUDA)
        cpu_idx = torch.ops.robustx.coverage_update(act, low, high, 3, threshold, 2, *cpu_states.values())
        gpu_idx = torch.ops.robustx.coverage_update(act.to(CUDA), low.to(CUDA), high.to(CUDA), 3, threshold, 2, *gpu_states.values())
        assert torch.equal(gpu_idx.cpu(), cpu_idx)
        for name in STATE_NAMES:
            assert torch.equal(gpu_states[name].cpu(), cpu_states[name]), name


def test_ball_sample_offset_overflow_is_rejected_on_gpu():
    centers = torch.rand(1, 4, device=CUDA)
    with pytest.raises(RuntimeError, match="offset \\+ n must fit in int64"):
        torch.ops.robustx.ball_sample(centers, 5, 0.5, 2.0, None, None, 0, 2**63 - 3)


# ------------------------------------------------ the stated CPU / CUDA agreement
@pytest.mark.parametrize("d", [7, 64, 3 * 32 * 32])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_cpu_cuda_agreement_as_documented(d, dtype):
    """README "CPU and CUDA results": L-inf samples are bit-identical; L1/L2 samples use the
    same Philox bits and differ by the device's log/sin/cos/exp (a few ulp per coordinate);
    q-norms agree to one ulp of a float32 output and a few ulp of a float64 one (both sum in
    double, in another order), q = inf exactly."""
    centers = torch.rand(3, d, dtype=dtype)
    for p in (math.inf, 1.0, 2.0):
        args = (17, 0.3, p, 0.0, 1.0, 5, 3)
        cpu = torch.ops.robustx.ball_sample(centers, *args)
        gpu = torch.ops.robustx.ball_sample(centers.to(CUDA), *args).cpu()
        if p == math.inf:
            assert torch.equal(gpu, cpu)
        else:
            torch.testing.assert_close(gpu, cpu, rtol=0, atol=16 * ULP[dtype] * (1 + 0.3))
    jac, source, targets = _jacobian_case(2, 6, 4, d, t=3, dtype=dtype)
    for q in (1.0, 2.0, math.inf):
        cpu_max, cpu_norms = torch.ops.robustx.grad_norm_batch_max(jac, source, targets, q, 3, True)
        gpu_max, gpu_norms = torch.ops.robustx.grad_norm_batch_max(jac.to(CUDA), source.to(CUDA), targets.to(CUDA), q, 3, True)
        if q == math.inf:
            assert torch.equal(gpu_max.cpu(), cpu_max) and torch.equal(gpu_norms.cpu(), cpu_norms)
        else:
            rtol = ULP[dtype] * (1 if dtype == torch.float32 else 8)  # float64: the sums' order shows
            torch.testing.assert_close(gpu_norms.cpu(), cpu_norms, rtol=rtol, atol=0)
            torch.testing.assert_close(gpu_max.cpu(), cpu_max, rtol=rtol, atol=0)
