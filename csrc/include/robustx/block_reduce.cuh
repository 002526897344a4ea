// Warp- and block-level reductions used by the CUDA kernels (blockDim.x a multiple of 32, <= 1024).
#pragma once
#if defined(__CUDACC__)

namespace robustx {

template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T value, Op op) {
  for (int delta = 16; delta > 0; delta >>= 1) value = op(value, __shfl_down_sync(0xffffffffu, value, delta));
  return value;
}

// Reduces `value` over the block with `op`; the result is valid in every thread.
template <typename T, typename Op>
__device__ T block_reduce(T value, Op op) {
  __shared__ T partial[32];
  __shared__ T result;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  value = warp_reduce(value, op);
  if (lane == 0) partial[warp] = value;
  __syncthreads();
  if (warp == 0) {
    T v = lane < warps ? partial[lane] : partial[0];
    v = warp_reduce(v, op);
    if (lane == 0) result = v;
  }
  __syncthreads();
  const T out = result;
  __syncthreads();  // `result` and `partial` may be reused by the next call
  return out;
}

// Threads for a block looping over `work` items: a multiple of 32 in [32, 256].
inline int threads_for(int64_t work) {
  const int64_t t = ((work + 31) / 32) * 32;
  return static_cast<int>(t < 32 ? 32 : (t > 256 ? 256 : t));
}

}  // namespace robustx

#endif
