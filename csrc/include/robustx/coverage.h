// Per-neuron coverage rules shared by the CPU and CUDA kernels of
// robustx::coverage_update (see robustx.ops.coverage_update_ref for the contract), and the
// CUDA kernels' bodies, which tests/ops/kernel_sim runs on the host.
#pragma once
#include <cmath>

#include "robustx/common.h"

namespace robustx {

// k-section of [low, high] hit by v, inclusive edges, or -1 when v is outside. Clamped to
// [0, k - 1] in double before the int64 cast: (v - low) k overflows to inf on huge ranges
// (low = 0, high = v = 1e308, k = 10 gives section k - 1), and an infinite bound's NaN gives 0.
RX_HD int64_t section_index(double v, double low, double high, int64_t k) {
  if (!(v >= low && v <= high)) return -1;
  const double width = high - low;
  if (!(width > 0)) return 0;
  const double x = std::floor((v - low) * static_cast<double>(k) / width), last = static_cast<double>(k - 1);
  return static_cast<int64_t>(x >= last ? last : (x > 0 ? x : 0.0));
}

// DeepXplore's per-input scaling of a neuron value to [0, 1] (0 when the input's layer is constant).
RX_HD double scaled_value(double v, double input_min, double input_max) {
  const double span = input_max - input_min;
  return span > 0 ? (v - input_min) / span : 0.0;
}

// Ordering of top-k selection: larger value first, ties to the lower index, NaN largest.
RX_HD bool ranks_before(double va, int64_t ia, double vb, int64_t ib) {
  const bool na = va != va, nb = vb != vb;
  if (na || nb) return na && (!nb || ia < ib);
  return va > vb || (va == vb && ia < ib);
}

// The coverage flags one neuron value v (of input n, neuron m) sets.
struct NeuronFlags {
  int64_t section;  // k-section hit, or -1
  bool upper, lower, above;
};

RX_HD NeuronFlags neuron_flags(double v, double low, double high, int64_t k, double input_min, double input_max,
                               double threshold) {
  return NeuronFlags{section_index(v, low, high, k), v > high, v < low,
                     scaled_value(v, input_min, input_max) > threshold};
}

// OR the flags of neuron m into the layer's states. On CUDA several threads may store `true`
// into the same flag: the races are benign.
RX_HD void set_flags(const NeuronFlags& f, int64_t m, int64_t k, bool* sections, bool* upper, bool* lower,
                     bool* above) {
  if (f.section >= 0) sections[m * k + f.section] = true;
  if (f.upper) upper[m] = true;
  if (f.lower) lower[m] = true;
  if (f.above) above[m] = true;
}

// ---- The CUDA kernels' split of the work (identities are +-inf, so an all-inf input keeps
// its value; NaN propagates through nan_min / nan_max).

// Range [lo, hi] of values, NaN-propagating.
struct Range {
  double lo, hi;
};

RX_HD Range empty_range() { return Range{HUGE_VAL, -HUGE_VAL}; }

RX_HD Range widen(Range r, double lo, double hi) { return Range{nan_min(lo, r.lo), nan_max(hi, r.hi)}; }

RX_HD Range merge(Range a, Range b) { return widen(a, b.lo, b.hi); }

// Sum and range of some of a neuron's L elements.
struct RowStats {
  double sum;
  Range range;
};

RX_HD RowStats merge(RowStats a, RowStats b) { return RowStats{a.sum + b.sum, merge(a.range, b.range)}; }

// Lane `lane` of `lanes`: elements l = lane, lane + lanes, ... of one neuron.
template <typename scalar_t>
RX_HD RowStats row_stats_share(const scalar_t* x, int64_t l_count, int64_t lane, int64_t lanes) {
  RowStats s{0.0, empty_range()};
  for (int64_t l = lane; l < l_count; l += lanes) {
    const double value = static_cast<double>(x[l]);
    s.sum += value;
    s.range = widen(s.range, value, value);
  }
  return s;
}

// Thread `tid` of `threads`: the range of input n's element ranges over neurons m = tid, tid + threads, ...
RX_HD Range input_range_share(const double* row_min, const double* row_max, int64_t m_count, int64_t tid,
                              int64_t threads) {
  Range r = empty_range();
  for (int64_t m = tid; m < m_count; m += threads) r = widen(r, row_min[m], row_max[m]);
  return r;
}

// A top-k candidate: neuron `index` with value `value` (index -1: none).
struct Ranked {
  double value;
  int64_t index;
};

RX_HD Ranked better(Ranked a, Ranked b) {
  if (a.index < 0) return b;
  if (b.index < 0) return a;
  return ranks_before(a.value, a.index, b.value, b.index) ? a : b;
}

// Thread `tid` of `threads` in one top-k round: its best neuron among m = tid, tid + threads, ...
// that ranks after `previous` (the pick of the last round; index -1 in the first round).
RX_HD Ranked topk_share(const double* v, int64_t m_count, Ranked previous, int64_t tid, int64_t threads) {
  Ranked best{0.0, -1};
  for (int64_t m = tid; m < m_count; m += threads) {
    if (previous.index < 0 || ranks_before(previous.value, previous.index, v[m], m)) best = better(best, Ranked{v[m], m});
  }
  return best;
}

// ---- The bodies of the three CUDA kernels (see "Kernel bodies" in robustx/common.h),
// launched with blocks of kMaxThreads threads, at most kCoverageMaxBlocks blocks each.
constexpr int64_t kCoverageMaxBlocks = int64_t{1} << 16;

// 1. neuron_stats: one warp per (input, neuron) row reads its L elements once: v (the mean),
// and the row's min and max.
template <typename scalar_t, typename Group>
RX_HD void neuron_stats_body(const Group& warp, const scalar_t* act, int64_t rows, int64_t l_count, double* v,
                             double* row_min, double* row_max) {
  for (int64_t row = warp.index(); row < rows; row += warp.count()) {
    const RowStats s = warp.reduce(
        [&](int64_t lane) { return row_stats_share(act + row * l_count, l_count, lane, warp.size()); },
        [](RowStats a, RowStats b) { return merge(a, b); });
    warp.leader([&] {
      v[row] = s.sum / static_cast<double>(l_count);
      row_min[row] = s.range.lo;
      row_max[row] = s.range.hi;
    });
  }
}

// 2. input_reduce: one block per input n: input_min / input_max over its neurons' element
// ranges, then top_k rounds, each picking the best neuron ranked after the previous pick.
template <typename Group>
RX_HD void input_reduce_body(const Group& block, const double* v, const double* row_min, const double* row_max,
                             int64_t n_count, int64_t m_count, int64_t top_k, double* input_min, double* input_max,
                             int64_t* topk_idx, bool* topk_hit) {
  for (int64_t n = block.index(); n < n_count; n += block.count()) {
    const int64_t row = n * m_count;
    const Range r = block.reduce(
        [&](int64_t tid) { return input_range_share(row_min + row, row_max + row, m_count, tid, block.size()); },
        [](Range a, Range b) { return merge(a, b); });
    block.leader([&] {
      input_min[n] = r.lo;
      input_max[n] = r.hi;
    });
    Ranked previous{0.0, -1};
    for (int64_t round = 0; round < top_k; ++round) {
      previous = block.reduce([&](int64_t tid) { return topk_share(v + row, m_count, previous, tid, block.size()); },
                              [](Ranked a, Ranked b) { return better(a, b); });
      block.leader([&] {
        topk_idx[n * top_k + round] = previous.index;
        topk_hit[previous.index] = true;
      });
    }
  }
}

// 3. update_flags: one thread per (input, neuron) sets its section / corner / threshold flags.
template <typename Group>
RX_HD void update_flags_body(const Group& block, const double* v, const double* low, const double* high,
                             const double* input_min, const double* input_max, int64_t n_count, int64_t m_count,
                             int64_t k, double threshold, bool* sections, bool* upper, bool* lower, bool* above) {
  block.each([&](int64_t tid) {
    const int64_t total = n_count * m_count, stride = block.count() * block.size();
    for (int64_t nm = block.index() * block.size() + tid; nm < total; nm += stride) {
      const int64_t n = nm / m_count, m = nm % m_count;
      set_flags(neuron_flags(v[nm], low[m], high[m], k, input_min[n], input_max[n], threshold), m, k, sections, upper,
                lower, above);
    }
  });
}

}  // namespace robustx
