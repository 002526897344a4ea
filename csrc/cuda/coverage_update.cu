// CUDA kernels of robustx::coverage_update, three launches:
//  1. neuron_stats: one warp per (input, neuron) reads its L elements once: mean, min, max;
//  2. input_reduce: one block per input: the input's min/max element and its top-k neurons;
//  3. update_flags: one thread per (input, neuron) sets the section / corner / threshold bits.
// Several threads may set the same flag: they all store `true`, so the races are benign.
// The kernel bodies are those of robustx/coverage.h, which tests/ops/kernel_sim runs on the
// host; the warp and block reductions are CUB's. Speed work left for a GPU campaign: with
// element-wise neurons (L = 1) neuron_stats leaves 31 of 32 lanes idle, and input_reduce
// rescans the M neuron values once per top-k round.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "robustx/block_reduce.cuh"
#include "robustx/coverage_update_checks.h"
#include "robustx/coverage.h"

namespace robustx {
namespace {

constexpr int kThreads = kMaxThreads;

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    neuron_stats_kernel(const scalar_t* __restrict__ act, int64_t rows, int64_t l_count, double* __restrict__ v,
                        double* __restrict__ row_min, double* __restrict__ row_max) {
  neuron_stats_body(CudaWarp<kThreads>{}, act, rows, l_count, v, row_min, row_max);
}

__global__ void __launch_bounds__(kThreads)
    input_reduce_kernel(const double* __restrict__ v, const double* __restrict__ row_min,
                        const double* __restrict__ row_max, int64_t n_count, int64_t m_count, int64_t top_k,
                        double* __restrict__ input_min, double* __restrict__ input_max,
                        int64_t* __restrict__ topk_idx, bool* __restrict__ topk_hit) {
  input_reduce_body(CudaBlock<kThreads>{}, v, row_min, row_max, n_count, m_count, top_k, input_min, input_max, topk_idx,
                    topk_hit);
}

__global__ void __launch_bounds__(kThreads)
    update_flags_kernel(const double* __restrict__ v, const double* __restrict__ low, const double* __restrict__ high,
                        const double* __restrict__ input_min, const double* __restrict__ input_max, int64_t n_count,
                        int64_t m_count, int64_t k, double threshold, bool* __restrict__ sections,
                        bool* __restrict__ upper, bool* __restrict__ lower, bool* __restrict__ above) {
  update_flags_body(CudaBlock<kThreads>{}, v, low, high, input_min, input_max, n_count, m_count, k, threshold, sections,
                    upper, lower, above);
}

unsigned grid_of(int64_t work, int64_t per_block) {
  return static_cast<unsigned>(blocks_for(work, per_block, kCoverageMaxBlocks));
}

at::Tensor coverage_update_cuda(const at::Tensor& act, const at::Tensor& low, const at::Tensor& high, int64_t k,
                                double threshold, int64_t top_k, at::Tensor& sections, at::Tensor& upper,
                                at::Tensor& lower, at::Tensor& above, at::Tensor& topk_hit) {
  check_coverage_args(act, low, high, k, top_k, {&sections, &upper, &lower, &above, &topk_hit}, sections);
  const c10::cuda::CUDAGuard guard(act.device());
  const at::Tensor a = act.contiguous();
  const int64_t n_count = a.size(0), m_count = a.size(1), l_count = a.size(2);
  at::Tensor topk_idx = at::empty({n_count, top_k}, a.options().dtype(at::kLong));
  if (n_count == 0) return topk_idx;
  const auto f64 = a.options().dtype(at::kDouble);
  at::Tensor v = at::empty({n_count * m_count}, f64), row_min = at::empty({n_count * m_count}, f64),
             row_max = at::empty({n_count * m_count}, f64);
  at::Tensor input_min = at::empty({n_count}, f64), input_max = at::empty({n_count}, f64);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "coverage_update_cuda", [&] {
    neuron_stats_kernel<scalar_t><<<grid_of(n_count * m_count, kThreads / 32), kThreads, 0, stream>>>(
        a.data_ptr<scalar_t>(), n_count * m_count, l_count, v.data_ptr<double>(), row_min.data_ptr<double>(),
        row_max.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  input_reduce_kernel<<<grid_of(n_count, 1), kThreads, 0, stream>>>(
      v.data_ptr<double>(), row_min.data_ptr<double>(), row_max.data_ptr<double>(), n_count, m_count, top_k,
      input_min.data_ptr<double>(), input_max.data_ptr<double>(), topk_idx.data_ptr<int64_t>(),
      topk_hit.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  update_flags_kernel<<<grid_of(n_count * m_count, kThreads), kThreads, 0, stream>>>(
      v.data_ptr<double>(), low.data_ptr<double>(), high.data_ptr<double>(), input_min.data_ptr<double>(),
      input_max.data_ptr<double>(), n_count, m_count, k, threshold, sections.data_ptr<bool>(), upper.data_ptr<bool>(),
      lower.data_ptr<bool>(), above.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return topk_idx;
}

}  // namespace

TORCH_LIBRARY_IMPL(robustx, CUDA, m) { m.impl("coverage_update", &coverage_update_cuda); }

}  // namespace robustx
