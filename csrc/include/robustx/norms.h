// q-norm accumulation (q = 1, 2, inf) with NaN propagation, shared by the CPU and CUDA
// kernels of robustx::grad_norm_batch_max.
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

}  // namespace robustx
