// CUDA kernel of robustx::grad_norm_batch_max: one block per (image, target, sample)
// reduces the sample's q-norm (in double, as the CPU kernel) and folds it into its batch
// maximum with an atomic max (norms are >= 0, so the float bit patterns order like the
// values; NaN is canonical and positive, so it wins and propagates). The kernel body is
// grad_norm_batch_max_body of robustx/norms.h, which tests/ops/kernel_sim runs on the host; the
// block sum is CUB's. Shapes and devices are checked before the launch
// (check_grad_norm_args); row indices on the device are checked where the kernel reads them
// (a device-side assert), so the op never waits for the device.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <type_traits>

#include "robustx/block_reduce.cuh"
#include "robustx/grad_norm_batch_max_checks.h"
#include "robustx/norms.h"

namespace robustx {
namespace {

template <typename scalar_t, typename out_t, int kThreads>
__global__ void __launch_bounds__(kThreads)
    grad_norm_batch_max_kernel(const scalar_t* __restrict__ jac, const int64_t* __restrict__ source,
                               const int64_t* __restrict__ targets, out_t* __restrict__ maxima,
                               out_t* __restrict__ norms, int64_t tasks, int64_t t_count, int64_t s_count,
                               int64_t k_count, int64_t d, int64_t batch_size, Norm q) {
  grad_norm_batch_max_body<scalar_t, at::opmath_type<scalar_t>, out_t>(
      CudaBlock<kThreads>{}, jac, source, targets, maxima, norms, tasks, t_count, s_count, k_count, d, batch_size, q);
}

std::tuple<at::Tensor, at::Tensor> grad_norm_batch_max_cuda(const at::Tensor& jac,
                                                            const std::optional<at::Tensor>& source,
                                                            const at::Tensor& targets, double q_value,
                                                            int64_t batch_size, bool return_norms) {
  const Norm q = check_grad_norm_args(jac, source, targets, q_value, batch_size);
  const c10::cuda::CUDAGuard guard(jac.device());
  const at::Tensor g = jac.contiguous(), tgt = targets.contiguous();
  const int64_t m_count = g.size(0), s_count = g.size(1), k_count = g.size(2), d = g.size(3), t_count = tgt.size(1);
  const at::Tensor src = source.has_value() ? source->contiguous() : at::Tensor();
  const auto out_type = g.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor maxima = at::zeros({m_count, t_count, s_count / batch_size}, g.options().dtype(out_type));
  at::Tensor norms = at::empty({return_norms ? m_count * t_count * s_count : 0}, g.options().dtype(out_type));
  const int64_t tasks = m_count * t_count * s_count;
  if (tasks > 0) {
    const auto grid = static_cast<unsigned>(blocks_for(tasks, 1, kMaxBlocks));
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
