// Per-neuron coverage rules shared by the CPU and CUDA kernels of
// robustx::coverage_update (see robustx.ops.coverage_update_ref for the contract).
#pragma once
#include <cmath>

#include "robustx/common.h"

namespace robustx {

// k-section of [low, high] hit by v, inclusive edges, or -1 when v is outside.
RX_HD int64_t section_index(double v, double low, double high, int64_t k) {
  if (!(v >= low && v <= high)) return -1;
  const double width = high - low;
  if (!(width > 0)) return 0;
  int64_t idx = static_cast<int64_t>(std::floor((v - low) * static_cast<double>(k) / width));
  return idx < 0 ? 0 : (idx >= k ? k - 1 : idx);
}

// DeepXplore's per-input scaling of a neuron value to [0, 1] (0 when the input's layer is constant).
RX_HD double scaled_value(double v, double input_min, double input_max) {
  const double span = input_max - input_min;
  return span > 0 ? (v - input_min) / span : 0.0;
}

// Ordering of top-k selection: larger value first, ties to the lower index, NaN largest.
RX_HD bool ranks_before(double va, int64_t ia, double vb, int64_t ib) {
  const bool na = va != va, nb = vb != vb;
  if (na || nb) return na && (!nb || ia < ib);
  return va > vb || (va == vb && ia < ib);
}

}  // namespace robustx
