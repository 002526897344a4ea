// Argument checks of robustx::ball_sample, shared by its CPU and CUDA kernels (host code).
// The Python wrapper checks the same with friendlier messages; these stop a direct
// torch.ops.robustx.ball_sample call with a bad shape, norm, radius or sample-counter range
// before a kernel runs.
#pragma once
#include <ATen/core/Tensor.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "robustx/ball.h"

namespace robustx {

inline Norm check_ball_sample_args(const at::Tensor& centers, int64_t n, double radius, double p, int64_t seed,
                                       int64_t offset) {
  TORCH_CHECK(centers.dim() == 2, "ball_sample: centers must be (N, d), got ", centers.sizes());
  TORCH_CHECK(n >= 0 && seed >= 0 && offset >= 0, "ball_sample: n, seed and offset must be >= 0");
  TORCH_CHECK(offset <= std::numeric_limits<int64_t>::max() - n,
              "ball_sample: offset + n must fit in int64, got offset ", offset, " and n ", n);
  TORCH_CHECK(radius > 0 && std::isfinite(radius), "ball_sample: radius must be finite and > 0");
  TORCH_CHECK(p == 1.0 || p == 2.0 || (std::isinf(p) && p > 0), "ball_sample: p must be 1, 2 or inf, got ", p);
  return norm_of(p);
}

}  // namespace robustx
