// Per-coordinate transforms of uniform sampling in an Lp ball (p = 1, 2, inf), shared
// by the CPU and CUDA kernels of robustx::ball_sample. All math in acc_t (float, or
// double for double inputs), in the same order as robustx.ops.ball_sample_ref.
#pragma once
#include <cmath>

#include "robustx/common.h"
#include "robustx/philox.h"

namespace robustx {

// L-inf: delta_k = R (2u - 1), coordinate-wise uniform in [-R, R]. The product is rounded on
// its own (mul_rn), so center + delta rounds identically on CPU and CUDA.
template <typename acc_t>
RX_HD acc_t linf_delta(acc_t u, acc_t radius) {
  return mul_rn(radius, acc_t(2) * u - acc_t(1));
}

// L1 direction: a standard Laplace variate from one uniform (inverse CDF).
template <typename acc_t>
RX_HD acc_t laplace(acc_t u) {
  return u < acc_t(0.5) ? std::log(acc_t(2) * u) : -std::log(acc_t(2) - acc_t(2) * u);
}

// L2 direction: Box-Muller, (u0, u1) -> (rho cos theta, rho sin theta).
template <typename acc_t>
RX_HD void box_muller(acc_t u0, acc_t u1, acc_t& z0, acc_t& z1) {
  const acc_t rho = std::sqrt(acc_t(-2) * std::log(u0));
  const acc_t theta = static_cast<acc_t>(6.283185307179586) * u1;
  z0 = rho * std::cos(theta);
  z1 = rho * std::sin(theta);
}

// The four direction coordinates of one Philox block (L1: Laplace, L2: two Box-Muller pairs).
template <typename acc_t>
RX_HD void direction_block(Norm norm, const Philox4& bits, acc_t z[4]) {
  acc_t u[4];
  for (int w = 0; w < 4; ++w) u[w] = uniform_from_bits<acc_t>(bits.w[w]);
  if (norm == Norm::L2) {
    box_muller(u[0], u[1], z[0], z[1]);
    box_muller(u[2], u[3], z[2], z[3]);
  } else {
    for (int w = 0; w < 4; ++w) z[w] = laplace(u[w]);
  }
}

// Contribution of one direction coordinate to ||z||_p (squared for L2).
template <typename acc_t>
RX_HD acc_t norm_term(Norm norm, acc_t z) {
  return norm == Norm::L2 ? z * z : std::fabs(z);
}

// r = R U^(1/d): the radius of a point uniform in a d-dimensional ball.
template <typename acc_t>
RX_HD acc_t ball_radius(const PointStream& stream, acc_t radius, int64_t d) {
  const acc_t big_u = uniform_from_bits<acc_t>(stream.block(kRadiusBlock).w[0]);
  return radius * std::exp(std::log(big_u) / static_cast<acc_t>(d));
}

template <typename acc_t>
RX_HD acc_t clip(acc_t x, bool has_min, acc_t lo, bool has_max, acc_t hi) {
  if (has_min && x < lo) x = lo;
  if (has_max && x > hi) x = hi;
  return x;
}

// The optional clip box [lo, hi] of the data domain.
template <typename acc_t>
struct Box {
  bool has_min, has_max;
  acc_t lo, hi;
};

// ---- The two phases of one point on a block of `threads` threads (the CUDA kernel's split;
// tests/ops/kernel_sim runs them on the host with every block size the kernel launches).
// Thread `tid` owns the Philox blocks j = tid, tid + threads, ... (coordinates 4j .. 4j+3).

// Phase 1 (L1/L2): the thread's share of sum_k norm_term(z_k), in double.
template <typename acc_t>
RX_HD double direction_norm_share(Norm norm, const PointStream& stream, int64_t d, int64_t tid, int64_t threads) {
  double share = 0;
  for (int64_t j = tid; j < (d + 3) / 4; j += threads) {
    acc_t z[4];
    direction_block(norm, stream.block(static_cast<uint32_t>(j)), z);
    for (int64_t w = 0; w < 4 && 4 * j + w < d; ++w) share += norm_term(norm, z[w]);
  }
  return share;
}

// The factor r / ||z||_p that maps the direction onto a radius uniform in the ball
// (`total` is the sum of all shares of phase 1; unused for L-inf).
template <typename acc_t>
RX_HD acc_t direction_scale(Norm norm, const PointStream& stream, acc_t radius, int64_t d, double total) {
  if (norm == Norm::Linf) return acc_t(0);
  const acc_t z_norm = static_cast<acc_t>(norm == Norm::L2 ? std::sqrt(total) : total);
  return ball_radius(stream, radius, d) / z_norm;
}

// Phase 2: the thread writes x = clip(center + delta) for its coordinates.
template <typename scalar_t, typename acc_t>
RX_HD void write_point_share(Norm norm, const PointStream& stream, const scalar_t* center, scalar_t* x,
                             int64_t d, acc_t radius, acc_t scale, Box<acc_t> box, int64_t tid, int64_t threads) {
  for (int64_t j = tid; j < (d + 3) / 4; j += threads) {
    const Philox4 bits = stream.block(static_cast<uint32_t>(j));
    acc_t delta[4];
    if (norm == Norm::Linf) {
      for (int w = 0; w < 4; ++w) delta[w] = linf_delta(uniform_from_bits<acc_t>(bits.w[w]), radius);
    } else {
      direction_block(norm, bits, delta);
      for (int w = 0; w < 4; ++w) delta[w] = mul_rn(delta[w], scale);
    }
    for (int64_t w = 0; w < 4 && 4 * j + w < d; ++w) {
      const int64_t k = 4 * j + w;
      x[k] = static_cast<scalar_t>(clip(static_cast<acc_t>(center[k]) + delta[w], box.has_min, box.lo, box.has_max, box.hi));
    }
  }
}

// The CUDA kernel's body (see "Kernel bodies" in robustx/common.h): one group per point
// (center i = point / n, sample offset + point % n); L1/L2 points take two passes over their
// Philox stream, the direction's norm (a group sum) and the scaled write.
template <typename scalar_t, typename acc_t, typename Group>
RX_HD void ball_sample_body(const Group& block, const scalar_t* centers, scalar_t* out, int64_t points, int64_t n,
                            int64_t d, Norm norm, acc_t radius, Box<acc_t> box, uint64_t seed, int64_t offset) {
  for (int64_t point = block.index(); point < points; point += block.count()) {
    const int64_t i = point / n;
    const PointStream stream(seed, static_cast<uint64_t>(offset + point % n), static_cast<uint32_t>(i));
    acc_t scale = acc_t(0);
    if (norm != Norm::Linf) {
      const double total = block.reduce(
          [&](int64_t tid) { return direction_norm_share<acc_t>(norm, stream, d, tid, block.size()); },
          [](double a, double b) { return a + b; });
      scale = direction_scale(norm, stream, radius, d, total);
    }
    block.each([&](int64_t tid) {
      write_point_share<scalar_t, acc_t>(norm, stream, centers + i * d, out + point * d, d, radius, scale, box, tid,
                                         block.size());
    });
  }
}

}  // namespace robustx
