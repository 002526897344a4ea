// Argument checks of robustx::coverage_update, shared by its CPU and CUDA kernels (host
// code). The Python wrapper checks the same with friendlier messages; these stop a direct
// torch.ops.robustx.coverage_update call with bad shapes, dtypes, devices or non-contiguous
// states before a kernel runs.
#pragma once
#include <ATen/core/Tensor.h>

#include <initializer_list>

namespace robustx {

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
