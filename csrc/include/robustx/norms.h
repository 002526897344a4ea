// q-norm accumulation (q = 1, 2, inf) with NaN propagation, and the per-thread work split
// of robustx::grad_norm_batch_max, shared by its CPU and CUDA kernels. Norms accumulate in
// double on both (D reaches 150528) and are rounded once to the output type.
#pragma once
#include <cmath>

#include "robustx/common.h"

namespace robustx {

enum class DualNorm { L1, L2, Linf };

// Fold |x| into a running accumulator: sum |x| (q=1), sum x^2 (q=2), max |x| (q=inf).
template <typename acc_t>
RX_HD acc_t norm_accumulate(DualNorm q, acc_t acc, acc_t x) {
  const acc_t a = std::fabs(x);
  switch (q) {
    case DualNorm::L1:
      return acc + a;
    case DualNorm::L2:
      return acc + a * a;
    default:
      return nan_max(acc, a);
  }
}

// Combine two partial accumulators of the same norm.
template <typename acc_t>
RX_HD acc_t norm_combine(DualNorm q, acc_t a, acc_t b) {
  return q == DualNorm::Linf ? nan_max(a, b) : a + b;
}

template <typename acc_t>
RX_HD acc_t norm_finalize(DualNorm q, acc_t acc) {
  return q == DualNorm::L2 ? std::sqrt(acc) : acc;
}

// Entry k of the row whose norm is taken: a[k] - b[k] (difference in acc_t), or b[k] when a is null.
template <typename scalar_t, typename acc_t>
RX_HD acc_t grad_entry(const scalar_t* a, const scalar_t* b, int64_t k) {
  return a ? static_cast<acc_t>(a[k]) - static_cast<acc_t>(b[k]) : static_cast<acc_t>(b[k]);
}

// One thread's share of the row's accumulator: entries k = tid, tid + threads, ... (in double).
template <typename scalar_t, typename acc_t>
RX_HD double norm_share(DualNorm q, const scalar_t* a, const scalar_t* b, int64_t d, int64_t tid, int64_t threads) {
  double acc = 0;
  for (int64_t k = tid; k < d; k += threads) acc = norm_accumulate<double>(q, acc, grad_entry<scalar_t, acc_t>(a, b, k));
  return acc;
}

// Task index -> (image m, target t, sample s), samples fastest.
struct GradTask {
  int64_t m, t, s;
};

RX_HD GradTask grad_task(int64_t task, int64_t t_count, int64_t s_count) {
  return GradTask{task / (s_count * t_count), (task / s_count) % t_count, task % s_count};
}

// Index of the task's norm in norms (M, T, S) and of its batch in maxima (M, T, S / batch_size).
RX_HD int64_t norm_slot(GradTask g, int64_t t_count, int64_t s_count) { return (g.m * t_count + g.t) * s_count + g.s; }

RX_HD int64_t batch_slot(GradTask g, int64_t t_count, int64_t s_count, int64_t batch_size) {
  return (g.m * t_count + g.t) * (s_count / batch_size) + g.s / batch_size;
}

}  // namespace robustx
