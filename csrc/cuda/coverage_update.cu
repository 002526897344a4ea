// CUDA kernels of robustx::coverage_update, three launches:
//  1. neuron_stats: one warp per (input, neuron) reads its L elements once: mean, min, max;
//  2. input_reduce: one block per input: the input's min/max element and its top-k neurons;
//  3. update_flags: one thread per (input, neuron) sets the section / corner / threshold bits.
// Several threads may set the same flag: they all store `true`, so the races are benign.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cfloat>

#include "robustx/block_reduce.cuh"
#include "robustx/checks.h"
#include "robustx/coverage.h"

namespace robustx {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
__global__ void neuron_stats_kernel(const scalar_t* __restrict__ act, int64_t rows, int64_t l_count,
                                    double* __restrict__ v, double* __restrict__ row_min, double* __restrict__ row_max) {
  const int64_t warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) / 32;
  const int lane = threadIdx.x % 32;
  for (int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32; row < rows; row += warps) {
    const scalar_t* x = act + row * l_count;
    double sum = 0, lo = DBL_MAX, hi = -DBL_MAX;
    for (int64_t l = lane; l < l_count; l += 32) {
      const double value = static_cast<double>(x[l]);
      sum += value;
      lo = nan_min(value, lo);
      hi = nan_max(value, hi);
    }
    sum = warp_reduce(sum, [](double a, double b) { return a + b; });
    lo = warp_reduce(lo, [](double a, double b) { return nan_min(a, b); });
    hi = warp_reduce(hi, [](double a, double b) { return nan_max(a, b); });
    if (lane == 0) {
      v[row] = sum / static_cast<double>(l_count);
      row_min[row] = lo;
      row_max[row] = hi;
    }
  }
}

struct Ranked {
  double value;
  int64_t index;  // -1: no candidate
};

__device__ __forceinline__ Ranked better(Ranked a, Ranked b) {
  if (a.index < 0) return b;
  if (b.index < 0) return a;
  return ranks_before(a.value, a.index, b.value, b.index) ? a : b;
}

__device__ __forceinline__ Ranked shfl_down(Ranked r, int delta) {
  return Ranked{__shfl_down_sync(0xffffffffu, r.value, delta), __shfl_down_sync(0xffffffffu, r.index, delta)};
}

__device__ Ranked block_best(Ranked r) {
  __shared__ Ranked partial[kThreads / 32];
  __shared__ Ranked result;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int delta = 16; delta > 0; delta >>= 1) r = better(r, shfl_down(r, delta));
  if (lane == 0) partial[warp] = r;
  __syncthreads();
  if (threadIdx.x == 0) {
    Ranked best = partial[0];
    for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) best = better(best, partial[w]);
    result = best;
  }
  __syncthreads();
  const Ranked out = result;
  __syncthreads();
  return out;
}

// One block per input n: input_min/max over its neurons' row min/max, then top_k rounds of
// selecting the best neuron ranked after the previous pick.
__global__ void input_reduce_kernel(const double* __restrict__ v, const double* __restrict__ row_min,
                                    const double* __restrict__ row_max, int64_t m_count, int64_t top_k,
                                    double* __restrict__ input_min, double* __restrict__ input_max,
                                    int64_t* __restrict__ topk_idx, bool* __restrict__ topk_hit) {
  const int64_t n = blockIdx.x;
  const double* vn = v + n * m_count;
  double lo = DBL_MAX, hi = -DBL_MAX;
  for (int64_t m = threadIdx.x; m < m_count; m += blockDim.x) {
    lo = nan_min(row_min[n * m_count + m], lo);
    hi = nan_max(row_max[n * m_count + m], hi);
  }
  lo = block_reduce(lo, [](double a, double b) { return nan_min(a, b); });
  hi = block_reduce(hi, [](double a, double b) { return nan_max(a, b); });
  if (threadIdx.x == 0) {
    input_min[n] = lo;
    input_max[n] = hi;
  }
  Ranked previous{0, -1};
  for (int64_t r = 0; r < top_k; ++r) {
    Ranked best{0, -1};
    for (int64_t m = threadIdx.x; m < m_count; m += blockDim.x) {
      if (previous.index < 0 || ranks_before(previous.value, previous.index, vn[m], m)) best = better(best, Ranked{vn[m], m});
    }
    previous = block_best(best);
    if (threadIdx.x == 0) {
      topk_idx[n * top_k + r] = previous.index;
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
    const double value = v[nm];
    const int64_t idx = section_index(value, low[m], high[m], k);
    if (idx >= 0) sections[m * k + idx] = true;
    if (value > high[m]) upper[m] = true;
    if (value < low[m]) lower[m] = true;
    if (scaled_value(value, input_min[n], input_max[n]) > threshold) above[m] = true;
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
