// Portability macros shared by the CPU (.cpp) and CUDA (.cu) kernels.
#pragma once

#if defined(__CUDACC__)
#define RX_HD __host__ __device__ __forceinline__
#else
#define RX_HD inline
#endif

#include <cstdint>

namespace robustx {

// Min / max that propagate NaN from either argument (like torch.amin / amax).
template <typename T>
RX_HD T nan_min(T a, T b) {
  return (a != a || a < b) ? a : b;
}

template <typename T>
RX_HD T nan_max(T a, T b) {
  return (a != a || a > b) ? a : b;
}

}  // namespace robustx
