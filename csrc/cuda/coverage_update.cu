// CUDA kernels of robustx::coverage_update, three launches:
//  1. neuron_stats: one warp per (input, neuron) reads its L elements once: mean, min, max;
//  2. input_reduce: one block per input: the input's min/max element and its top-k neurons;
//  3. update_flags: one thread per (input, neuron) sets the section / corner / threshold bits.
// Several threads may set the same flag: they all store `true`, so the races are benign.
// Per-thread work and combine steps are the host-tested code of robustx/coverage.h; the
// warp and block reductions are CUB's. Speed work left for a GPU campaign: with element-wise
// neurons (L = 1) neuron_stats leaves 31 of 32 lanes idle, and input_reduce rescans the M
// neuron values once per top-k round.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cub/warp/warp_reduce.cuh>

#include <algorithm>

#include "robustx/block_reduce.cuh"
#include "robustx/coverage_update_checks.h"
#include "robustx/coverage.h"

namespace robustx {
namespace {

constexpr int kThreads = kMaxThreads;
constexpr int kWarps = kThreads / 32;

struct MergeStats {
  __device__ RowStats operator()(RowStats a, RowStats b) const { return merge(a, b); }
};

struct MergeRange {
  __device__ Range operator()(Range a, Range b) const { return merge(a, b); }
};

struct Better {
  __device__ Ranked operator()(Ranked a, Ranked b) const { return better(a, b); }
};

// One warp per (input, neuron) row: lane shares of the row's sum and range, merged by CUB.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    neuron_stats_kernel(const scalar_t* __restrict__ act, int64_t rows, int64_t l_count, double* __restrict__ v,
                        double* __restrict__ row_min, double* __restrict__ row_max) {
  using WarpMerge = cub::WarpReduce<RowStats>;
  __shared__ typename WarpMerge::TempStorage storage[kWarps];
  const int64_t warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) / 32;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32; row < rows; row += warps) {
    const RowStats s = WarpMerge(storage[warp]).Reduce(row_stats_share(act + row * l_count, l_count, lane, 32),
                                                       MergeStats{});
    if (lane == 0) {
      v[row] = s.sum / static_cast<double>(l_count);
      row_min[row] = s.range.lo;
      row_max[row] = s.range.hi;
    }
    __syncwarp();
  }
}

// One block per input n: input_min/max over its neurons' element ranges, then top_k rounds of
// selecting the best neuron ranked after the previous pick.
__global__ void __launch_bounds__(kThreads)
    input_reduce_kernel(const double* __restrict__ v, const double* __restrict__ row_min,
                        const double* __restrict__ row_max, int64_t m_count, int64_t top_k,
                        double* __restrict__ input_min, double* __restrict__ input_max,
                        int64_t* __restrict__ topk_idx, bool* __restrict__ topk_hit) {
  const int64_t n = blockIdx.x, row = n * m_count;
  const Range r = block_all_reduce<kThreads>(
      input_range_share(row_min + row, row_max + row, m_count, threadIdx.x, kThreads), MergeRange{});
  if (threadIdx.x == 0) {
    input_min[n] = r.lo;
    input_max[n] = r.hi;
  }
  Ranked previous{0.0, -1};
  for (int64_t round = 0; round < top_k; ++round) {
    previous = block_all_reduce<kThreads>(topk_share(v + row, m_count, previous, threadIdx.x, kThreads), Better{});
    if (threadIdx.x == 0) {
      topk_idx[n * top_k + round] = previous.index;
      topk_hit[previous.index] = true;
    }
  }
}

__global__ void update_flags_kernel(const double* __restrict__ v, const double* __restrict__ low,
                                    const double* __restrict__ high, const double* __restrict__ input_min,
                                    const double* __restrict__ input_max, int64_t n_count, int64_t m_count, int64_t k,
                                    double threshold, bool* __restrict__ sections, bool* __restrict__ upper,
                                    bool* __restrict__ lower, bool* __restrict__ above) {
  const int64_t total = n_count * m_count, stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t nm = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; nm < total; nm += stride) {
    const int64_t n = nm / m_count, m = nm % m_count;
    set_flags(neuron_flags(v[nm], low[m], high[m], k, input_min[n], input_max[n], threshold), m, k, sections, upper,
              lower, above);
  }
}

unsigned blocks_for(int64_t work, int64_t per_block) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((work + per_block - 1) / per_block, 1 << 16)));
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
    neuron_stats_kernel<scalar_t><<<blocks_for(n_count * m_count, kThreads / 32), kThreads, 0, stream>>>(
        a.data_ptr<scalar_t>(), n_count * m_count, l_count, v.data_ptr<double>(), row_min.data_ptr<double>(),
        row_max.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  input_reduce_kernel<<<static_cast<unsigned>(n_count), kThreads, 0, stream>>>(
      v.data_ptr<double>(), row_min.data_ptr<double>(), row_max.data_ptr<double>(), m_count, top_k,
      input_min.data_ptr<double>(), input_max.data_ptr<double>(), topk_idx.data_ptr<int64_t>(),
      topk_hit.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  update_flags_kernel<<<blocks_for(n_count * m_count, kThreads), kThreads, 0, stream>>>(
      v.data_ptr<double>(), low.data_ptr<double>(), high.data_ptr<double>(), input_min.data_ptr<double>(),
      input_max.data_ptr<double>(), n_count, m_count, k, threshold, sections.data_ptr<bool>(), upper.data_ptr<bool>(),
      lower.data_ptr<bool>(), above.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return topk_idx;
}

}  // namespace

TORCH_LIBRARY_IMPL(robustx, CUDA, m) { m.impl("coverage_update", &coverage_update_cuda); }

}  // namespace robustx
