"""The CUDA kernels' bodies, run on the host (tests/ops/kernel_sim/kernel_sim.cpp) with every
block size the kernels launch, against the CPU operators and float64 sums.

The CUDA kernels split each point / row / input over the threads of a block and combine
the threads' shares with CUB; kernel_sim instantiates the same kernel bodies of
csrc/include/robustx/ with a host group that runs the threads one after the other, so an
error in the work split, the index arithmetic or a combine step shows here without a GPU.
A smaller grid than the kernel's own (BLOCKS) runs the grid-stride loops."""
import ctypes
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from robustx import ops

ROOT = Path(__file__).resolve().parents[2]
SOURCE = Path(__file__).resolve().parent / "kernel_sim" / "kernel_sim.cpp"
THREADS = [0, 32, 64, 128, 256]  # 0: the block size the kernel itself picks
BLOCKS = 3  # a grid smaller than the tasks: each block strides over several
NORM_CODE = {1.0: 1, 2.0: 2, math.inf: 0}

pytestmark = pytest.mark.skipif(not ops.compiled(), reason="compares with the compiled CPU operators")


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    compiler = shutil.which("g++") or shutil.which("c++")
    assert compiler, "a C++ compiler is needed to build the kernel simulation (it also builds robustx._C)"
    lib = tmp_path_factory.mktemp("kernel_sim") / "kernel_sim.so"
    subprocess.run([compiler, "-std=c++20", "-O2", "-ffp-contract=off", "-shared", "-fPIC",
                    f"-I{ROOT / 'csrc' / 'include'}", str(SOURCE), "-o", str(lib)], check=True)
    return ctypes.CDLL(str(lib))


def _ptr(t):
    return ctypes.c_void_p(t.data_ptr()) if t is not None else ctypes.c_void_p(None)


def _i64(*values):
    return [ctypes.c_int64(v) for v in values]


def _suffix(dtype):
    return {torch.float32: "f32", torch.float64: "f64"}[dtype]


# ------------------------------------------------------------------- ball sampling
def _sim_ball(sim, centers, n, radius, p, clip, seed, offset, threads, blocks=0):
    out = torch.empty(centers.shape[0], n, centers.shape[1], dtype=centers.dtype)
    lo, hi = clip if clip is not None else (0.0, 0.0)
    getattr(sim, f"sim_ball_sample_{_suffix(centers.dtype)}")(
        _ptr(centers), _ptr(out), *_i64(centers.shape[0], n, centers.shape[1]), ctypes.c_int(NORM_CODE[p]),
        ctypes.c_double(radius), ctypes.c_int(clip is not None), ctypes.c_double(lo), ctypes.c_int(clip is not None),
        ctypes.c_double(hi), ctypes.c_uint64(seed), ctypes.c_int64(offset), ctypes.c_int(threads),
        ctypes.c_int64(blocks))
    return out


def _with_threads(dims, big):
    """(threads, d) cases: every block size for the small d, the kernel's own for the big one."""
    return [(t, d) for d in dims for t in THREADS] + [(0, big)]


