"""The compiled operators of robustx, their fake (meta) kernels and pure-PyTorch references.

Three operators live in the C++/CUDA library (``torch.ops.robustx.*``), one module each
holding the wrapper (argument checks), the ``*_ref`` reference and the fake kernel:

* :func:`ball_sample` - points uniform in an Lp ball (Philox counter-based RNG, :mod:`.philox`);
* :func:`grad_norm_batch_max` - dual norms of per-class gradient differences, reduced
  to the maximum over each batch of samples (the inner loop of CLEVER);
* :func:`coverage_update` - one pass over a layer's activations that updates every
  neuron-coverage state (k-section bitmap, corner flags, threshold flags, top-k flags).

:mod:`.loader` picks the implementation ($ROBUSTX_OPS_LIBRARY, ``robustx._C``, or the
references with a warning). The references define the semantics (the tests compare the
compiled ops against them) and are written for clarity, not speed.
"""
from robustx.geometry import dual_norm, parse_norm
from robustx.ops.ball_sample import ball_sample, ball_sample_ref
from robustx.ops.coverage_update import coverage_update, coverage_update_ref
from robustx.ops.grad_norm_batch_max import grad_norm_batch_max, grad_norm_batch_max_ref
from robustx.ops.loader import compiled, reference_ops, source
from robustx.ops.philox import philox4x32

__all__ = [
    "compiled",
    "reference_ops",
    "source",
    "ball_sample",
    "ball_sample_ref",
    "grad_norm_batch_max",
    "grad_norm_batch_max_ref",
    "coverage_update",
    "coverage_update_ref",
    "dual_norm",
    "parse_norm",
    "philox4x32",
]
