"""The evaluation suite's metrics (docs/design.md, "The evaluation suite") as pure functions of
tensors: inputs, logits, labels and masks in, a Python float (or a dict of floats) out.
The caller runs each model once per input set and feeds every metric from those outputs.

Conventions shared by every function here:

* Images are (N, C, H, W) floating tensors; logits are (N, K), K >= 2, labels int (N,).
* **Logits, not probabilities**: P = softmax(logits) is applied inside. A logits argument
  whose entries all lie in [0, 1] with every row summing to 1 (within
  :data:`robustx.metrics.arguments.PROBABILITY_TOLERANCE`) is taken for probabilities
  and rejected with ``ValueError``.
* ``success`` is the bool mask S (N,) of successful adversarial examples
  (:func:`success_mask`): S = {i in C : f(x'_i) != y_i}, C = {i : f(x_i) = y_i}
  (targeted: f(x'_i) = target_i). Metrics of adversarial examples are means over S.
* **Empty means**: a mean over an empty set (S, or B of :func:`defense_utility`) is
  NaN, with a ``RuntimeWarning`` naming the set.
* Bad arguments raise ``TypeError`` (wrong type, e.g. a non-bool mask) or ``ValueError``
  (wrong shape or value, e.g. labels out of range) naming the argument.

:func:`available` / :func:`get` list every metric of the suite with its family, direction,
needs and function (see :mod:`robustx.metrics.registry`).
"""
from robustx.metrics.accuracy import accuracy, success_mask, transfer_examples
from robustx.metrics.behaviour import acac, actc, nte, rgb, ric
from robustx.metrics.defense import defense_utility
from robustx.metrics.imperceptibility import ald, ass, psd, ssim
from robustx.metrics.registry import NEEDS, MetricInfo, available, get
from robustx.metrics.transforms import from_8bit, gaussian_blur_8bit, jpeg_8bit, to_8bit

__all__ = [
    "accuracy", "success_mask", "transfer_examples",
    "ald", "ass", "ssim", "psd",
    "acac", "actc", "nte", "rgb", "ric",
    "defense_utility",
    "gaussian_blur_8bit", "jpeg_8bit", "to_8bit", "from_8bit",
    "NEEDS", "MetricInfo", "available", "get",
]
