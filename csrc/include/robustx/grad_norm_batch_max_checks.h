// Argument checks of robustx::grad_norm_batch_max, shared by its CPU and CUDA kernels (host
// code). The Python wrapper checks the same with friendlier messages; these stop a direct
// torch.ops.robustx.grad_norm_batch_max call from reading out of bounds on either backend.
// Shapes, dtypes and devices are checked here; the index tensors' ranges too when they are
// on the CPU (a loop on the host). Indices on a CUDA device are checked where the kernel
// reads them (grad_norm_batch_max_body: a device-side assert, raised at the caller's next
// synchronisation), so no check ever waits for the device.
#pragma once
#include <ATen/core/Tensor.h>

#include <cmath>
#include <optional>

#include "robustx/norms.h"

namespace robustx {

// Every entry of the index tensor `idx` lies in [0, rows); host (CPU) tensors only.
inline void check_rows_in_range(const at::Tensor& idx, int64_t rows, const char* name) {
  if (!idx.device().is_cpu()) return;
  const at::Tensor c = idx.contiguous();
  const int64_t* row = c.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < c.numel(); ++i) {
    TORCH_CHECK(row_in_range(row[i], rows), "grad_norm_batch_max: ", name, " holds a row index outside [0, ", rows,
                "): ", row[i]);
  }
}

inline Norm check_grad_norm_args(const at::Tensor& jac, const std::optional<at::Tensor>& source,
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
  return norm_of(q);
}

}  // namespace robustx
