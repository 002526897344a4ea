// Block-wide reductions of the CUDA kernels, on CUB (shipped with the CUDA toolkit): every
// lane contributes its own value, so no lane is ever padded with a non-identity element.
// Blocks have kThreads threads, a power of two in [32, 256], fixed at compile time.
#pragma once
#if defined(__CUDACC__)
#include <cub/block/block_reduce.cuh>

#include <cstdint>
#include <type_traits>

#include "robustx/common.h"

namespace robustx {

// Reduces `value` over the block of kThreads threads with `op`; the result is valid in every
// thread. Safe to call repeatedly (the shared storage is released before returning).
template <int kThreads, typename T, typename Op>
__device__ T block_all_reduce(T value, Op op) {
  static_assert(kThreads % 32 == 0 && kThreads >= 32 && kThreads <= kMaxThreads, "kThreads: a multiple of 32 in [32, 256]");
  using Reduce = cub::BlockReduce<T, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  __shared__ T result;
  const T total = Reduce(storage).Reduce(value, op);
  if (threadIdx.x == 0) result = total;
  __syncthreads();
  const T out = result;
  __syncthreads();
  return out;
}

// Calls launch(std::integral_constant<int, T>{}) with T = threads_for(work), so a kernel
// can take its block size as a template argument.
template <typename Launch>
void with_block_threads(int64_t work, Launch&& launch) {
  switch (threads_for(work)) {
    case 32:
      return launch(std::integral_constant<int, 32>{});
    case 64:
      return launch(std::integral_constant<int, 64>{});
    case 128:
      return launch(std::integral_constant<int, 128>{});
    default:
      return launch(std::integral_constant<int, 256>{});
  }
}

}  // namespace robustx

#endif
