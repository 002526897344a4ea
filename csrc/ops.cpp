// Schemas of every robustx operator (torch.ops.robustx.*). Kernels live in
// cpu/<op>.cpp and cuda/<op>.cu; Python wrappers, fake kernels and references in
// the package robustx/ops/ (one module per op).
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(robustx, m) {
  // n points uniform in the Lp ball (p in {1, 2, inf}) around each row of centers
  // (N, d) -> (N, n, d), optionally clipped; Philox counter-based stream per point.
  m.def(
      "ball_sample(Tensor centers, int n, float radius, float p, float? clip_min, "
      "float? clip_max, int seed, int offset) -> Tensor");
  // Per-batch maxima of ||jac[source] - jac[target]||_q (or ||jac[target]||_q).
  m.def(
      "grad_norm_batch_max(Tensor jac, Tensor? source, Tensor targets, float q, "
      "int batch_size, bool return_norms) -> (Tensor, Tensor)");
  // One pass over a layer's activations (N, M, L) updating all coverage states.
  m.def(
      "coverage_update(Tensor act, Tensor low, Tensor high, int k, float threshold, "
      "int top_k, Tensor(a!) sections, Tensor(b!) upper, Tensor(c!) lower, "
      "Tensor(d!) above, Tensor(e!) topk_hit) -> Tensor");
}

// `import robustx._C` loads this library and so registers the operators.
static struct PyModuleDef robustx_c_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&robustx_c_module); }
