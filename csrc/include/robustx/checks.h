// Argument checks of every operator, shared by its CPU and CUDA kernels (host code only).
// The Python wrappers in robustx/ops check the same things with friendlier messages;
// these keep a direct torch.ops.robustx.* call from reading out of bounds on either
// backend: shapes, dtypes, devices and every index tensor's range are checked before a
// kernel runs (an index check on a CUDA tensor costs one small reduction and one sync).
#pragma once
#include <ATen/core/Tensor.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <optional>

#include "robustx/ball.h"
#include "robustx/norms.h"

namespace robustx {

inline BallNorm check_ball_sample_args(const at::Tensor& centers, int64_t n, double radius, double p, int64_t seed,
                                       int64_t offset) {
  TORCH_CHECK(centers.dim() == 2, "ball_sample: centers must be (N, d), got ", centers.sizes());
  TORCH_CHECK(n >= 0 && seed >= 0 && offset >= 0, "ball_sample: n, seed and offset must be >= 0");
  TORCH_CHECK(offset <= std::numeric_limits<int64_t>::max() - n,
              "ball_sample: offset + n must fit in int64, got offset ", offset, " and n ", n);
  TORCH_CHECK(radius > 0 && std::isfinite(radius), "ball_sample: radius must be finite and > 0");
  TORCH_CHECK(p == 1.0 || p == 2.0 || (std::isinf(p) && p > 0), "ball_sample: p must be 1, 2 or inf, got ", p);
  return p == 1.0 ? BallNorm::L1 : (p == 2.0 ? BallNorm::L2 : BallNorm::Linf);
}

// Every entry of the index tensor `idx` lies in [0, rows).
inline void check_rows_in_range(const at::Tensor& idx, int64_t rows, const char* name) {
  if (idx.numel() == 0) return;
  const bool outside = idx.lt(0).logical_or(idx.ge(rows)).any().item<bool>();
  TORCH_CHECK(!outside, "grad_norm_batch_max: ", name, " holds a row index outside [0, ", rows, ")");
}

inline DualNorm check_grad_norm_args(const at::Tensor& jac, const std::optional<at::Tensor>& source,
                                     const at::Tensor& targets, double q, int64_t batch_size) {
  TORCH_CHECK(jac.dim() == 4, "grad_norm_batch_max: jac must be (M, S, K, D), got ", jac.sizes());
  TORCH_CHECK(targets.dim() == 2 && targets.size(0) == jac.size(0) && targets.scalar_type() == at::kLong,
              "grad_norm_batch_max: targets must be int64 of shape (M, T)");
  TORCH_CHECK(!source.has_value() ||
                  (source->dim() == 1 && source->size(0) == jac.size(0) && source->scalar_type() == at::kLong),
              "grad_norm_batch_max: source must be int64 of shape (M,)");
  TORCH_CHECK(batch_size > 0 && jac.size(1) % batch_size == 0,
              "grad_norm_batch_max: S must be a positive multiple of batch_size");
  TORCH_CHECK(q == 1.0 || q == 2.0 || (std::isinf(q) && q > 0), "grad_norm_batch_max: q must be 1, 2 or inf, got ", q);
  TORCH_CHECK(targets.device() == jac.device() && (!source.has_value() || source->device() == jac.device()),
              "grad_norm_batch_max: targets and source must be on jac's device (", jac.device(), ")");
  check_rows_in_range(targets, jac.size(2), "targets");
  if (source.has_value()) check_rows_in_range(*source, jac.size(2), "source");
  return q == 1.0 ? DualNorm::L1 : (q == 2.0 ? DualNorm::L2 : DualNorm::Linf);
}

inline void check_coverage_args(const at::Tensor& act, const at::Tensor& low, const at::Tensor& high, int64_t k,
                                int64_t top_k, std::initializer_list<const at::Tensor*> states,
                                const at::Tensor& sections) {
  TORCH_CHECK(act.dim() == 3, "coverage_update: act must be (N, M, L), got ", act.sizes());
  const int64_t m_count = act.size(1);
  TORCH_CHECK(k >= 1 && top_k >= 1 && top_k <= m_count && act.size(2) >= 1,
              "coverage_update: need k >= 1, 1 <= top_k <= M and L >= 1");
  TORCH_CHECK(low.scalar_type() == at::kDouble && high.scalar_type() == at::kDouble && low.numel() == m_count &&
                  high.numel() == m_count && low.is_contiguous() && high.is_contiguous() &&
                  low.device() == act.device() && high.device() == act.device(),
              "coverage_update: low and high must be contiguous float64 of shape (M,) on the activations' device");
  for (const at::Tensor* state : states) {
    TORCH_CHECK(state->scalar_type() == at::kBool && state->is_contiguous() && state->device() == act.device(),
                "coverage_update: states must be contiguous bool tensors on the activations' device");
    TORCH_CHECK(state->numel() == (state == &sections ? m_count * k : m_count),
                "coverage_update: state shapes must be (M, k) and (M,)");
  }
}

}  // namespace robustx
