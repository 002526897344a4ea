"""robustx.ops.loader: a library named by $ROBUSTX_OPS_LIBRARY, else robustx._C, else the
pure-PyTorch references with one RuntimeWarning. Each case runs in a fresh interpreter."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import robustx

ROOT = Path(robustx.__file__).resolve().parents[1]
COMPILED_SO = sorted(Path(robustx.__file__).parent.glob("_C*.so"))

# Imports robustx.ops (optionally with robustx._C unimportable), records the warnings and
# compares ball_sample / grad_norm_batch_max through the wrappers with the references.
PROBE = r"""
import json, sys, warnings
if "--block-C" in sys.argv:
    sys.modules["robustx._C"] = None  # `from robustx import _C` raises ImportError
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from robustx import ops
import torch
centers = torch.rand(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
points = ops.ball_sample(centers, 6, 0.5, 2, (0.0, 1.0), seed=7, offset=3)
ref_points = ops.ball_sample_ref(centers.flatten(1), 6, 0.5, 2.0, 0.0, 1.0, 7, 3).view_as(points)
jac = torch.randn(2, 8, 3, 5, generator=torch.Generator().manual_seed(1))
targets = torch.tensor([[1, 2], [0, 2]])
maxima, _ = ops.grad_norm_batch_max(jac, targets, q=2, batch_size=4)
ref_maxima, _ = ops.grad_norm_batch_max_ref(jac, None, targets, 2.0, 4, False)
print(json.dumps(dict(
    compiled=ops.compiled(), source=ops.source(),
    warnings=[f"{w.category.__name__}: {w.message}" for w in caught],
    points_max_diff=(points - ref_points).abs().max().item(),
    maxima_max_diff=(maxima - ref_maxima).abs().max().item(),
    registered=hasattr(torch.ops.robustx, "ball_sample"),
)))
"""


def probe(env_updates, *flags):
    env = {k: v for k, v in os.environ.items() if k not in ("ROBUSTX_OPS_LIBRARY", "ROBUSTX_REFERENCE_OPS")}
    env.update(env_updates, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", PROBE, *flags], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_without_a_loadable_library_the_references_run_with_one_warning():
    """A bogus $ROBUSTX_OPS_LIBRARY and an unimportable robustx._C: both named in one warning."""
    out = probe({"ROBUSTX_OPS_LIBRARY": "/nonexistent/librobustx_ops.so"}, "--block-C")
    assert out["compiled"] is False and out["source"] is None
    assert len(out["warnings"]) == 1
    message = out["warnings"][0]
    assert message.startswith("RuntimeWarning: no robustx operator library could be loaded")
    assert "ROBUSTX_OPS_LIBRARY=/nonexistent/librobustx_ops.so" in message and "robustx._C" in message
    assert out["points_max_diff"] == 0.0 and out["maxima_max_diff"] == 0.0


def test_forcing_the_references_loads_no_library_and_warns_nothing():
    out = probe({"ROBUSTX_REFERENCE_OPS": "1"})
    assert out == dict(out, compiled=False, source=None, warnings=[], registered=False)
    assert out["points_max_diff"] == 0.0 and out["maxima_max_diff"] == 0.0


@pytest.mark.skipif(not COMPILED_SO, reason="robustx/_C*.so is not built")
def test_the_library_named_by_the_environment_is_loaded_and_used():
    path = str(COMPILED_SO[0])
    out = probe({"ROBUSTX_OPS_LIBRARY": path}, "--block-C")  # robustx._C itself cannot be imported
    assert out["compiled"] is True and out["source"] == path and out["registered"] is True
    assert out["warnings"] == []
    assert out["points_max_diff"] <= 1e-6 and out["maxima_max_diff"] <= 1e-5  # compiled vs reference


def test_the_compiled_extension_is_the_default():
    from robustx import ops

    if os.environ.get("ROBUSTX_OPS_LIBRARY") or os.environ.get("ROBUSTX_REFERENCE_OPS") or not COMPILED_SO:
        pytest.skip("the test session itself chose another operator source")
    assert ops.compiled() is True and ops.source() == "robustx._C"
