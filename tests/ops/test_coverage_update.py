"""Tests of the coverage-counting operator: hand-computed DeepGauge/DeepXplore cases, an
independent NumPy implementation of the definitions, compiled op vs reference, OR-merging
across batches, bad input."""
import numpy as np
import pytest
import torch

from robustx import ops


FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
STATE_NAMES = ("sections", "upper", "lower", "above", "topk_hit")


def _states(m, k):
    return dict(
        sections=torch.zeros(m, k, dtype=torch.bool),
        **{name: torch.zeros(m, dtype=torch.bool) for name in STATE_NAMES[1:]},
    )


def _update(act, low, high, k, threshold, top_k, states=None):
    states = _states(act.shape[1], k) if states is None else states
    idx = ops.coverage_update(act, low, high, k=k, threshold=threshold, top_k=top_k, **states)
    return idx, states


def _f64(values):
    return torch.tensor(values, dtype=torch.float64)


def _numpy_coverage(act, low, high, k, threshold, top_k):
    """The DeepGauge / DeepXplore definitions, input by input, neuron by neuron (float64)."""
    a = act.double().numpy()
    n_count, m_count, _ = a.shape
    low, high = low.numpy(), high.numpy()
    out = {name: np.zeros((m_count, k) if name == "sections" else m_count, bool) for name in STATE_NAMES}
    top = np.zeros((n_count, top_k), np.int64)
    for n in range(n_count):
        v = a[n].mean(-1)
        span = a[n].max() - a[n].min()
        for m in range(m_count):
            if low[m] <= v[m] <= high[m]:
                edges = low[m] + (high[m] - low[m]) * np.arange(k + 1) / k  # k equal sections
                section = np.searchsorted(edges, v[m], side="right") - 1 if high[m] > low[m] else 0
                out["sections"][m, min(section, k - 1)] = True
            out["upper"][m] |= v[m] > high[m]
            out["lower"][m] |= v[m] < low[m]
            scaled = (v[m] - a[n].min()) / span if span > 0 else 0.0
            out["above"][m] |= scaled > threshold
        top[n] = sorted(range(m_count), key=lambda j: (-v[j], j))[:top_k]
        out["topk_hit"][top[n]] = True
    return top, out


def _dyadic_case(n, m, length, seed, dtype=torch.float32):
    """Activations on a grid of 1/8 in [-2, 2] (exact sums in any order, many ties and edge hits)."""
    gen = torch.Generator().manual_seed(seed)
    act = (torch.randint(-16, 17, (n, m, length), generator=gen) / 8.0).to(dtype)
    if length > 1:
        act[:, 0] = act[:, 0, :1]  # a constant feature map: its mean equals an element exactly
    low = torch.randint(-8, 1, (m,), generator=gen).double() / 8.0
    high = low + torch.randint(0, 9, (m,), generator=gen).double() / 4.0
    high[1] = low[1]  # a constant neuron: high == low
    return act, low, high


# ------------------------------------------------------------- hand-computed cases
def test_sections_corners_threshold_and_topk_by_hand(backend):
    """Element neurons (L = 1): edges inclusive, v == high hits the last section, high == low
    hits section 0, values outside [low, high] only set the corner flags."""
    act = _f64([[0.0, 1.0, 1.0, 0.5], [0.25, -0.0625, 1.5, 1.0625]]).float()[..., None]
    low, high = _f64([0, 0, 1, -1]), _f64([1, 1, 1, 1])
    idx, s = _update(act, low, high, k=4, threshold=0.5, top_k=2)
    F, T = False, True
    assert s["sections"].tolist() == [[T, T, F, F], [F, F, F, T], [T, F, F, F], [F, F, F, T]]
    assert s["upper"].tolist() == [F, F, T, T]
    assert s["lower"].tolist() == [F, T, F, F]
    # input 0 scaled: [0, 1, 1, .5]; input 1: [.2, 0, 1, .72]; "> 0.5" is strict
    assert s["above"].tolist() == [F, T, T, T]
    assert idx.tolist() == [[1, 2], [2, 3]]  # the tie 1.0 == 1.0 goes to the lower index
    assert s["topk_hit"].tolist() == [F, T, T, T]


def test_value_at_the_top_of_a_huge_range_hits_the_last_section(backend):
    """low = 0, high = v = 1e308, k = 10: (v - low) k overflows to inf, and v == high hits
    section k - 1 by the inclusive-edge rule (the compiled kernel cast inf to int64 before
    clamping, undefined behaviour that gave section 0 on the CPU)."""
    act = torch.tensor([[[1e308]], [[1.5e307]]], dtype=torch.float64)  # 1.5e307: no overflow, section 1
    _, s = _update(act, _f64([0.0]), _f64([1e308]), k=10, threshold=0.5, top_k=1)
    assert s["sections"][0].nonzero().flatten().tolist() == [1, 9]
    assert not s["upper"].any() and not s["lower"].any()