@pytest.mark.parametrize("threads, d", _with_threads([1, 5, 7, 64, 3 * 32 * 32], 3 * 224 * 224))
@pytest.mark.parametrize("p", [1.0, 2.0, math.inf], ids=["L1", "L2", "Linf"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_ball_sample_blocks_match_cpu_kernel(sim, threads, d, p, dtype):
    n = 2 if d > 10000 else 9
    centers = torch.rand(2, d, dtype=dtype)
    for clip, seed, offset, blocks in ((None, 3, 0, 0), ((0.0, 1.0), 2**40 + 1, 2**33, BLOCKS)):
        got = _sim_ball(sim, centers, n, 0.7, p, clip, seed, offset, threads, blocks)
        want = torch.ops.robustx.ball_sample(centers, n, 0.7, p, *(clip or (None, None)), seed, offset)
        if p == math.inf:  # no sum: the same rounding step by step
            assert torch.equal(got, want)
        else:  # the direction's norm is summed in another order: one ulp at most
            torch.testing.assert_close(got, want, rtol=2 * torch.finfo(dtype).eps, atol=2 * torch.finfo(dtype).eps)
        if clip is None:  # every point on or inside the sphere, and not shrunk (the old block sum put L2 points near R / sqrt(32))
            radii = torch.linalg.vector_norm((got - centers[:, None]).double(), ord=p, dim=-1)
            assert radii.max() <= 0.7 * (1 + 1e-5)
            assert radii.max() >= 0.7 * 0.5 ** (1 / d) or n * 2 < 2 ** min(d, 30)


# ----------------------------------------------------------- gradient norm reduction
def _sim_grad(sim, jac, source, targets, batch_size, q, threads, blocks=0, skipped=0):
    """(maxima, norms) of the simulated kernel, which must skip `skipped` tasks for bad rows."""
    m, s, k, d = jac.shape
    t = targets.shape[1]
    maxima = torch.empty(m, t, s // batch_size, dtype=jac.dtype)
    norms = torch.full((m, t, s), -1.0, dtype=jac.dtype)
    run = getattr(sim, f"sim_grad_norm_batch_max_{_suffix(jac.dtype)}")
    run.restype = ctypes.c_int64
    failed = run(_ptr(jac), _ptr(source), _ptr(targets), _ptr(maxima), _ptr(norms), *_i64(m, s, k, d, t, batch_size),
                 ctypes.c_int(NORM_CODE[q]), ctypes.c_int(threads), ctypes.c_int64(blocks))
    assert failed == skipped
    return maxima, norms


@pytest.mark.parametrize("threads, d", _with_threads([1, 3, 31, 33, 257], 3 * 224 * 224))
@pytest.mark.parametrize("q", [1.0, 2.0, math.inf], ids=["q1", "q2", "qinf"])
@pytest.mark.parametrize("with_source", [False, True], ids=["rows", "differences"])
def test_grad_norm_blocks_match_float64_and_cpu_kernel(sim, threads, d, q, with_source):
    m, s, k, t, batch_size = (1, 2, 2, 1, 1) if d > 10000 else (2, 6, 4, 3, 3)
    gen = torch.Generator().manual_seed(d)
    jac = torch.randn(m, s, k, d, generator=gen)
    targets = torch.randint(0, k, (m, t), generator=gen)
    source = torch.randint(0, k, (m,), generator=gen) if with_source else None
    maxima, norms = _sim_grad(sim, jac, source, targets, batch_size, q, threads, BLOCKS if d == 33 else 0)
    rows = jac.double()[torch.arange(m)[:, None], :, targets].permute(0, 1, 2, 3)  # (M, T, S, D)
    if with_source:
        rows = jac.double()[torch.arange(m), :, source][:, None] - rows
    exact = torch.linalg.vector_norm(rows, ord=q, dim=-1)  # float64, independent of any kernel
    torch.testing.assert_close(norms.double(), exact, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(maxima.double(), exact.view(m, t, s // batch_size, batch_size).amax(-1), rtol=1e-6, atol=1e-6)
    want_max, want_norms = torch.ops.robustx.grad_norm_batch_max(jac, source, targets, q, batch_size, True)
    torch.testing.assert_close(norms, want_norms, rtol=torch.finfo(jac.dtype).eps, atol=0)
    torch.testing.assert_close(maxima, want_max, rtol=torch.finfo(jac.dtype).eps, atol=0)


def test_grad_norm_blocks_on_the_single_value_three(sim):
    """The case the old block sum got wrong: ||(3)||_1 = 3 (it returned 96 on one warp)."""
    jac = torch.full((1, 1, 1, 1), 3.0, dtype=torch.float64)
    for q in (1.0, 2.0, math.inf):
        maxima, norms = _sim_grad(sim, jac, None, torch.zeros(1, 1, dtype=torch.long), 1, q, 0)
        assert maxima.item() == 3.0 and norms.item() == 3.0


def test_grad_norm_blocks_propagate_nan(sim):
    jac = torch.ones(1, 4, 1, 40)
    jac[0, 1, 0, 17] = float("nan")
    for q in (1.0, 2.0, math.inf):
        maxima, norms = _sim_grad(sim, jac, None, torch.zeros(1, 1, dtype=torch.long), 2, q, 0)
        assert torch.isnan(maxima[0, 0, 0]) and not torch.isnan(maxima[0, 0, 1])
        assert torch.isnan(norms).sum() == 1


@pytest.mark.parametrize("row", [4, -1], ids=["too large", "negative"])
def test_grad_norm_blocks_check_the_rows_they_read(sim, row):
    """Rows on the device are checked by the kernel body where it reads them (the CUDA
    group's check is a device-side assert): every task with the bad row fails its check and
    reads nothing; the other tasks are unaffected."""
    jac = torch.randn(2, 2, 4, 5, dtype=torch.float64)
    targets = torch.tensor([[0, row], [1, 2]])
    maxima, norms = _sim_grad(sim, jac, None, targets, 1, 2.0, 0, skipped=2)  # image 0, target 1: 2 samples
    assert (norms[0, 1] == -1).all()  # never written
    torch.testing.assert_close(norms[1], torch.linalg.vector_norm(jac[1][:, [1, 2]], dim=-1).T)
    _sim_grad(sim, jac, torch.tensor([0, row]), torch.tensor([[1, 2], [1, 2]]), 2, 1.0, 0, skipped=4)


# -------------------------------------------------------------------- coverage
def _states(m, k):
    return [torch.zeros(m, k, dtype=torch.bool)] + [torch.zeros(m, dtype=torch.bool) for _ in range(4)]


def _sim_coverage(sim, act, low, high, k, threshold, top_k, threads, blocks=0):
    n, m, l_count = act.shape
    states = _states(m, k)
    topk = torch.empty(n, top_k, dtype=torch.long)
    getattr(sim, f"sim_coverage_update_{_suffix(act.dtype)}")(
        _ptr(act), *_i64(n, m, l_count), _ptr(low), _ptr(high), ctypes.c_int64(k), ctypes.c_double(threshold),
        ctypes.c_int64(top_k), *[_ptr(s) for s in states], _ptr(topk), ctypes.c_int(threads), ctypes.c_int64(blocks))
    return states, topk


def _cpu_coverage(act, low, high, k, threshold, top_k):
    states = _states(act.shape[1], k)
    topk = torch.ops.robustx.coverage_update(act, low, high, k, threshold, top_k, *states)
    return states, topk


def _coverage_cases():
    gen = torch.Generator().manual_seed(0)
    yield "random", torch.randn(5, 300, 7, generator=gen)
    yield "element-wise", torch.randn(4, 70, 1, generator=gen)
    ties = torch.randint(0, 3, (3, 40, 5), generator=gen).float()
    yield "ties", ties
    yield "all +inf", torch.full((2, 9, 3), math.inf)
    yield "all -inf", torch.full((2, 9, 3), -math.inf)
    mixed = torch.randn(3, 33, 4, generator=gen)
    mixed[1, 5, 2] = math.inf
    mixed[2, 7, 0] = -math.inf
    yield "some inf", mixed


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("case", list(_coverage_cases()), ids=lambda c: c[0])
def test_coverage_blocks_match_cpu_kernel(sim, threads, case):
    _, act = case
    m = act.shape[1]
    low = torch.linspace(-1.0, 0.0, m, dtype=torch.float64)
    high = low + 1.0
    for threshold, blocks in ((-0.5, 0), (0.25, BLOCKS)):
        top_k = min(3, m)
        got_states, got_topk = _sim_coverage(sim, act, low, high, 4, threshold, top_k, threads, blocks)
        want_states, want_topk = _cpu_coverage(act, low, high, 4, threshold, top_k)
        assert torch.equal(got_topk, want_topk)
        for got, want in zip(got_states, want_states):
            assert torch.equal(got, want)


def test_coverage_blocks_clamp_an_overflowing_section(sim):
    """The cast trigger (low = 0, high = v = 1e308, k = 10: (v - low) k = inf): section k - 1
    in the simulated CUDA kernels, the CPU kernel and the reference alike."""
    act = torch.tensor([[[1e308]]], dtype=torch.float64)
    low, high = torch.zeros(1, dtype=torch.float64), torch.full((1,), 1e308, dtype=torch.float64)
    (sections, *_), _ = _sim_coverage(sim, act, low, high, 10, 0.5, 1, 0)
    (cpu_sections, *_), _ = _cpu_coverage(act, low, high, 10, 0.5, 1)
    reference = _states(1, 10)
    ops.coverage_update_ref(act, low, high, 10, 0.5, 1, *reference)
    assert sections.nonzero().tolist() == [[0, 9]]
    assert torch.equal(cpu_sections, sections) and torch.equal(reference[0], sections)


def test_coverage_blocks_all_inf_input_keeps_its_range(sim):
    """All-+inf activations: input_min = input_max = +inf, a constant input, which DeepXplore's
    scaling maps to 0 > -0.5, so every neuron is `above` (as on the CPU and in the reference).
    The old +-DBL_MAX start gave input_min = DBL_MAX, a scaled value inf/inf = NaN and no flag."""
    act = torch.full((1, 4, 2), math.inf)
    low, high = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    (sections, upper, lower, above, _), _ = _sim_coverage(sim, act, low, high, 3, -0.5, 1, 0)
    assert upper.all() and not lower.any() and not sections.any()
    assert above.all()
    reference = _states(4, 3)
    ops.coverage_update_ref(act, low, high, 3, -0.5, 1, *reference)
    assert torch.equal(above, reference[3]) and torch.equal(upper, reference[1])
