"""Tests of the Lp-ball sampling operator: Philox known answers, compiled op vs reference,
uniformity statistics against analytic laws, determinism and chunking, bad input."""
import math

import pytest
import torch
from scipy import stats

from robustx import ops


NORMS = [1.0, 2.0, math.inf]
FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# machine epsilon of each dtype (spacing of floats in [1, 2))
EPS = {dtype: torch.finfo(dtype).eps for dtype in FLOATS}


def _tolerance(dtype):
    """Compiled vs reference: a few ulps of float32/float64 math; one ulp of the output for halves."""
    if dtype == torch.float64:
        return dict(rtol=1e-10, atol=1e-12)
    if dtype == torch.float32:
        return dict(rtol=1e-5, atol=1e-6)
    return dict(rtol=0.0, atol=EPS[dtype] * 1.01)  # outputs lie in [0, 2): one ulp


def _radius_over_r(x, centers, p, radius):
    """||x - center||_p / R per sample, in float64: shape (N * n,)."""
    delta = x.double() - centers.double()[:, None]
    return torch.linalg.vector_norm(delta.flatten(2), ord=p, dim=-1).flatten() / radius


# --------------------------------------------------------------------------- Philox
# Random123 known-answer vectors of philox4x32_10 (counter words, key words -> output words).
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("counter,key,expected", PHILOX_KAT)
def test_philox_known_answers(counter, key, expected):
    words = ops.philox4x32([torch.tensor([c]) for c in counter], key)
    assert tuple(int(w) for w in words) == expected


def test_philox_vectorised_counters_match_scalar_calls():
    counters = torch.tensor([[0, 0, 0, 0], [0xFFFFFFFF] * 4, [1, 2, 3, 4], [7, 0, 0xFFFFFFFF, 9]], dtype=torch.int64)
    key = (0xA4093822, 0x299F31D0)
    batched = torch.stack(ops.philox4x32(counters.unbind(1), key), 1)
    for row, out in zip(counters, batched):
        single = ops.philox4x32([row[j : j + 1] for j in range(4)], key)
        assert [int(w) for w in single] == out.tolist()
    assert batched.min() >= 0 and batched.max() <= 0xFFFFFFFF


# ------------------------------------------------------------ compiled vs reference
SHAPES = [(1,), (7,), (8,), (3, 8, 8), (3, 32, 32)]


@pytest.mark.usefixtures("requires_compiled")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_compiled_matches_reference(shape, p, dtype):
    d = math.prod(shape)
    n = 5 if d > 1000 else 33
    centers = torch.rand(3, d, dtype=torch.float64).to(dtype)
    cases = [(None, None, 0, 0), (0.0, 1.0, 11, 5), (0.25, None, 2**32 + 7, 2**32 - 2)]
    for clip_min, clip_max, seed, offset in cases:
        args = (centers, n, 0.3, p, clip_min, clip_max, seed, offset)
        got = torch.ops.robustx.ball_sample(*args)
        want = ops.ball_sample_ref(*args)
        assert got.dtype == dtype and got.shape == (3, n, d)
        torch.testing.assert_close(got, want, **_tolerance(dtype))
        if dtype in (torch.float16, torch.bfloat16):
            # same float32 math, then one rounding: all but a few boundary cases agree exactly
            assert (got != want).double().mean() < 0.02


@pytest.mark.usefixtures("requires_compiled")
@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_opcheck(p, dtype):
    centers = torch.rand(2, 3 * 4 * 4, dtype=dtype)
    for clip in ((None, None), (0.0, 1.0)):
        torch.library.opcheck(torch.ops.robustx.ball_sample.default, (centers, 6, 0.5, p, *clip, 3, 9))