def test_threshold_scales_by_the_raw_elements_of_the_input(backend):
    """DeepXplore scales by the min/max of all of the layer's elements, not of neuron means."""
    act = torch.tensor([[[0.0, 2.0], [1.0, 1.0], [0.5, 0.5]]])  # means 1, 1, 0.5; elements in [0, 2]
    low, high = torch.zeros(3, dtype=torch.float64), torch.full((3,), 2.0, dtype=torch.float64)
    assert _update(act, low, high, 2, 0.4, 1)[1]["above"].tolist() == [True, True, False]  # 0.5, 0.5, 0.25
    assert not _update(act, low, high, 2, 0.6, 1)[1]["above"].any()  # neuron means would give 1, 1, 0
    constant = torch.full((1, 3, 2), 0.7)
    assert not _update(constant, low, high, 2, 0.0, 1)[1]["above"].any()  # scaled value 0


def test_all_ties_pick_the_lowest_indices(backend):
    idx, s = _update(torch.ones(3, 6, 4), torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64), 2, 0.5, 4)
    assert idx.tolist() == [[0, 1, 2, 3]] * 3
    assert s["topk_hit"].tolist() == [True] * 4 + [False] * 2
    assert s["sections"][:, 1].all() and not s["sections"][:, 0].any()  # v == high: last section


# ----------------------------------------------------- vs independent NumPy loops
@pytest.mark.parametrize("length", [1, 4, 49])
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_matches_numpy_definitions(backend, length, dtype):
    act, low, high = _dyadic_case(9, 7, length, seed=length, dtype=dtype)
    for k, threshold, top_k in ((1, 0.5, 1), (4, 0.25, 3), (7, 0.75, 7)):
        idx, states = _update(act, low, high, k, threshold, top_k)
        want_idx, want = _numpy_coverage(act, low, high, k, threshold, top_k)
        assert idx.dtype == torch.int64 and idx.tolist() == want_idx.tolist()
        for name in STATE_NAMES:
            assert states[name].tolist() == want[name].tolist(), name


def test_or_merge_across_batches_equals_one_call(backend):
    act, low, high = _dyadic_case(12, 8, 9, seed=5)
    idx_all, whole = _update(act, low, high, 5, 0.5, 3)
    idx_a, merged = _update(act[:5], low, high, 5, 0.5, 3)
    idx_b, merged = _update(act[5:], low, high, 5, 0.5, 3, merged)
    assert torch.equal(torch.cat([idx_a, idx_b]), idx_all)
    for name in STATE_NAMES:
        assert torch.equal(merged[name], whole[name]), name
    # two processes' states merge with OR
    _, part_a = _update(act[:5], low, high, 5, 0.5, 3)
    _, part_b = _update(act[5:], low, high, 5, 0.5, 3)
    for name in STATE_NAMES:
        assert torch.equal(part_a[name] | part_b[name], whole[name]), name


def test_existing_bits_are_kept(backend):
    act, low, high = _dyadic_case(4, 6, 3, seed=6)
    gen = torch.Generator().manual_seed(0)
    before = {name: torch.rand(t.shape, generator=gen) < 0.3 for name, t in _states(6, 4).items()}
    _, fresh = _update(act, low, high, 4, 0.5, 2)
    _, updated = _update(act, low, high, 4, 0.5, 2, {name: t.clone() for name, t in before.items()})
    for name in STATE_NAMES:
        assert torch.equal(updated[name], before[name] | fresh[name]), name


def test_non_contiguous_activations(backend):
    act, low, high = _dyadic_case(5, 6, 8, seed=7)
    want_idx, want = _update(act, low, high, 3, 0.5, 2)
    for strided in (act.transpose(1, 2).contiguous().transpose(1, 2), torch.repeat_interleave(act, 2, -1)[..., ::2]):
        assert not strided.is_contiguous()
        idx, states = _update(strided, low, high, 3, 0.5, 2)
        assert torch.equal(idx, want_idx)
        for name in STATE_NAMES:
            assert torch.equal(states[name], want[name]), name


def test_empty_batch_leaves_states_unchanged(backend):
    low, high = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    idx, states = _update(torch.rand(0, 4, 5), low, high, 3, 0.5, 2)
    assert idx.shape == (0, 2) and idx.dtype == torch.int64
    assert not any(t.any() for t in states.values())


