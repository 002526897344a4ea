// CPU kernel of robustx::coverage_update: one read of the activations computes every
// neuron value v[n, m] (mean over L, in double) and each input's min/max element; the
// coverage states are then OR-updated from v.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <numeric>
#include <vector>

#include "robustx/coverage_update_checks.h"
#include "robustx/coverage.h"

namespace robustx {
namespace {

// Mean (summed in double), min and max (exact in float) of one neuron's L elements,
// in eight independent lanes so the loop vectorises. NaN propagates: a NaN element makes
// the sum NaN, and then the range is recomputed NaN-aware (a rare, slow path).
template <typename scalar_t>
void row_stats(const scalar_t* x, int64_t l_count, double& mean, double& lo, double& hi) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kLanes = 8;
  double sum[kLanes] = {};
  acc_t lane_lo[kLanes], lane_hi[kLanes];
  for (int j = 0; j < kLanes; ++j) lane_lo[j] = lane_hi[j] = static_cast<acc_t>(x[0]);
  int64_t l = 0;
  for (; l + kLanes <= l_count; l += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const acc_t value = static_cast<acc_t>(x[l + j]);
      sum[j] += static_cast<double>(value);
      lane_lo[j] = value < lane_lo[j] ? value : lane_lo[j];
      lane_hi[j] = value > lane_hi[j] ? value : lane_hi[j];
    }
  }
  for (; l < l_count; ++l) {
    const acc_t value = static_cast<acc_t>(x[l]);
    sum[0] += static_cast<double>(value);
    lane_lo[0] = value < lane_lo[0] ? value : lane_lo[0];
    lane_hi[0] = value > lane_hi[0] ? value : lane_hi[0];
  }
  double total = 0;
  for (int j = 0; j < kLanes; ++j) {
    total += sum[j];
    lane_lo[0] = std::min(lane_lo[j], lane_lo[0]);
    lane_hi[0] = std::max(lane_hi[j], lane_hi[0]);
  }
  mean = total / static_cast<double>(l_count);
  lo = static_cast<double>(lane_lo[0]);
  hi = static_cast<double>(lane_hi[0]);
  if (total != total) {
    for (int64_t i = 0; i < l_count; ++i) {
      lo = nan_min(static_cast<double>(x[i]), lo);
      hi = nan_max(static_cast<double>(x[i]), hi);
    }
  }
}

// v (N*M) = per-neuron means; row_min / row_max (N*M) = each neuron's element range.
template <typename scalar_t>
void neuron_values(const scalar_t* act, int64_t rows, int64_t l_count, std::vector<double>& v,
                   std::vector<double>& row_min, std::vector<double>& row_max) {
  at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / l_count), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) row_stats(act + r * l_count, l_count, v[r], row_min[r], row_max[r]);
  });
}

void reduce_per_input(int64_t n_count, int64_t m_count, std::vector<double>& lo, std::vector<double>& hi) {
  for (int64_t n = 0; n < n_count; ++n) {
    double input_lo = lo[n * m_count], input_hi = hi[n * m_count];
    for (int64_t m = 1; m < m_count; ++m) {
      input_lo = nan_min(lo[n * m_count + m], input_lo);
      input_hi = nan_max(hi[n * m_count + m], input_hi);
    }
    lo[n] = input_lo;
    hi[n] = input_hi;
  }
}

at::Tensor coverage_update_cpu(const at::Tensor& act, const at::Tensor& low, const at::Tensor& high, int64_t k,
                               double threshold, int64_t top_k, at::Tensor& sections, at::Tensor& upper,
                               at::Tensor& lower, at::Tensor& above, at::Tensor& topk_hit) {
  check_coverage_args(act, low, high, k, top_k, {&sections, &upper, &lower, &above, &topk_hit}, sections);
  const at::Tensor a = act.contiguous();
  const int64_t n_count = a.size(0), m_count = a.size(1), l_count = a.size(2);
  at::Tensor topk_idx = at::empty({n_count, top_k}, a.options().dtype(at::kLong));
  if (n_count == 0) return topk_idx;

  std::vector<double> v(n_count * m_count), input_min(n_count * m_count), input_max(n_count * m_count);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "coverage_update_cpu", [&] {
    neuron_values(a.data_ptr<scalar_t>(), n_count * m_count, l_count, v, input_min, input_max);
  });
  reduce_per_input(n_count, m_count, input_min, input_max);

  const double* lo = low.data_ptr<double>();
  const double* hi = high.data_ptr<double>();
  bool* sec = sections.data_ptr<bool>();
  bool* up = upper.data_ptr<bool>();
  bool* down = lower.data_ptr<bool>();
  bool* on = above.data_ptr<bool>();
  at::parallel_for(0, m_count, 64, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      for (int64_t n = 0; n < n_count; ++n) {
        set_flags(neuron_flags(v[n * m_count + m], lo[m], hi[m], k, input_min[n], input_max[n], threshold), m, k, sec,
                  up, down, on);
      }
    }
  });

  int64_t* out = topk_idx.data_ptr<int64_t>();
  at::parallel_for(0, n_count, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> order(m_count);
    for (int64_t n = begin; n < end; ++n) {
      const double* row = v.data() + n * m_count;
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + top_k, order.end(),
                        [row](int64_t i, int64_t j) { return ranks_before(row[i], i, row[j], j); });
      std::copy(order.begin(), order.begin() + top_k, out + n * top_k);
    }
  });
  bool* hit = topk_hit.data_ptr<bool>();
  for (int64_t i = 0; i < n_count * top_k; ++i) hit[out[i]] = true;
  return topk_idx;
}

}  // namespace

TORCH_LIBRARY_IMPL(robustx, CPU, m) { m.impl("coverage_update", &coverage_update_cpu); }

}  // namespace robustx
