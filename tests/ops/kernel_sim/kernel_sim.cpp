// Host simulation of the robustx CUDA kernels: the kernels' own bodies (csrc/include/robustx/,
// compiled here by g++) run on HostGroup, which runs a group's threads one after the other
// and reduces their shares in a loop, one group after the other over the whole grid.
// tests/test_kernel_sim.py loads this file with ctypes and compares it with the CPU
// operators, so the kernels' index arithmetic and work split are tested on a machine
// without a GPU. `threads` = 0 means the block size the kernel launches, `blocks` = 0 the
// grid it launches (fewer blocks exercise the grid-stride loops).
#include <cstdint>
#include <vector>

#include "robustx/ball.h"
#include "robustx/coverage.h"
#include "robustx/norms.h"

namespace robustx {
namespace {

// The host group of "Kernel bodies" (robustx/common.h): group `group` of `groups`, `threads` wide.
struct HostGroup {
  int64_t group, groups, threads;
  int64_t* failed_checks;

  int64_t index() const { return group; }
  int64_t count() const { return groups; }
  int64_t size() const { return threads; }

  template <typename F>
  void each(F f) const {
    for (int64_t tid = 0; tid < threads; ++tid) f(tid);
  }

  template <typename F, typename Op>
  auto reduce(F share, Op op) const {
    auto total = share(int64_t{0});
    for (int64_t tid = 1; tid < threads; ++tid) total = op(total, share(tid));
    return total;
  }

  template <typename F>
  void leader(F f) const {
    f();
  }

  bool check(bool ok, const char*) const {
    if (!ok) ++*failed_checks;
    return ok;
  }

  template <typename T>
  void max_into(T* address, T value) const {
    *address = nan_max(value, *address);  // the kernel's atomic max: NaN wins
  }
};

// Runs body(group) for every group of a grid of `blocks` groups of `threads` threads;
// returns the number of failed checks.
template <typename Body>
int64_t launch(int64_t blocks, int64_t threads, Body body) {
  int64_t failed = 0;
  for (int64_t b = 0; b < blocks; ++b) body(HostGroup{b, blocks, threads, &failed});
  return failed;
}

template <typename T>
void ball_sample_grid(const T* centers, T* out, int64_t n_centers, int64_t n, int64_t d, int norm, double radius,
                      Box<double> clip, uint64_t seed, int64_t offset, int threads, int64_t blocks) {
  const int64_t points = n_centers * n;
  const Box<T> box{clip.has_min, clip.has_max, static_cast<T>(clip.lo), static_cast<T>(clip.hi)};
  launch(blocks ? blocks : blocks_for(points, 1, kMaxBlocks), threads ? threads : threads_for((d + 3) / 4),
         [&](const HostGroup& g) {
           ball_sample_body<T, T>(g, centers, out, points, n, d, norm_of(norm), static_cast<T>(radius), box, seed,
                                  offset);
         });
}

template <typename T>
int64_t grad_norm_grid(const T* jac, const int64_t* source, const int64_t* targets, T* maxima, T* norms, int64_t m,
                       int64_t s, int64_t k, int64_t d, int64_t t, int64_t batch_size, int q, int threads,
                       int64_t blocks) {
  for (int64_t i = 0; i < m * t * (s / batch_size); ++i) maxima[i] = T(0);  // at::zeros
  const int64_t tasks = m * t * s;
  return launch(blocks ? blocks : blocks_for(tasks, 1, kMaxBlocks), threads ? threads : threads_for(d),
                [&](const HostGroup& g) {
                  grad_norm_batch_max_body<T, T, T>(g, jac, source, targets, maxima, norms, tasks, t, s, k, d,
                                                    batch_size, norm_of(q));
                });
}

template <typename T>
void coverage_grid(const T* act, int64_t n_count, int64_t m_count, int64_t l_count, const double* low,
                   const double* high, int64_t k, double threshold, int64_t top_k, bool* sections, bool* upper,
                   bool* lower, bool* above, bool* topk_hit, int64_t* topk_idx, int threads, int64_t blocks) {
  const int64_t rows = n_count * m_count, block_threads = threads ? threads : kMaxThreads;
  std::vector<double> v(rows), row_min(rows), row_max(rows), input_min(n_count), input_max(n_count);
  const int64_t warps = blocks_for(rows, kMaxThreads / 32, kCoverageMaxBlocks) * (kMaxThreads / 32);
  launch(warps, 32, [&](const HostGroup& warp) {
    neuron_stats_body(warp, act, rows, l_count, v.data(), row_min.data(), row_max.data());
  });
  launch(blocks ? blocks : blocks_for(n_count, 1, kCoverageMaxBlocks), block_threads, [&](const HostGroup& g) {
    input_reduce_body(g, v.data(), row_min.data(), row_max.data(), n_count, m_count, top_k, input_min.data(),
                      input_max.data(), topk_idx, topk_hit);
  });
  launch(blocks ? blocks : blocks_for(rows, block_threads, kCoverageMaxBlocks), block_threads, [&](const HostGroup& g) {
    update_flags_body(g, v.data(), low, high, input_min.data(), input_max.data(), n_count, m_count, k, threshold,
                      sections, upper, lower, above);
  });
}

}  // namespace
}  // namespace robustx