# ------------------------------------------------------------ compiled vs reference
def _compare_compiled(act, low, high, k, threshold, top_k, prefill=None):
    m = act.shape[1]
    fresh = prefill if prefill is not None else {name: t for name, t in _states(m, k).items()}
    got_states = {name: t.clone() for name, t in fresh.items()}
    want_states = {name: t.clone() for name, t in fresh.items()}
    got = torch.ops.robustx.coverage_update(act, low, high, k, threshold, top_k, *got_states.values())
    want = ops.coverage_update_ref(act, low, high, k, threshold, top_k, *want_states.values())
    assert torch.equal(got, want)
    for name in STATE_NAMES:
        assert torch.equal(got_states[name], want_states[name]), name


@pytest.mark.usefixtures("requires_compiled")
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("shape", [(16, 32, 49), (5, 64, 1), (3, 7, 200), (1, 1, 1)], ids=str)
def test_compiled_matches_reference_random(dtype, shape):
    n, m, length = shape
    gen = torch.Generator().manual_seed(n * m)
    profile = torch.randn(32, m, length, generator=gen, dtype=torch.float64).mean(-1)
    low, high = profile.amin(0), profile.amax(0)
    act = torch.randn(n, m, length, generator=gen).mul(1.3).to(dtype)  # some values outside [low, high]
    prefill = {name: torch.rand(t.shape, generator=gen) < 0.2 for name, t in _states(m, 10).items()}
    for k, threshold, top_k in ((10, 0.5, min(m, 3)), (1, 0.0, m), (1000, 0.9, 1)):
        prefill_k = prefill if k == 10 else None
        _compare_compiled(act, low, high, k, threshold, top_k, prefill_k)


@pytest.mark.usefixtures("requires_compiled")
@pytest.mark.parametrize("length", [1, 4, 49])
def test_compiled_matches_reference_on_edges_and_ties(length):
    for seed in range(3):
        act, low, high = _dyadic_case(10, 9, length, seed=seed)
        for k, threshold, top_k in ((4, 0.5, 3), (8, 0.25, 9), (3, 0.75, 1)):
            _compare_compiled(act, low, high, k, threshold, top_k)


@pytest.mark.usefixtures("requires_compiled")
def test_compiled_matches_reference_with_nan_activations():
    act, low, high = _dyadic_case(4, 6, 5, seed=8)
    act[1, 2, 3] = float("nan")
    _compare_compiled(act, low, high, 4, 0.5, 2)
    _compare_compiled(act[1:2], low, high, 4, 0.5, 2)  # the input with the NaN alone


@pytest.mark.usefixtures("requires_compiled")
def test_opcheck():
    act, low, high = _dyadic_case(4, 6, 5, seed=9)
    for a, k, top_k in ((act, 4, 2), (act[..., :1].double(), 1, 6), (act.half(), 3, 1)):
        states = tuple(_states(6, k).values())  # fresh states: the op mutates them
        torch.library.opcheck(torch.ops.robustx.coverage_update.default, (a, low, high, k, 0.5, top_k, *states))


# ------------------------------------------------------------------- bad input
def test_rejects_bad_input():
    act, low, high = _dyadic_case(3, 4, 5, seed=10)

    def call(a=act, lo=low, hi=high, k=3, threshold=0.5, top_k=2, **overrides):
        states = {**_states(4, 3), **overrides}
        return ops.coverage_update(a, lo, hi, k=k, threshold=threshold, top_k=top_k, **states)

    with pytest.raises(ValueError, match="act"):
        call(a=act[0])
    with pytest.raises(ValueError, match="act"):
        call(a=act[None])
    with pytest.raises(TypeError, match="act"):
        call(a=(act * 8).long())
    with pytest.raises(TypeError, match="act"):
        call(a=act.numpy())
    for k, exc in ((0, ValueError), (-1, ValueError), (2.0, TypeError)):
        with pytest.raises(exc, match="k must"):
            call(k=k, sections=torch.zeros(4, 3, dtype=torch.bool))
    for top_k, exc in ((0, ValueError), (5, ValueError), (1.0, TypeError)):
        with pytest.raises(exc, match="top_k"):
            call(top_k=top_k)
    with pytest.raises(ValueError, match="low"):
        call(lo=low.float())
    with pytest.raises(ValueError, match="high"):
        call(hi=high[:3])
    with pytest.raises(ValueError, match="sections"):
        call(sections=torch.zeros(4, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="sections"):
        call(sections=torch.zeros(4, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="upper"):
        call(upper=torch.zeros(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="topk_hit"):
        call(topk_hit=torch.zeros(4, 2, dtype=torch.bool)[:, 0])  # not contiguous
    with pytest.raises(ValueError, match="above"):
        call(above=[False] * 4)


def test_rejects_neurons_without_elements(backend):
    """L = 0: a neuron with no elements has no mean; a clear error, not a NaN or a crash."""
    with pytest.raises(ValueError, match="act"):
        _update(torch.rand(2, 4, 0), torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64), 3, 0.5, 2)
