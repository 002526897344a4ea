// q-norm accumulation (q = 1, 2, inf) with NaN propagation, and the per-thread work split
// of robustx::grad_norm_batch_max, shared by its CPU and CUDA kernels. Norms accumulate in
// double on both (D reaches 150528) and are rounded once to the output type.
#pragma once
#include <cmath>

#include "robustx/common.h"

namespace robustx {

// Fold |x| into a running accumulator: sum |x| (q=1), sum x^2 (q=2), max |x| (q=inf).
template <typename acc_t>
RX_HD acc_t norm_accumulate(Norm q, acc_t acc, acc_t x) {
  const acc_t a = std::fabs(x);
  switch (q) {
    case Norm::L1:
      return acc + a;
    case Norm::L2:
      return acc + a * a;
    default:
      return nan_max(acc, a);
  }
}

// Combine two partial accumulators of the same norm.
template <typename acc_t>
RX_HD acc_t norm_combine(Norm q, acc_t a, acc_t b) {
  return q == Norm::Linf ? nan_max(a, b) : a + b;
}

template <typename acc_t>
RX_HD acc_t norm_finalize(Norm q, acc_t acc) {
  return q == Norm::L2 ? std::sqrt(acc) : acc;
}

// Entry k of the row whose norm is taken: a[k] - b[k] (difference in acc_t), or b[k] when a is null.
template <typename scalar_t, typename acc_t>
RX_HD acc_t grad_entry(const scalar_t* a, const scalar_t* b, int64_t k) {
  return a ? static_cast<acc_t>(a[k]) - static_cast<acc_t>(b[k]) : static_cast<acc_t>(b[k]);
}

// One thread's share of the row's accumulator: entries k = tid, tid + threads, ... (in double).
template <typename scalar_t, typename acc_t>
RX_HD double norm_share(Norm q, const scalar_t* a, const scalar_t* b, int64_t d, int64_t tid, int64_t threads) {
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

RX_HD bool row_in_range(int64_t row, int64_t rows) { return row >= 0 && row < rows; }

// The CUDA kernel's body (see "Kernel bodies" in robustx/common.h): one group per task
// (image m, target t, sample s) sums the row's q-norm and folds it into its batch maximum.
// Row indices are checked where they are read (check: a device-side assert on CUDA), so the
// op needs no host sync for indices on the device; a task with a bad row is skipped.
template <typename scalar_t, typename acc_t, typename out_t, typename Group>
RX_HD void grad_norm_batch_max_body(const Group& block, const scalar_t* jac, const int64_t* source,
                                    const int64_t* targets, out_t* maxima, out_t* norms, int64_t tasks,
                                    int64_t t_count, int64_t s_count, int64_t k_count, int64_t d, int64_t batch_size,
                                    Norm q) {
  for (int64_t task = block.index(); task < tasks; task += block.count()) {
    const GradTask g = grad_task(task, t_count, s_count);
    const int64_t target = targets[g.m * t_count + g.t], src = source ? source[g.m] : 0;
    if (!block.check(row_in_range(target, k_count) && row_in_range(src, k_count),
                     "grad_norm_batch_max: targets or source holds a row index outside [0, K)")) {
      continue;
    }
    const scalar_t* base = jac + (g.m * s_count + g.s) * k_count * d;
    const scalar_t* a = source ? base + src * d : nullptr;
    const double total = block.reduce(
        [&](int64_t tid) { return norm_share<scalar_t, acc_t>(q, a, base + target * d, d, tid, block.size()); },
        [q](double x, double y) { return norm_combine(q, x, y); });
    block.leader([&] {
      const out_t value = static_cast<out_t>(static_cast<acc_t>(norm_finalize(q, total)));
      if (norms) norms[norm_slot(g, t_count, s_count)] = value;
      block.max_into(maxima + batch_slot(g, t_count, s_count, batch_size), value);
    });
  }
}

}  // namespace robustx
