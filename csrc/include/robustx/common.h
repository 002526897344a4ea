// Portability macros shared by the CPU (.cpp) and CUDA (.cu) kernels.
#pragma once

#if defined(__CUDACC__)
#define RX_HD __host__ __device__ __forceinline__
#else
#define RX_HD inline
#endif

#include <cstdint>
