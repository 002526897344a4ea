// CUDA kernel of robustx::grad_norm_batch_max: one block per (image, target, sample)
// reduces the sample's q-norm (in double, as the CPU kernel; the per-thread share is the
// host-tested norm_share of robustx/norms.h, the block sum CUB's) and folds it into its
// batch maximum with an atomic max (norms are >= 0, so the float bit patterns order like
// the values; NaN is canonical and positive, so it wins and propagates). Index ranges
// and devices are checked before the launch (check_grad_norm_args).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <type_traits>

#include "robustx/block_reduce.cuh"
#include "robustx/grad_norm_batch_max_checks.h"
#include "robustx/norms.h"

namespace robustx {
namespace {

__device__ __forceinline__ void atomic_max_nonneg(float* address, float value) {
  atomicMax(reinterpret_cast<int*>(address), value != value ? 0x7fc00000 : __float_as_int(value));
}

__device__ __forceinline__ void atomic_max_nonneg(double* address, double value) {
  const long long bits = value != value ? 0x7ff8000000000000LL : __double_as_longlong(value);
  atomicMax(reinterpret_cast<long long*>(address), bits);
}

struct NormCombine {
  DualNorm q;
  __device__ double operator()(double a, double b) const { return norm_combine(q, a, b); }
};

template <typename scalar_t, typename out_t, int kThreads>
__global__ void __launch_bounds__(kThreads)
    grad_norm_batch_max_kernel(const scalar_t* __restrict__ jac, const int64_t* __restrict__ source,
                               const int64_t* __restrict__ targets, out_t* __restrict__ maxima,
                               out_t* __restrict__ norms, int64_t tasks, int64_t t_count, int64_t s_count,
                               int64_t k_count, int64_t d, int64_t batch_size, DualNorm q) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t task = blockIdx.x; task < tasks; task += gridDim.x) {
    const GradTask g = grad_task(task, t_count, s_count);
    const scalar_t* base = jac + (g.m * s_count + g.s) * k_count * d;
    const scalar_t* a = source ? base + source[g.m] * d : nullptr;
    const double share = norm_share<scalar_t, acc_t>(q, a, base + targets[g.m * t_count + g.t] * d, d, threadIdx.x, kThreads);
    const double total = block_all_reduce<kThreads>(share, NormCombine{q});
    if (threadIdx.x == 0) {
      const out_t value = static_cast<out_t>(static_cast<acc_t>(norm_finalize(q, total)));
      if (norms) norms[norm_slot(g, t_count, s_count)] = value;
      atomic_max_nonneg(maxima + batch_slot(g, t_count, s_count, batch_size), value);
    }
  }
}

std::tuple<at::Tensor, at::Tensor> grad_norm_batch_max_cuda(const at::Tensor& jac,
                                                            const std::optional<at::Tensor>& source,
                                                            const at::Tensor& targets, double q_value,
                                                            int64_t batch_size, bool return_norms) {
  const DualNorm q = check_grad_norm_args(jac, source, targets, q_value, batch_size);
  const c10::cuda::CUDAGuard guard(jac.device());
  const at::Tensor g = jac.contiguous(), tgt = targets.contiguous();
  const int64_t m_count = g.size(0), s_count = g.size(1), k_count = g.size(2), d = g.size(3), t_count = tgt.size(1);
  const at::Tensor src = source.has_value() ? source->contiguous() : at::Tensor();
  const auto out_type = g.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor maxima = at::zeros({m_count, t_count, s_count / batch_size}, g.options().dtype(out_type));
  at::Tensor norms = at::empty({return_norms ? m_count * t_count * s_count : 0}, g.options().dtype(out_type));
  const int64_t tasks = m_count * t_count * s_count;
  if (tasks > 0) {
    const unsigned grid = static_cast<unsigned>(std::min<int64_t>(tasks, 1 << 20));
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "grad_norm_batch_max_cuda", [&] {
      using out_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
      with_block_threads(d, [&](auto threads) {
        grad_norm_batch_max_kernel<scalar_t, out_t, decltype(threads)::value>
            <<<grid, decltype(threads)::value, 0, stream>>>(
                g.data_ptr<scalar_t>(), src.defined() ? src.data_ptr<int64_t>() : nullptr, tgt.data_ptr<int64_t>(),
                maxima.data_ptr<out_t>(), return_norms ? norms.data_ptr<out_t>() : nullptr, tasks, t_count, s_count,
                k_count, d, batch_size, q);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  if (return_norms) norms = norms.view({m_count, t_count, s_count});
  return {maxima, norms};
}

}  // namespace

TORCH_LIBRARY_IMPL(robustx, CUDA, m) { m.impl("grad_norm_batch_max", &grad_norm_batch_max_cuda); }

}  // namespace robustx