# ------------------------------------------------------------------- statistics
@pytest.mark.parametrize("p", [1, 2, "inf"])
@pytest.mark.parametrize("d", [1, 2, 7, 64, 192])
def test_radius_follows_r_over_R_to_the_d(p, d):
    """Uniform in the ball <=> P(||delta|| <= r) = (r/R)^d, i.e. (r/R)^d ~ Uniform(0, 1)."""
    centers = torch.rand(2, d, dtype=torch.float64)
    x = ops.ball_sample(centers, 2000, 0.5, p, seed=d)
    frac = _radius_over_r(x, centers, ops.parse_norm(p), 0.5).numpy()
    assert frac.max() <= 1 + 1e-12
    assert stats.kstest(frac**d, "uniform").pvalue > 1e-3
    # the test has power: a wrong radial law (radius U^(1/2d)) is rejected
    assert stats.kstest(frac ** (2 * d), "uniform").pvalue < 1e-6


def test_l1_marginal_in_two_dims_is_triangular():
    """The L1 ball in 2-D is a diamond: x_1 - c_1 has density (R - |t|) / R^2."""
    radius = 0.8
    centers = torch.tensor([[0.3, -1.0]], dtype=torch.float64)
    x = ops.ball_sample(centers, 4000, radius, 1, seed=5)
    t = (x[0, :, 0] - 0.3).numpy()
    assert stats.kstest(t, stats.triang(c=0.5, loc=-radius, scale=2 * radius).cdf).pvalue > 1e-3
    assert stats.kstest(t, stats.uniform(loc=-radius, scale=2 * radius).cdf).pvalue < 1e-6


def test_l2_marginal_in_two_dims_is_semicircular():
    """Uniform in a disc: x_1 - c_1 has density 2 sqrt(R^2 - t^2) / (pi R^2)."""
    radius = 1.5
    x = ops.ball_sample(torch.zeros(1, 2, dtype=torch.float64), 4000, radius, 2, seed=6)
    t = x[0, :, 1].numpy()
    assert stats.kstest(t, stats.semicircular(scale=radius).cdf).pvalue > 1e-3
    assert stats.kstest(t, stats.triang(c=0.5, loc=-radius, scale=2 * radius).cdf).pvalue < 1e-6


def test_l2_direction_in_three_dims_is_uniform_on_the_sphere():
    """Archimedes: a coordinate of a uniform point on S^2 is Uniform(-1, 1)."""
    x = ops.ball_sample(torch.zeros(1, 3, dtype=torch.float64), 4000, 1.0, 2, seed=7)[0]
    cos = x / torch.linalg.vector_norm(x, dim=1, keepdim=True)
    for k in range(3):
        assert stats.kstest(cos[:, k].numpy(), stats.uniform(loc=-1, scale=2).cdf).pvalue > 1e-3


def test_linf_coordinates_are_uniform_in_the_cube():
    radius = 0.25
    centers = torch.rand(2, 5, dtype=torch.float64)
    x = ops.ball_sample(centers, 1000, radius, "inf", seed=8)
    delta = x - centers[:, None]
    for k in range(5):
        t = delta[..., k].flatten().numpy()
        assert stats.kstest(t, stats.uniform(loc=-radius, scale=2 * radius).cdf).pvalue > 1e-3


@pytest.mark.parametrize("p", [1, 2])
def test_coordinate_moments_in_64_dims(p):
    """L1 ball: E|delta_k| = R / (d + 1); L2 ball: E delta_k^2 = R^2 / (d + 2), for every k."""
    d, radius = 64, 2.0
    x = ops.ball_sample(torch.zeros(2, d, dtype=torch.float64), 2000, radius, p, seed=9)
    delta = x.reshape(-1, d)
    if p == 1:
        moment, expected = delta.abs().mean(0), radius / (d + 1)
    else:
        moment, expected = (delta**2).mean(0), radius**2 / (d + 2)
    assert (moment / expected - 1).abs().max() < 0.12  # about 5 standard errors


