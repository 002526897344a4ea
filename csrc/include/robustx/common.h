// Portability macros shared by the CPU (.cpp) and CUDA (.cu) kernels.
#pragma once

#if defined(__CUDACC__)
#define RX_HD __host__ __device__ __forceinline__
#else
#define RX_HD inline
#endif

#include <cstdint>

namespace robustx {

// Largest CUDA block the kernels launch (their block-wide buffers are sized for it).
constexpr int kMaxThreads = 256;

// Threads of a CUDA block looping over `work` items: the smallest power of two in
// [32, kMaxThreads] covering it (kMaxThreads beyond). Host code; the kernels' split of work
// over these threads is simulated on the CPU in tests/kernel_sim.
inline int threads_for(int64_t work) {
  int threads = 32;
  while (threads < kMaxThreads && threads < work) threads *= 2;
  return threads;
}

// Min / max that propagate NaN from either argument (like torch.amin / amax).
template <typename T>
RX_HD T nan_min(T a, T b) {
  return (a != a || a < b) ? a : b;
}

template <typename T>
RX_HD T nan_max(T a, T b) {
  return (a != a || a > b) ? a : b;
}

// a * b rounded once and never contracted into an FMA with a following add (nvcc contracts
// by default; the host build passes -ffp-contract=off), so CPU and CUDA round alike.
template <typename T>
RX_HD T mul_rn(T a, T b) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == sizeof(double)) {
    return __dmul_rn(a, b);
  } else {
    return __fmul_rn(a, b);
  }
#else
  return a * b;
#endif
}

}  // namespace robustx