using namespace robustx;

extern "C" {

// norm: 1, 2 or 0 (inf).
void sim_ball_sample_f32(const float* centers, float* out, int64_t n_centers, int64_t n, int64_t d, int norm,
                         double radius, int has_min, double lo, int has_max, double hi, uint64_t seed, int64_t offset,
                         int threads, int64_t blocks) {
  ball_sample_grid(centers, out, n_centers, n, d, norm, radius, Box<double>{has_min != 0, has_max != 0, lo, hi}, seed,
                   offset, threads, blocks);
}

void sim_ball_sample_f64(const double* centers, double* out, int64_t n_centers, int64_t n, int64_t d, int norm,
                         double radius, int has_min, double lo, int has_max, double hi, uint64_t seed, int64_t offset,
                         int threads, int64_t blocks) {
  ball_sample_grid(centers, out, n_centers, n, d, norm, radius, Box<double>{has_min != 0, has_max != 0, lo, hi}, seed,
                   offset, threads, blocks);
}

// q: 1, 2 or 0 (inf); source may be null. Returns the tasks skipped for an out-of-range row
// (where the CUDA kernel's device-side assert fires).
int64_t sim_grad_norm_batch_max_f32(const float* jac, const int64_t* source, const int64_t* targets, float* maxima,
                                    float* norms, int64_t m, int64_t s, int64_t k, int64_t d, int64_t t,
                                    int64_t batch_size, int q, int threads, int64_t blocks) {
  return grad_norm_grid(jac, source, targets, maxima, norms, m, s, k, d, t, batch_size, q, threads, blocks);
}

int64_t sim_grad_norm_batch_max_f64(const double* jac, const int64_t* source, const int64_t* targets, double* maxima,
                                    double* norms, int64_t m, int64_t s, int64_t k, int64_t d, int64_t t,
                                    int64_t batch_size, int q, int threads, int64_t blocks) {
  return grad_norm_grid(jac, source, targets, maxima, norms, m, s, k, d, t, batch_size, q, threads, blocks);
}

// The three coverage kernels on float32 / float64 activations (N, M, L); states are
// OR-updated in place. `threads` and `blocks` apply to input_reduce and update_flags
// (neuron_stats keeps its warps).
void sim_coverage_update_f32(const float* act, int64_t n_count, int64_t m_count, int64_t l_count, const double* low,
                             const double* high, int64_t k, double threshold, int64_t top_k, bool* sections,
                             bool* upper, bool* lower, bool* above, bool* topk_hit, int64_t* topk_idx, int threads,
                             int64_t blocks) {
  coverage_grid(act, n_count, m_count, l_count, low, high, k, threshold, top_k, sections, upper, lower, above, topk_hit,
                topk_idx, threads, blocks);
}

void sim_coverage_update_f64(const double* act, int64_t n_count, int64_t m_count, int64_t l_count, const double* low,
                             const double* high, int64_t k, double threshold, int64_t top_k, bool* sections,
                             bool* upper, bool* lower, bool* above, bool* topk_hit, int64_t* topk_idx, int threads,
                             int64_t blocks) {
  coverage_grid(act, n_count, m_count, l_count, low, high, k, threshold, top_k, sections, upper, lower, above, topk_hit,
                topk_idx, threads, blocks);
}

}  // extern "C"