@pytest.mark.parametrize("p", NORMS)
def test_mean_is_the_center(p):
    centers = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    x = ops.ball_sample(centers, 4000, 0.5, p, seed=10)[0]
    sem = x.std(0) / math.sqrt(x.shape[0])
    assert ((x.mean(0) - centers[0]).abs() <= 5 * sem).all()


@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("clip_values", [None, (0.0, 1.0), (0.25, 0.75)])
def test_points_inside_ball_and_clip_box(p, dtype, clip_values):
    shape, radius = (3, 8, 8), 0.3
    d = math.prod(shape)
    lo, hi = clip_values if clip_values else (0.0, 1.0)
    centers = (lo + (hi - lo) * torch.rand(4, *shape, dtype=torch.float64)).to(dtype)
    x = ops.ball_sample(centers, 200, radius, p, clip_values=clip_values, seed=11)
    assert x.dtype == dtype and x.shape == (4, 200, *shape)
    assert torch.isfinite(x).all()
    frac = _radius_over_r(x, centers, p, radius)
    # rounding of float32/float64 math, plus rounding of each output coordinate (|x| < 1.3)
    om_eps = EPS[torch.float64 if dtype == torch.float64 else torch.float32]
    slack = 8 * om_eps + d ** (1 / p) * EPS[dtype] * 0.65 / radius
    assert frac.max() <= 1 + slack
    assert frac.max() > 0.9  # the samples do fill the ball
    if clip_values:
        assert (x >= torch.tensor(lo, dtype=dtype)).all() and (x <= torch.tensor(hi, dtype=dtype)).all()
        if clip_values == (0.25, 0.75):
            assert (x == lo).any() and (x == hi).any()  # clipping is active


# --------------------------------------------------------- determinism and chunking
@pytest.mark.parametrize("p", NORMS)
def test_same_seed_same_points_other_seed_other_points(p, backend):
    centers = torch.rand(3, 7)
    a = ops.ball_sample(centers, 20, 0.5, p, seed=123)
    assert torch.equal(a, ops.ball_sample(centers, 20, 0.5, p, seed=123))
    for other in (124, 123 + 2**32):  # low and high word of the seed both matter
        b = ops.ball_sample(centers, 20, 0.5, p, seed=other)
        assert (a == b).double().mean() < 0.01


@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("d", [1, 7, 192])
def test_chunking_with_offset_gives_identical_points(p, d, backend):
    centers = torch.rand(2, d)
    whole = ops.ball_sample(centers, 10, 0.5, p, clip_values=(0, 1), seed=4)
    parts = [ops.ball_sample(centers, m, 0.5, p, clip_values=(0, 1), seed=4, offset=o) for o, m in ((0, 3), (3, 1), (4, 6))]
    assert torch.equal(whole, torch.cat(parts, 1))
    # across the 2^32 boundary of the sample counter
    start = 2**32 - 3
    whole = ops.ball_sample(centers, 6, 0.5, p, seed=4, offset=start)
    parts = [ops.ball_sample(centers, 3, 0.5, p, seed=4, offset=o) for o in (start, start + 3)]
    assert torch.equal(whole, torch.cat(parts, 1))
    # the high word of the sample index is part of the counter
    assert not torch.equal(whole[:, :1], ops.ball_sample(centers, 1, 0.5, p, seed=4, offset=start + 2**32))


@pytest.mark.parametrize("p", NORMS)
def test_result_does_not_depend_on_thread_count(p, backend):
    centers = torch.rand(5, 3, 8, 8)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.ball_sample(centers, 16, 0.5, p, seed=2)
        torch.set_num_threads(max(2, threads))
        many = ops.ball_sample(centers, 16, 0.5, p, seed=2)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


