// CPU kernel of robustx::ball_sample: one task per point, Philox stream per point.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "robustx/ball.h"
#include "robustx/ball_sample_checks.h"

namespace robustx {
namespace {

// One point: L-inf writes each coordinate straight from its Philox block; L1/L2 keep the
// direction z in `z` between the norm pass and the write (the CUDA kernel recomputes it).
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
void sample_point(const scalar_t* center, scalar_t* out, int64_t d, Norm norm, const PointStream& stream,
                  acc_t radius, Box<acc_t> box, std::vector<acc_t>& z) {
  if (norm == Norm::Linf) {
    write_point_share<scalar_t, acc_t>(norm, stream, center, out, d, radius, acc_t(0), box, 0, 1);
    return;
  }
  double norm_acc = 0;
  for (int64_t j = 0; j < (d + 3) / 4; ++j) {
    acc_t zb[4];
    direction_block(norm, stream.block(static_cast<uint32_t>(j)), zb);
    for (int64_t w = 0, k = 4 * j; w < 4 && k < d; ++w, ++k) {
      z[k] = zb[w];
      norm_acc += norm_term(norm, zb[w]);
    }
  }
  const acc_t scale = direction_scale(norm, stream, radius, d, norm_acc);
  for (int64_t k = 0; k < d; ++k) {
    out[k] = static_cast<scalar_t>(
        clip(static_cast<acc_t>(center[k]) + mul_rn(z[k], scale), box.has_min, box.lo, box.has_max, box.hi));
  }
}

at::Tensor ball_sample_cpu(const at::Tensor& centers, int64_t n, double radius, double p,
                           std::optional<double> clip_min, std::optional<double> clip_max, int64_t seed,
                           int64_t offset) {
  const Norm norm = check_ball_sample_args(centers, n, radius, p, seed, offset);
  const at::Tensor c = centers.contiguous();
  const int64_t n_centers = c.size(0), d = c.size(1);
  at::Tensor out = at::empty({n_centers, n, d}, c.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.scalar_type(), "ball_sample_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* cp = c.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const Box<acc_t> box{clip_min.has_value(), clip_max.has_value(), static_cast<acc_t>(clip_min.value_or(0)),
                         static_cast<acc_t>(clip_max.value_or(0))};
    const int64_t grain = std::max<int64_t>(1, 4096 / d);
    at::parallel_for(0, n_centers * n, grain, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> z(norm == Norm::Linf ? 0 : d);
      for (int64_t point = begin; point < end; ++point) {
        const int64_t i = point / n, s = offset + point % n;
        const PointStream stream(static_cast<uint64_t>(seed), static_cast<uint64_t>(s), static_cast<uint32_t>(i));
        sample_point<scalar_t>(cp + i * d, op + point * d, d, norm, stream, static_cast<acc_t>(radius), box, z);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(robustx, CPU, m) { m.impl("ball_sample", &ball_sample_cpu); }

}  // namespace robustx
