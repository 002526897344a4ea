// CPU kernel of robustx::grad_norm_batch_max: one task per (image, target, batch);
// each sample's q-norm is accumulated over D in one pass and folded into the batch max.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <limits>
#include <optional>
#include <tuple>

#include "robustx/grad_norm_batch_max_checks.h"
#include "robustx/norms.h"

namespace robustx {
namespace {

// ||a - b||_q (or ||b||_q when a is null) over d entries: differences in acc_t (as the
// reference), accumulated in double over eight independent lanes (D reaches 150528).
template <typename scalar_t, typename acc_t>
acc_t row_norm(Norm q, const scalar_t* a, const scalar_t* b, int64_t d) {
  constexpr int kLanes = 8;
  double lane[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= d; k += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      lane[l] = norm_accumulate<double>(q, lane[l], grad_entry<scalar_t, acc_t>(a, b, k + l));
    }
  }
  for (; k < d; ++k) {
    lane[0] = norm_accumulate<double>(q, lane[0], grad_entry<scalar_t, acc_t>(a, b, k));
  }
  double total = lane[0];
  for (int l = 1; l < kLanes; ++l) total = norm_combine(q, total, lane[l]);
  return static_cast<acc_t>(norm_finalize(q, total));
}

std::tuple<at::Tensor, at::Tensor> grad_norm_batch_max_cpu(const at::Tensor& jac, const std::optional<at::Tensor>& source,
                                                           const at::Tensor& targets, double q_value, int64_t batch_size,
                                                           bool return_norms) {
  const Norm q = check_grad_norm_args(jac, source, targets, q_value, batch_size);
  const at::Tensor g = jac.contiguous(), tgt = targets.contiguous();
  const int64_t m_count = g.size(0), s_count = g.size(1), k_count = g.size(2), d = g.size(3);
  const int64_t t_count = tgt.size(1), n_batches = s_count / batch_size;
  const at::Tensor src = source.has_value() ? source->contiguous() : at::Tensor();
  const auto out_type = g.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor maxima = at::empty({m_count, t_count, n_batches}, g.options().dtype(out_type));
  at::Tensor norms = at::empty({return_norms ? m_count * t_count * s_count : 0}, g.options().dtype(out_type));
  const int64_t* tp = tgt.data_ptr<int64_t>();
  const int64_t* sp = src.defined() ? src.data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "grad_norm_batch_max_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using out_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const scalar_t* gp = g.data_ptr<scalar_t>();
    out_t* mp = maxima.data_ptr<out_t>();
    out_t* np = return_norms ? norms.data_ptr<out_t>() : nullptr;
    const int64_t row = d, sample = k_count * d, image = s_count * sample;
    at::parallel_for(0, m_count * t_count * n_batches, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task % n_batches, t = (task / n_batches) % t_count, m = task / (n_batches * t_count);
        const int64_t target_row = tp[m * t_count + t];
        acc_t best = -std::numeric_limits<acc_t>::infinity();
        for (int64_t s = b * batch_size; s < (b + 1) * batch_size; ++s) {
          const scalar_t* base = gp + m * image + s * sample;
          const scalar_t* a = sp ? base + sp[m] * row : nullptr;
          const acc_t value = row_norm<scalar_t, acc_t>(q, a, base + target_row * row, d);
          if (np) np[(m * t_count + t) * s_count + s] = static_cast<out_t>(value);
          best = nan_max(value, best);
        }
        mp[task] = static_cast<out_t>(best);
      }
    });
  });
  if (return_norms) norms = norms.view({m_count, t_count, s_count});
  return {maxima, norms};
}

}  // namespace

TORCH_LIBRARY_IMPL(robustx, CPU, m) { m.impl("grad_norm_batch_max", &grad_norm_batch_max_cpu); }

}  // namespace robustx