@pytest.mark.parametrize("p", NORMS)
def test_non_contiguous_and_channels_last_centers(p, backend):
    base = torch.rand(4, 3, 6, 6)
    want = ops.ball_sample(base, 5, 0.5, p, seed=1)
    channels_last = base.to(memory_format=torch.channels_last)
    assert not channels_last.is_contiguous()
    assert torch.equal(ops.ball_sample(channels_last, 5, 0.5, p, seed=1), want)
    strided = torch.rand(4, 3, 6, 12)[..., ::2]
    assert not strided.is_contiguous()
    assert torch.equal(ops.ball_sample(strided, 5, 0.5, p, seed=1), ops.ball_sample(strided.contiguous(), 5, 0.5, p, seed=1))


@pytest.mark.parametrize("p", NORMS)
def test_empty_batches_give_empty_results(p, backend):
    assert ops.ball_sample(torch.rand(0, 3, 4, 4), 5, 0.5, p).shape == (0, 5, 3, 4, 4)
    assert ops.ball_sample(torch.rand(2, 3, 4, 4), 0, 0.5, p).shape == (2, 0, 3, 4, 4)
    assert ops.ball_sample(torch.rand(0, 7), 0, 0.5, p).shape == (0, 0, 7)


# ------------------------------------------------------------------- bad input
@pytest.mark.parametrize("norm", [0, 3, 1.5, -1, "l3", "two", -math.inf])
def test_rejects_unknown_norm(norm):
    with pytest.raises(ValueError, match="norm"):
        ops.ball_sample(torch.rand(1, 4), 2, 0.5, norm)


@pytest.mark.parametrize("norm", [None, True, [2]])
def test_rejects_a_norm_of_another_type(norm):
    with pytest.raises(TypeError, match="norm"):
        ops.ball_sample(torch.rand(1, 4), 2, 0.5, norm)


@pytest.mark.parametrize("radius", [0, -0.1, math.nan, math.inf])
def test_rejects_bad_radius(radius):
    with pytest.raises(ValueError, match="radius"):
        ops.ball_sample(torch.rand(1, 4), 2, radius, 2)


@pytest.mark.parametrize("n, exc", [(-1, ValueError), (2.0, TypeError), ("3", TypeError), (True, TypeError)])
def test_rejects_bad_n(n, exc):
    with pytest.raises(exc, match="n must"):
        ops.ball_sample(torch.rand(1, 4), n, 0.5, 2)


def test_rejects_bad_centers():
    with pytest.raises(TypeError, match="centers"):
        ops.ball_sample(torch.ones(1, 4, dtype=torch.int64), 2, 0.5, 2)
    with pytest.raises(TypeError, match="centers"):
        ops.ball_sample([[0.0, 1.0]], 2, 0.5, 2)
    with pytest.raises(ValueError, match="centers"):
        ops.ball_sample(torch.tensor(0.5), 2, 0.5, 2)
    with pytest.raises(ValueError, match="centers"):
        ops.ball_sample(torch.rand(3, 0), 2, 0.5, 2)
    with pytest.raises(ValueError, match="centers"):
        ops.ball_sample(torch.tensor([[0.5, math.nan]]), 2, 0.5, 2)


def test_rejects_bad_seed_offset_and_clip():
    centers = torch.rand(1, 4)
    for seed, exc in ((-1, ValueError), (2**63, ValueError), (1.0, TypeError)):
        with pytest.raises(exc, match="seed"):
            ops.ball_sample(centers, 2, 0.5, 2, seed=seed)
    for offset, exc in ((-1, ValueError), (0.5, TypeError)):
        with pytest.raises(exc, match="offset"):
            ops.ball_sample(centers, 2, 0.5, 2, offset=offset)
    # clip_values: None or a finite (lo, hi) with lo < hi; one-sided bounds are not accepted
    for clip in ((1.0, 0.0), (0.5, 0.5), (0.0,), 1.0, (0.0, None), (None, 1.0), (0.0, math.inf)):
        with pytest.raises(ValueError, match="clip_values"):
            ops.ball_sample(centers, 2, 0.5, 2, clip_values=clip)
