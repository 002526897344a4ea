// Portability macros shared by the CPU (.cpp) and CUDA (.cu) kernels.
#pragma once

#if defined(__CUDACC__)
#define RX_HD __host__ __device__ __forceinline__
#else
#define RX_HD inline
#endif

#include <cstdint>

namespace robustx {

// The Lp norm of an op: the sampling ball of ball_sample (p) or the gradient norm of
// grad_norm_batch_max (its dual q). norm_of maps the exponent 1, 2 or inf (checked by the
// caller) to it.
enum class Norm { L1, L2, Linf };

inline Norm norm_of(double p) { return p == 1.0 ? Norm::L1 : (p == 2.0 ? Norm::L2 : Norm::Linf); }

// Largest CUDA block the kernels launch (their block-wide buffers are sized for it).
constexpr int kMaxThreads = 256;

// Most blocks a grid-stride launch of ball_sample / grad_norm_batch_max uses.
constexpr int64_t kMaxBlocks = int64_t{1} << 20;

// Blocks of a grid-stride launch over `work` items taking `per_block` items per block:
// ceil(work / per_block), clamped to [1, max_blocks]. Host code, shared by the CUDA
// launches and tests/ops/kernel_sim (which runs the same grid).
inline int64_t blocks_for(int64_t work, int64_t per_block, int64_t max_blocks) {
  const int64_t blocks = (work + per_block - 1) / per_block;
  return blocks < 1 ? 1 : (blocks > max_blocks ? max_blocks : blocks);
}

// ---- Kernel bodies. Each CUDA kernel's body is a function template in these headers, run
// by every thread of a `group` of threads (a CUDA block or a warp); the .cu file instantiates
// it with a CUDA group (robustx/block_reduce.cuh), tests/ops/kernel_sim with a host group that
// runs the threads one after the other. A group provides (what its bodies use of):
//   index(), count(): this group's index in the grid and the number of groups (grid-stride
//                     loops over tasks run `for (t = g.index(); t < tasks; t += g.count())`);
//   size():           its threads;
//   each(f):          f(tid) for this thread (CUDA) or for every tid in [0, size) (host);
//   reduce(share, op): op over share(tid) of every thread of the group, valid in every thread;
//   leader(f):        f() once per group (thread 0);
//   check(ok, what):  a device-side assert with message `what` (CUDA) or a counted failure
//                     (host); returns ok;
//   max_into(p, v):   *p = max(*p, v) for v >= 0 or NaN (NaN wins) by every group of the grid.
// Code of a body outside each / reduce / leader runs in every thread, so it must not depend
// on the thread (it runs once per group on the host).

// Threads of a CUDA block looping over `work` items: the smallest power of two in
// [32, kMaxThreads] covering it (kMaxThreads beyond). Host code; the kernels' split of work
// over these threads is simulated on the CPU in tests/ops/kernel_sim.
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
