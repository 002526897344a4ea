// CUDA kernel of robustx::ball_sample: one block per point. L1/L2 points take two
// passes over their Philox stream (norm of the direction, then the scaled write), so
// nothing but the output is written to memory.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>

#include "robustx/ball.h"
#include "robustx/block_reduce.cuh"
#include "robustx/checks.h"

namespace robustx {
namespace {

struct Clip {
  bool has_min, has_max;
  double lo, hi;
};

template <typename scalar_t>
__global__ void ball_sample_kernel(const scalar_t* __restrict__ centers, scalar_t* __restrict__ out, int64_t points,
                                   int64_t n, int64_t d, BallNorm norm, double radius_value, Clip box, uint64_t seed,
                                   int64_t offset) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t radius = static_cast<acc_t>(radius_value), lo = static_cast<acc_t>(box.lo),
              hi = static_cast<acc_t>(box.hi);
  const int64_t blocks = (d + 3) / 4;
  for (int64_t point = blockIdx.x; point < points; point += gridDim.x) {
    const int64_t i = point / n;
    const PointStream stream(seed, static_cast<uint64_t>(offset + point % n), static_cast<uint32_t>(i));
    const scalar_t* center = centers + i * d;
    scalar_t* x = out + point * d;
    acc_t scale = acc_t(0);
    if (norm != BallNorm::Linf) {
      double partial = 0;
      for (int64_t j = threadIdx.x; j < blocks; j += blockDim.x) {
        acc_t z[4];
        direction_block(norm, stream.block(static_cast<uint32_t>(j)), z);
        for (int w = 0; w < 4 && 4 * j + w < d; ++w) partial += norm_term(norm, z[w]);
      }
      const double total = block_reduce(partial, [](double a, double b) { return a + b; });
      const acc_t z_norm = static_cast<acc_t>(norm == BallNorm::L2 ? sqrt(total) : total);
      scale = ball_radius(stream, radius, d) / z_norm;
    }
    for (int64_t j = threadIdx.x; j < blocks; j += blockDim.x) {
      const Philox4 bits = stream.block(static_cast<uint32_t>(j));
      acc_t delta[4];
      if (norm == BallNorm::Linf) {
        for (int w = 0; w < 4; ++w) delta[w] = linf_delta(uniform_from_bits<acc_t>(bits.w[w]), radius);
      } else {
        direction_block(norm, bits, delta);
        for (int w = 0; w < 4; ++w) delta[w] *= scale;
      }
      for (int w = 0; w < 4 && 4 * j + w < d; ++w) {
        const int64_t k = 4 * j + w;
        x[k] = static_cast<scalar_t>(clip(static_cast<acc_t>(center[k]) + delta[w], box.has_min, lo, box.has_max, hi));
      }
    }
  }
}

at::Tensor ball_sample_cuda(const at::Tensor& centers, int64_t n, double radius, double p,
                            std::optional<double> clip_min, std::optional<double> clip_max, int64_t seed,
                            int64_t offset) {
  const BallNorm norm = check_ball_sample_args(centers, n, radius, p, seed, offset);
  const c10::cuda::CUDAGuard guard(centers.device());
  const at::Tensor c = centers.contiguous();
  const int64_t n_centers = c.size(0), d = c.size(1), points = n_centers * n;
  at::Tensor out = at::empty({n_centers, n, d}, c.options());
  if (out.numel() == 0) return out;
  const Clip box{clip_min.has_value(), clip_max.has_value(), clip_min.value_or(0), clip_max.value_or(0)};
  const int threads = threads_for((d + 3) / 4);
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(points, 1 << 20));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.scalar_type(), "ball_sample_cuda", [&] {
    ball_sample_kernel<scalar_t><<<grid, threads, 0, stream>>>(c.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), points,
                                                               n, d, norm, radius, box, static_cast<uint64_t>(seed),
                                                               offset);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(robustx, CUDA, m) { m.impl("ball_sample", &ball_sample_cuda); }

}  // namespace robustx
