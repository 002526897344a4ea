// CUDA kernel of robustx::ball_sample: one block per point. L1/L2 points take two passes
// over their Philox stream (the direction's norm, then the scaled write), so nothing but
// the output is written to memory. The kernel body is ball_sample_body of robustx/ball.h,
// which tests/ops/kernel_sim runs on the host; the block sum is CUB's.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>

#include "robustx/ball.h"
#include "robustx/block_reduce.cuh"
#include "robustx/ball_sample_checks.h"

namespace robustx {
namespace {

template <typename scalar_t, int kThreads>
__global__ void __launch_bounds__(kThreads)
    ball_sample_kernel(const scalar_t* __restrict__ centers, scalar_t* __restrict__ out, int64_t points, int64_t n,
                       int64_t d, Norm norm, double radius, Box<double> clip_box, uint64_t seed, int64_t offset) {
  using acc_t = at::opmath_type<scalar_t>;
  const Box<acc_t> box{clip_box.has_min, clip_box.has_max, static_cast<acc_t>(clip_box.lo),
                       static_cast<acc_t>(clip_box.hi)};
  ball_sample_body<scalar_t, acc_t>(CudaBlock<kThreads>{}, centers, out, points, n, d, norm, static_cast<acc_t>(radius),
                                    box, seed, offset);
}

at::Tensor ball_sample_cuda(const at::Tensor& centers, int64_t n, double radius, double p,
                            std::optional<double> clip_min, std::optional<double> clip_max, int64_t seed,
                            int64_t offset) {
  const Norm norm = check_ball_sample_args(centers, n, radius, p, seed, offset);
  const c10::cuda::CUDAGuard guard(centers.device());
  const at::Tensor c = centers.contiguous();
  const int64_t n_centers = c.size(0), d = c.size(1), points = n_centers * n;
  at::Tensor out = at::empty({n_centers, n, d}, c.options());
  if (out.numel() == 0) return out;
  const Box<double> box{clip_min.has_value(), clip_max.has_value(), clip_min.value_or(0), clip_max.value_or(0)};
  const auto grid = static_cast<unsigned>(blocks_for(points, 1, kMaxBlocks));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.scalar_type(), "ball_sample_cuda", [&] {
    with_block_threads((d + 3) / 4, [&](auto threads) {
      ball_sample_kernel<scalar_t, decltype(threads)::value><<<grid, decltype(threads)::value, 0, stream>>>(
          c.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), points, n, d, norm, radius, box,
          static_cast<uint64_t>(seed), offset);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(robustx, CUDA, m) { m.impl("ball_sample", &ball_sample_cuda); }

}  // namespace robustx
