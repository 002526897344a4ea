// Host simulation of the robustx CUDA kernels: every block runs its threads one after the
// other with the kernel's own per-thread code (csrc/include/robustx/*.h, compiled here by
// g++), and the CUB block / warp reductions become a loop over the threads' shares with the
// kernel's combine step. tests/test_kernel_sim.py loads this file with ctypes and compares
// it with the CPU operators, so the kernels' index arithmetic and work split are tested on
// a machine without a GPU. `threads` = 0 means the block size the kernel launches.
#include <cstdint>
#include <vector>

#include "robustx/ball.h"
#include "robustx/coverage.h"
#include "robustx/norms.h"

namespace robustx {
namespace {

template <typename T>
void ball_sample_blocks(const T* centers, T* out, int64_t n_centers, int64_t n, int64_t d, BallNorm norm,
                        double radius_value, Box<double> clip_box, uint64_t seed, int64_t offset, int threads) {
  if (threads == 0) threads = threads_for((d + 3) / 4);
  const T radius = static_cast<T>(radius_value);
  const Box<T> box{clip_box.has_min, clip_box.has_max, static_cast<T>(clip_box.lo), static_cast<T>(clip_box.hi)};
  for (int64_t point = 0; point < n_centers * n; ++point) {  // one CUDA block per point
    const int64_t i = point / n;
    const PointStream stream(seed, static_cast<uint64_t>(offset + point % n), static_cast<uint32_t>(i));
    T scale = T(0);
    if (norm != BallNorm::Linf) {
      double total = 0;
      for (int tid = 0; tid < threads; ++tid) total += direction_norm_share<T>(norm, stream, d, tid, threads);
      scale = direction_scale(norm, stream, radius, d, total);
    }
    for (int tid = 0; tid < threads; ++tid) {
      write_point_share<T, T>(norm, stream, centers + i * d, out + point * d, d, radius, scale, box, tid, threads);
    }
  }
}

template <typename T>
void grad_norm_blocks(const T* jac, const int64_t* source, const int64_t* targets, T* maxima, T* norms,
                      int64_t m_count, int64_t s_count, int64_t k_count, int64_t d, int64_t t_count,
                      int64_t batch_size, DualNorm q, int threads) {
  if (threads == 0) threads = threads_for(d);
  for (int64_t i = 0; i < m_count * t_count * (s_count / batch_size); ++i) maxima[i] = T(0);  // at::zeros
  for (int64_t task = 0; task < m_count * t_count * s_count; ++task) {  // one CUDA block per task
    const GradTask g = grad_task(task, t_count, s_count);
    const T* base = jac + (g.m * s_count + g.s) * k_count * d;
    const T* a = source ? base + source[g.m] * d : nullptr;
    double total = 0;
    for (int tid = 0; tid < threads; ++tid) {
      total = norm_combine(q, total, norm_share<T, T>(q, a, base + targets[g.m * t_count + g.t] * d, d, tid, threads));
    }
    const T value = static_cast<T>(norm_finalize(q, total));
    if (norms) norms[norm_slot(g, t_count, s_count)] = value;
    T& slot = maxima[batch_slot(g, t_count, s_count, batch_size)];
    slot = nan_max(value, slot);  // the kernel's atomic max: NaN wins
  }
}

BallNorm ball_norm(int code) { return code == 1 ? BallNorm::L1 : (code == 2 ? BallNorm::L2 : BallNorm::Linf); }
DualNorm dual_norm(int code) { return code == 1 ? DualNorm::L1 : (code == 2 ? DualNorm::L2 : DualNorm::Linf); }

}  // namespace
}  // namespace robustx

using namespace robustx;

extern "C" {

// norm: 1, 2 or 0 (inf).
void sim_ball_sample_f32(const float* centers, float* out, int64_t n_centers, int64_t n, int64_t d, int norm,
                         double radius, int has_min, double lo, int has_max, double hi, uint64_t seed, int64_t offset,
                         int threads) {
  ball_sample_blocks(centers, out, n_centers, n, d, ball_norm(norm), radius, Box<double>{has_min != 0, has_max != 0, lo, hi},
                     seed, offset, threads);
}

void sim_ball_sample_f64(const double* centers, double* out, int64_t n_centers, int64_t n, int64_t d, int norm,
                         double radius, int has_min, double lo, int has_max, double hi, uint64_t seed, int64_t offset,
                         int threads) {
  ball_sample_blocks(centers, out, n_centers, n, d, ball_norm(norm), radius, Box<double>{has_min != 0, has_max != 0, lo, hi},
                     seed, offset, threads);
}

// q: 1, 2 or 0 (inf); source may be null.
void sim_grad_norm_batch_max_f32(const float* jac, const int64_t* source, const int64_t* targets, float* maxima,
                                 float* norms, int64_t m, int64_t s, int64_t k, int64_t d, int64_t t,
                                 int64_t batch_size, int q, int threads) {
  grad_norm_blocks(jac, source, targets, maxima, norms, m, s, k, d, t, batch_size, dual_norm(q), threads);
}

void sim_grad_norm_batch_max_f64(const double* jac, const int64_t* source, const int64_t* targets, double* maxima,
                                 double* norms, int64_t m, int64_t s, int64_t k, int64_t d, int64_t t,
                                 int64_t batch_size, int q, int threads) {
  grad_norm_blocks(jac, source, targets, maxima, norms, m, s, k, d, t, batch_size, dual_norm(q), threads);
}

// The three coverage kernels on float32 activations (N, M, L); states are OR-updated in place.
void sim_coverage_update_f32(const float* act, int64_t n_count, int64_t m_count, int64_t l_count, const double* low,
                             const double* high, int64_t k, double threshold, int64_t top_k, bool* sections,
                             bool* upper, bool* lower, bool* above, bool* topk_hit, int64_t* topk_idx, int threads) {
  if (threads == 0) threads = kMaxThreads;
  std::vector<double> v(n_count * m_count), row_min(n_count * m_count), row_max(n_count * m_count);
  std::vector<double> input_min(n_count), input_max(n_count);
  for (int64_t row = 0; row < n_count * m_count; ++row) {  // neuron_stats: one warp per row
    RowStats s{0.0, empty_range()};
    for (int lane = 0; lane < 32; ++lane) s = merge(s, row_stats_share(act + row * l_count, l_count, lane, 32));
    v[row] = s.sum / static_cast<double>(l_count);
    row_min[row] = s.range.lo;
    row_max[row] = s.range.hi;
  }
  for (int64_t n = 0; n < n_count; ++n) {  // input_reduce: one block per input
    const int64_t row = n * m_count;
    Range r = empty_range();
    for (int tid = 0; tid < threads; ++tid) {
      r = merge(r, input_range_share(row_min.data() + row, row_max.data() + row, m_count, tid, threads));
    }
    input_min[n] = r.lo;
    input_max[n] = r.hi;
    Ranked previous{0.0, -1};
    for (int64_t round = 0; round < top_k; ++round) {
      Ranked best{0.0, -1};
      for (int tid = 0; tid < threads; ++tid) best = better(best, topk_share(v.data() + row, m_count, previous, tid, threads));
      previous = best;
      topk_idx[n * top_k + round] = previous.index;
      topk_hit[previous.index] = true;
    }
  }
  for (int64_t nm = 0; nm < n_count * m_count; ++nm) {  // update_flags: one thread per (input, neuron)
    const int64_t n = nm / m_count, m = nm % m_count;
    set_flags(neuron_flags(v[nm], low[m], high[m], k, input_min[n], input_max[n], threshold), m, k, sections, upper,
              lower, above);
  }
}

}  // extern "C"
