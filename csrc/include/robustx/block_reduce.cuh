// The CUDA groups that run the kernel bodies of robustx/*.h (see "Kernel bodies" in
// robustx/common.h): CudaBlock (a block of kThreads threads) and CudaWarp (the warps of such
// blocks). Reductions are CUB's (shipped with the CUDA toolkit): every lane contributes its
// own value, so no lane is ever padded with a non-identity element. kThreads is a power of
// two in [32, 256], fixed at compile time.
#pragma once
#if defined(__CUDACC__)
#include <c10/macros/Macros.h>

#include <cub/block/block_reduce.cuh>
#include <cub/warp/warp_reduce.cuh>

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

// *address = max(*address, value) for value >= 0 or NaN: non-negative floats order like their
// bit patterns, and a canonical (positive) NaN wins, so it propagates.
__device__ __forceinline__ void atomic_max_nonneg(float* address, float value) {
  atomicMax(reinterpret_cast<int*>(address), value != value ? 0x7fc00000 : __float_as_int(value));
}

__device__ __forceinline__ void atomic_max_nonneg(double* address, double value) {
  const long long bits = value != value ? 0x7ff8000000000000LL : __double_as_longlong(value);
  atomicMax(reinterpret_cast<long long*>(address), bits);
}

// One CUDA block of kThreads threads per group; blockIdx.x indexes the groups.
template <int kThreads>
struct CudaBlock {
  __device__ int64_t index() const { return blockIdx.x; }
  __device__ int64_t count() const { return gridDim.x; }
  __host__ __device__ static constexpr int64_t size() { return kThreads; }
  template <typename F>
  __device__ void each(F f) const {
    f(static_cast<int64_t>(threadIdx.x));
  }
  template <typename F, typename Op>
  __device__ auto reduce(F share, Op op) const {
    return block_all_reduce<kThreads>(share(static_cast<int64_t>(threadIdx.x)), op);
  }
  template <typename F>
  __device__ void leader(F f) const {
    if (threadIdx.x == 0) f();
  }
  __device__ bool check(bool ok, const char* what) const {
    CUDA_KERNEL_ASSERT_MSG(ok, what);
    return ok;
  }
  template <typename T>
  __device__ void max_into(T* address, T value) const {
    atomic_max_nonneg(address, value);
  }
};

// One warp per group, in blocks of kThreads threads: warp w = global thread / 32 (the
// bodies run on warps use index, count, size, reduce and leader).
template <int kThreads>
struct CudaWarp {
  static constexpr int kWarps = kThreads / 32;
  __device__ int64_t index() const { return (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / 32; }
  __device__ int64_t count() const { return static_cast<int64_t>(gridDim.x) * kWarps; }
  __host__ __device__ static constexpr int64_t size() { return 32; }
  // CUB's warp reduction (valid in lane 0), broadcast to the warp through shared memory.
  template <typename F, typename Op>
  __device__ auto reduce(F share, Op op) const {
    using T = decltype(share(int64_t{0}));
    using Reduce = cub::WarpReduce<T>;
    __shared__ typename Reduce::TempStorage storage[kWarps];
    __shared__ T result[kWarps];
    const int warp = threadIdx.x / 32;
    const T total = Reduce(storage[warp]).Reduce(share(static_cast<int64_t>(threadIdx.x % 32)), op);
    if (threadIdx.x % 32 == 0) result[warp] = total;
    __syncwarp();
    const T out = result[warp];
    __syncwarp();
    return out;
  }
  template <typename F>
  __device__ void leader(F f) const {
    if (threadIdx.x % 32 == 0) f();
  }
};

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
